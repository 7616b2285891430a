"""The code location: every source spec in the sources folder becomes an asset, wired here.

Settings come from the environment when set (as `EnvVar`, so values such as a PostgreSQL
URL with a password never appear in the UI) and fall back to the embedded defaults, so a
new user runs everything with no server and no configuration.
"""

import gc
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import dagster as dg

from harmonizer_dagster.core.fetching import upstream_location
from harmonizer_dagster.core.settings import DEFAULTS, current, seeded_landing
from harmonizer_dagster.core.spec import SourceSpec, SpecCatalog, SpecError, load_specs
from harmonizer_dagster.orchestration.alerts import build_alert_sensors
from harmonizer_dagster.orchestration.assets import build_source_asset, build_source_ops
from harmonizer_dagster.orchestration.housekeeping import (
    backup_warehouse,
    build_backup_schedule,
    build_housekeeping_schedule,
    housekeeping,
)
from harmonizer_dagster.orchestration.jobs import build_ingest_jobs, build_register_job, build_source_job
from harmonizer_dagster.orchestration.resources import (
    S3_SETTINGS,
    KafkaResource,
    LandingZone,
    Notifier,
    S3Landing,
    SourceTableIOManager,
    WarehouseResource,
)
from harmonizer_dagster.orchestration.schedules import build_fetch_job, build_fetch_schedule
from harmonizer_dagster.orchestration.sensors import (
    build_folder_sensor,
    build_s3_sensor,
    build_unrecorded_failures_sensor,
)
from harmonizer_dagster.orchestration.sinks import build_sink_asset
from harmonizer_dagster.orchestration.triage import (
    build_decision_job,
    build_report_asset,
    build_reprocess_job,
    triage_issues,
)

# Dagster raises this one itself when it binds resources to the job a landing sensor targets
# (it copies the sensor with its empty owners); no sensor here sets owners.
warnings.filterwarnings(
    "ignore",
    message="Parameter `owners` of initializer `SensorDefinition.__init__` is currently in beta",
    category=dg.BetaWarning,
)


def setting(name: str, default: str = "") -> str | dg.EnvVar:
    """The environment variable when it is set, else the embedded default."""
    return dg.EnvVar(name) if name in os.environ else DEFAULTS.get(name, default)


def landing_setting() -> str | dg.EnvVar:
    """HARMONIZER_LANDING_DIR when set, else the default landing folder, seeded with the samples."""
    name = "HARMONIZER_LANDING_DIR"
    return dg.EnvVar(name) if name in os.environ else str(seeded_landing(Path(DEFAULTS[name])))


