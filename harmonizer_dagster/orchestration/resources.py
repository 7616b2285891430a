"""Resources: every external place the pipeline touches, configured from the environment."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.notify import Alert, SmtpSettings, send_email, send_slack
from harmonizer_dagster.core.pipeline import DEFAULT_BATCH_ROWS
from harmonizer_dagster.core.sinks import KafkaSettings
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse

# What makes a code location talk to S3 (with a schedule that fetches from s3://). Only then do
# its ops take dagster-aws's `s3` resource: dagster-aws and boto3 cost every process 0.8 s and
# 50 MB of imports, so a location without S3 never imports them (see orchestration/aws.py).
S3_SETTINGS = ("HARMONIZER_S3_BUCKET", "HARMONIZER_S3_ENDPOINT_URL")


def resource_keys(with_s3: bool, *keys: str) -> set[str]:
    """An op's resources, with `s3` where the code location configures S3 (see s3_client below)."""
    return {*keys, *(["s3"] if with_s3 else [])}


def s3_client(context: dg.OpExecutionContext, uri: str) -> Any:
    """The boto3 client the op's `s3` resource (dagster-aws's S3Resource) sets on its context,
    for an s3:// file. An op of a code location without S3 settings has no such resource: the
    file fails at once, saying what to set."""
    if "s3" not in context.op_def.required_resource_keys:
        raise dg.Failure(
            f"{uri} is in S3, but this code location has no S3 configured: set {' or '.join(S3_SETTINGS)}",
            allow_retries=False,
        )
    return context.resources.s3


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse holding canonical tables, the sources registry and data-quality records.
    With HARMONIZER_WAREHOUSE_SECRET_ID, its URL comes from AWS Secrets Manager instead
    (orchestration/aws.py)."""

    url: str = Field(
        default="",
        description="duckdb:///relative.duckdb, duckdb:////absolute.duckdb or postgresql://user@host/db. "
        "Set HARMONIZER_WAREHOUSE_URL; default: the embedded DuckDB file .harmonizer/warehouse.duckdb.",
    )
    schema_name: str = Field(default="harmonizer", description="Schema that holds every table the project creates.")

    def database_url(self) -> str:
        return self.url

    def open(self) -> Warehouse:
        store = open_warehouse(self.database_url(), self.schema_name)
        # A step waiting for a warehouse another process holds says so in the run's event log.
        store.on_wait = dg.get_dagster_logger().warning
        return store


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster sinks produce to (HARMONIZER_KAFKA_*). With HARMONIZER_KAFKA_SECRET_ID,
    the SASL login comes from AWS Secrets Manager instead (orchestration/aws.py)."""

    brokers: str = Field(default="", description="host:port of the bootstrap brokers, comma-separated.")
    security_protocol: str = Field(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str = Field(default="", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL.")
    username: str = Field(default="", description="The SASL username.")
    password: str = Field(default="", description="The SASL password; set through the environment only, never logged.")
    ca_file: str = Field(
        default="", description="CA bundle verifying the brokers' TLS certificates; empty: the system's."
    )
    compression: str = Field(default="gzip", description="gzip (the legacy processor's), lz4, zstd, snappy or none.")
    checkpoint_records: int = Field(default=10_000, description="Records acknowledged between two checkpoints at most.")
    max_message_bytes: int = Field(default=1_000_000, description="Larger messages become dead letters.")
    delivery_timeout_seconds: int = Field(
        default=120, description="Seconds a message may wait for its acknowledgement before the run fails."
    )

    def login(self) -> tuple[str, str]:
        return self.username, self.password

    def settings(self) -> KafkaSettings:
        if not self.brokers.strip():
            raise dg.Failure(
                "a source declares a Kafka sink, but HARMONIZER_KAFKA_BROKERS is not set", allow_retries=False
            )
        username, password = self.login()
        return KafkaSettings(
            brokers=self.brokers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            username=username,
            password=password,
            ca_file=self.ca_file,
            compression=self.compression,
            checkpoint_records=self.checkpoint_records,
            max_message_bytes=self.max_message_bytes,
            delivery_timeout_seconds=self.delivery_timeout_seconds,
        )


class LandingZone(dg.ConfigurableResource):
    """Where source files arrive and where steps stage their outputs between ops."""

    landing_dir: str = Field(
        description="Folder with one subfolder per source (HARMONIZER_LANDING_DIR; default: .harmonizer/landing, "
        "a copy of the shipped samples made when it does not exist yet)."
    )
    staging_dir: str = Field(
        description="Scratch space for staged batches, removed once a version is written to the warehouse's stage "
        "(HARMONIZER_STAGING_DIR; default: .harmonizer/staging)."
    )
    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS,
        description="Rows per checkpointed batch: a killed step resumes from its last completed batch.",
    )

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_dir)

    @property
    def staging_path(self) -> Path:
        return Path(self.staging_dir)


class S3Landing(dg.ConfigurableResource):
    """The S3 landing area: s3://<bucket>/<prefix>/<source>/... (HARMONIZER_S3_BUCKET, HARMONIZER_S3_PREFIX)."""

    bucket: str = Field(default="", description="Bucket files land in; empty disables the S3 sensors.")
    prefix: str = Field(default="", description="Prefix above the per-source folders, e.g. 'landing'.")


class Notifier(dg.ConfigurableResource):
    """Where alerts go: e-mail through SMTP (HARMONIZER_SMTP_*) and optionally a Slack webhook."""

    smtp_host: str = Field(default="", description="SMTP server; empty disables e-mail.")
    smtp_port: int = Field(default=25)
    smtp_starttls: bool = Field(default=False)
    smtp_username: str = Field(default="")
    smtp_password: str = Field(default="", description="Set through the environment only; never logged.")
    sender: str = Field(default="harmonizer@localhost")
    recipients: str = Field(default="", description="Comma-separated e-mail addresses.")
    slack_webhook_url: str = Field(default="", description="Slack incoming-webhook URL; empty disables Slack.")
    notify_success: bool = Field(default=False, description="Also announce successful runs.")

    def send(self, alert: Alert) -> list[str]:
        """Delivers the alert everywhere configured; returns where it went."""
        delivered = []
        recipients = tuple(r.strip() for r in self.recipients.split(",") if r.strip())
        if self.smtp_host and recipients:
            settings = SmtpSettings(
                host=self.smtp_host,
                port=self.smtp_port,
                sender=self.sender,
                recipients=recipients,
                username=self.smtp_username or None,
                password=self.smtp_password or None,
                starttls=self.smtp_starttls,
            )
            send_email(settings, alert)
            delivered.append(f"e-mail to {len(recipients)} recipient(s)")
        if self.slack_webhook_url:
            send_slack(self.slack_webhook_url, alert)
            delivered.append("Slack")
        return delivered


class SourceTableIOManager(dg.ConfigurableIOManager):
    """The stage op's data is what it wrote to the warehouse in its own transaction: nothing
    is pickled (partition keys such as s3:// URIs are no file paths). Downstream assets
    receive the name of the source's table."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        return None

    def load_input(self, context: dg.InputContext) -> str:
        return context.asset_key.path[-1]
