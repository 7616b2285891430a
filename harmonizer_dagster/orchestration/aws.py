"""The AWS side of the code location: dagster-aws's resources, imported only where the
environment configures S3 (resources.S3_SETTINGS, or a schedule fetching from s3://) or AWS
Secrets Manager (HARMONIZER_WAREHOUSE_SECRET_ID, HARMONIZER_KAFKA_SECRET_ID). dagster-aws and boto3 cost a process 0.8 s
and 50 MB of imports, which a location that never talks to AWS does not pay."""

import warnings

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import Field

from harmonizer_dagster.core.secrets import database_url, kafka_login, read_secret
from harmonizer_dagster.orchestration.resources import KafkaResource, WarehouseResource

__all__ = ["S3Resource", "SecretKafkaResource", "SecretWarehouseResource", "SecretsManagerResource"]

# dagster-aws marks SecretsManagerResource beta; it is the one resource that reads secrets, so it
# stays, and its warning (raised where it is built and again in every run) is not shown.
warnings.filterwarnings(
    "ignore",
    message="Class `SecretsManagerResource` is currently in beta",
    category=dg.BetaWarning,
)


class SecretWarehouseResource(WarehouseResource):
    """The warehouse whose URL is kept in AWS Secrets Manager."""

    secret_id: str = Field(
        default="",
        description="An AWS Secrets Manager secret holding the URL, or RDS-style JSON (username, password, host, "
        "port, dbname); takes precedence over `url` (HARMONIZER_WAREHOUSE_SECRET_ID).",
    )
    secrets: SecretsManagerResource = Field(default_factory=SecretsManagerResource)

    def database_url(self) -> str:
        return database_url(read_secret(self.secrets.get_client(), self.secret_id)) if self.secret_id else self.url


class SecretKafkaResource(KafkaResource):
    """The Kafka cluster whose SASL login is kept in AWS Secrets Manager."""

    secret_id: str = Field(
        default="",
        description="An AWS Secrets Manager secret holding JSON with `username` and `password`; takes precedence "
        "over `username` and `password` (HARMONIZER_KAFKA_SECRET_ID).",
    )
    secrets: SecretsManagerResource = Field(default_factory=SecretsManagerResource)

    def login(self) -> tuple[str, str]:
        return (
            kafka_login(read_secret(self.secrets.get_client(), self.secret_id)) if self.secret_id else super().login()
        )