def int_setting(name: str, default: int) -> int | dg.EnvVar:
    return dg.EnvVar.int(name) if name in os.environ else default


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def configured(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def uses_s3(specs: Sequence[SourceSpec]) -> bool:
    """Whether this code location talks to S3: an S3 setting is set, or a schedule fetches from
    s3://. Only then are dagster-aws and boto3 imported and the ops given the `s3` resource."""
    if any(configured(name) for name in S3_SETTINGS):
        return True
    fetches = (upstream_location(spec.schedule.fetch) for spec in specs if spec.schedule)
    return any(location and location.startswith("s3://") for location in fetches)


def warehouse_resource() -> WarehouseResource:
    if not configured("HARMONIZER_WAREHOUSE_SECRET_ID"):
        return WarehouseResource(url=setting("HARMONIZER_WAREHOUSE_URL"))
    from harmonizer_dagster.orchestration.aws import SecretsManagerResource, SecretWarehouseResource

    return SecretWarehouseResource(
        url=setting("HARMONIZER_WAREHOUSE_URL"),
        secret_id=setting("HARMONIZER_WAREHOUSE_SECRET_ID"),
        secrets=SecretsManagerResource(
            endpoint_url=setting("HARMONIZER_SECRETS_ENDPOINT_URL") or None,
            region_name=setting("AWS_DEFAULT_REGION", "us-east-1"),
        ),
    )


def kafka_resource() -> KafkaResource:
    """The Kafka cluster of the sources' sinks; its SASL login from AWS Secrets Manager when
    HARMONIZER_KAFKA_SECRET_ID is set, as the warehouse's is."""
    settings = {
        "brokers": setting("HARMONIZER_KAFKA_BROKERS"),
        "security_protocol": setting("HARMONIZER_KAFKA_SECURITY_PROTOCOL"),
        "sasl_mechanism": setting("HARMONIZER_KAFKA_SASL_MECHANISM"),
        "ca_file": setting("HARMONIZER_KAFKA_CA_FILE"),
        "compression": setting("HARMONIZER_KAFKA_COMPRESSION"),
        "checkpoint_records": int_setting("HARMONIZER_KAFKA_CHECKPOINT_RECORDS", 10_000),
        "max_message_bytes": int_setting("HARMONIZER_KAFKA_MAX_MESSAGE_BYTES", 1_000_000),
        "delivery_timeout_seconds": int_setting("HARMONIZER_KAFKA_DELIVERY_TIMEOUT_SECONDS", 120),
    }
    if not configured("HARMONIZER_KAFKA_SECRET_ID"):
        return KafkaResource(
            **settings, username=setting("HARMONIZER_KAFKA_USERNAME"), password=setting("HARMONIZER_KAFKA_PASSWORD")
        )
    from harmonizer_dagster.orchestration.aws import SecretKafkaResource, SecretsManagerResource

    return SecretKafkaResource(
        **settings,
        secret_id=setting("HARMONIZER_KAFKA_SECRET_ID"),
        secrets=SecretsManagerResource(
            endpoint_url=setting("HARMONIZER_SECRETS_ENDPOINT_URL") or None,
            region_name=setting("AWS_DEFAULT_REGION", "us-east-1"),
        ),
    )


def s3_resources() -> dict[str, dg.ConfigurableResource]:
    from harmonizer_dagster.orchestration.aws import S3Resource

    # Credentials come from the standard AWS variables or the instance role, never from here.
    return {
        "s3": S3Resource(
            endpoint_url=setting("HARMONIZER_S3_ENDPOINT_URL") or None,
            region_name=setting("AWS_DEFAULT_REGION", "us-east-1"),
        )
    }


def build_resources(with_s3: bool = False, with_kafka: bool = False) -> dict[str, dg.ConfigurableResource]:
    return {
        **({"kafka": kafka_resource()} if with_kafka else {}),
        "warehouse": warehouse_resource(),
        "landing": LandingZone(
            landing_dir=landing_setting(),
            staging_dir=setting("HARMONIZER_STAGING_DIR"),
            batch_rows=int_setting("HARMONIZER_BATCH_ROWS", 5_000),
        ),
        **(s3_resources() if with_s3 else {}),
        "source_tables": SourceTableIOManager(),
        "s3_landing": S3Landing(bucket=setting("HARMONIZER_S3_BUCKET"), prefix=setting("HARMONIZER_S3_PREFIX")),
        "notifier": Notifier(
            smtp_host=setting("HARMONIZER_SMTP_HOST"),
            smtp_port=int_setting("HARMONIZER_SMTP_PORT", 25),
            smtp_starttls=flag("HARMONIZER_SMTP_STARTTLS"),
            smtp_username=setting("HARMONIZER_SMTP_USERNAME"),
            smtp_password=setting("HARMONIZER_SMTP_PASSWORD"),
            sender=setting("HARMONIZER_ALERT_FROM", "harmonizer@localhost"),
            recipients=setting("HARMONIZER_ALERT_TO"),
            slack_webhook_url=setting("HARMONIZER_SLACK_WEBHOOK_URL"),
            notify_success=flag("HARMONIZER_NOTIFY_SUCCESS"),
        ),
    }


# Dagster's logger: its processes print it, formatted like their own messages, where an operator looks.
logger = dg.get_dagster_logger("harmonizer")


def assigned_specs() -> SpecCatalog:
    """The sources this code location serves: all of them, those named in HARMONIZER_SOURCES,
    or none (`none`: the fleet's central location, which only alerts and triages). On the fleet
    each Pi serves its own share, so every source asset has exactly one owner.

    A broken spec takes out only its own source: the healthy ones load, and the catalog's
    errors, logged here when the location loads, go to `spec_error_sensor` for the UI."""
    catalog = load_specs(Path(current("HARMONIZER_SOURCES_DIR")), strict=False)
    wanted = [name.strip() for name in os.environ.get("HARMONIZER_SOURCES", "").split(",") if name.strip()]
    if wanted == ["none"]:
        return SpecCatalog(())
    specs, errors = catalog.specs, catalog.errors
    if wanted:
        unknown = sorted(set(wanted) - {spec.name for spec in specs})
        if unknown:
            message = f"HARMONIZER_SOURCES names unknown sources: {', '.join(unknown)}"
            if not errors:
                raise SpecError(message)
            # A broken spec may declare them: report both and serve the rest.
            errors = (*errors, SpecError(f"{message}; a broken spec may declare them"))
        specs = tuple(spec for spec in specs if spec.name in wanted)
    for error in errors:
        logger.error("Source spec error, its source is left out of this code location: %s", error)
    return SpecCatalog(specs, errors)


def spec_error_sensor(errors: Sequence[SpecError]) -> dg.SensorDefinition:
    """Shows broken specs in the Dagster UI, where the asset graph cannot (their sources are not
    in it): the `spec_errors` sensor's description lists every error with file, field and line,
    and each of its ticks fails with that list, so Overview > Automation shows it failing until
    the specs are fixed and the code location reloaded. It starts no runs."""
    report = "\n".join(str(error) for error in errors)

    @dg.sensor(
        name="spec_errors",
        description=f"Source specs left out of this code location:\n{report}",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def spec_errors(context: dg.SensorEvaluationContext) -> NoReturn:
        raise SpecError(report)

    return spec_errors


def build_definitions() -> dg.Definitions:
    catalog = assigned_specs()
    specs = list(catalog.specs)
    # Runs carry the host that serves them, so the instance's per-host limit applies: jobs
    # through their tags, runs of the implicit asset job through their assets' tags.
    host_tags = {"harmonizer/host": os.environ["HARMONIZER_HOST"]} if os.environ.get("HARMONIZER_HOST") else {}
    with_s3 = uses_s3(specs)
    ops = {spec.name: build_source_ops(spec, with_s3) for spec in specs}
    load_jobs = {spec.name: build_source_job(spec, host_tags) for spec in specs}
    ingest_jobs, files_jobs = build_ingest_jobs(specs, ops, host_tags)
    interval = int(current("HARMONIZER_SENSOR_INTERVAL_SECONDS"))
    automatic = current("HARMONIZER_AUTOMATION").strip().lower() not in ("off", "false", "no", "0")
    sensor_status = dg.DefaultSensorStatus.RUNNING if automatic else dg.DefaultSensorStatus.STOPPED
    schedule_status = dg.DefaultScheduleStatus.RUNNING if automatic else dg.DefaultScheduleStatus.STOPPED
    backups = current("HARMONIZER_BACKUP_DIR").strip()
    sensors = [build_folder_sensor(spec, files_jobs[spec.name], interval, sensor_status) for spec in specs]
    if os.environ.get("HARMONIZER_S3_BUCKET"):
        sensors += [build_s3_sensor(spec, files_jobs[spec.name], interval, sensor_status) for spec in specs]
    fetch_jobs = {spec.name: build_fetch_job(spec, host_tags, with_s3) for spec in specs if spec.schedule}
    assets = {spec.name: build_source_asset(spec, ops[spec.name], host_tags) for spec in specs}
    if specs and automatic:
        # Dagster's implicit automation sensor starts stopped; declared here it runs, so each
        # source's report is refreshed after every load without a click.
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "default_automation_condition_sensor",
                target=dg.AssetSelection.all(),
                default_status=sensor_status,
                description="Refreshes assets with an automation condition (the data-quality reports).",
            )
        )
    return dg.Definitions(
        assets=[
            *assets.values(),
            *(build_report_asset(spec, automatic, host_tags) for spec in specs),
            # Only sources whose spec declares a sink have one.
            *(build_sink_asset(spec, automatic, host_tags) for spec in specs if spec.sinks),
        ],
        jobs=[
            *load_jobs.values(),
            *files_jobs.values(),
            *fetch_jobs.values(),
            *(
                [build_register_job(specs), *ingest_jobs, build_reprocess_job(specs), build_decision_job(specs)]
                if specs
                else []
            ),
            triage_issues,
            housekeeping,
            backup_warehouse,
        ],
        sensors=[
            *sensors,
            *([spec_error_sensor(catalog.errors)] if catalog.errors else []),
            *([build_unrecorded_failures_sensor(specs)] if specs else []),
            *build_alert_sensors(
                current("HARMONIZER_ALERTS").strip().lower(),
                float(current("HARMONIZER_STALL_MINUTES")),
                host_tags.get("harmonizer/host"),
            ),
        ],
        schedules=[
            *(
                build_fetch_schedule(spec, fetch_jobs[spec.name], schedule_status)
                for spec in specs
                if spec.name in fetch_jobs
            ),
            build_housekeeping_schedule(schedule_status),
            # Backups are taken where a folder for them is named (the central machine's location).
            *(
                [build_backup_schedule(backups, schedule_status)]
                if (backups := current("HARMONIZER_BACKUP_DIR"))
                else []
            ),
        ],
        resources=build_resources(with_s3, with_kafka=any(spec.sinks for spec in specs)),
        # Steps run in the run worker's process: the multiprocess executor re-imports the code
        # location for every step (seconds each, far more on a Pi) and the steps pass only
        # small references to staged files, so a process per step buys nothing.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
# Everything loaded by now lives as long as the process. Frozen, Python's cycle collector no
# longer walks its few hundred thousand objects, neither in each full collection during a run
# nor at exit, where that walk took a 3-row run more than a second.
gc.freeze()
