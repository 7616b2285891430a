"""The environment variables that configure a deployment, and the embedded defaults."""

import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent.parent
SAMPLES_DIR = PACKAGE_DIR / "samples"
DEFAULTS = {
    # Folder of source spec files (one YAML file per source).
    "HARMONIZER_SOURCES_DIR": str(PACKAGE_DIR / "sources"),
    # Landing zone: one subfolder per source. The default starts as a copy of the shipped samples.
    "HARMONIZER_LANDING_DIR": ".harmonizer/landing",
    # Scratch space for staged batches between ops.
    "HARMONIZER_STAGING_DIR": ".harmonizer/staging",
    # duckdb:///relative.duckdb, duckdb:////absolute.duckdb or postgresql://...
    "HARMONIZER_WAREHOUSE_URL": "duckdb:///.harmonizer/warehouse.duckdb",
    # Seconds a session waits for the warehouse while another process holds it (a DuckDB file
    # being written, a PostgreSQL source being published) before it gives up.
    "HARMONIZER_WAREHOUSE_LOCK_TIMEOUT": "600",
    # Seconds between two looks at a landing area; a file is picked up on its second look.
    "HARMONIZER_SENSOR_INTERVAL_SECONDS": "5",
    # A landing sensor's run loads at most this many files, and at most this many bytes of them
    # (a single larger file gets a run of its own); each file stays its own partition.
    "HARMONIZER_RUN_MAX_FILES": "1000",
    "HARMONIZER_RUN_MAX_BYTES": str(1 << 30),
    # "off" leaves sensors, schedules and automation stopped until someone starts them in the UI.
    "HARMONIZER_AUTOMATION": "on",
    # Times the hash and upsert steps are tried again, within their run, after a transient S3
    # or warehouse error, waiting this many seconds first, doubled on each attempt (+/- jitter).
    "HARMONIZER_STEP_RETRIES": "4",
    "HARMONIZER_RETRY_DELAY_SECONDS": "2",
    # Minutes without a single event before a started run is reported as stalled, and without a
    # heartbeat before a processing version shows STALLED in loader_status (fractions allowed).
    "HARMONIZER_STALL_MINUTES": "30",
    # Seconds between two progress records (records done, a heartbeat) of a running load: far
    # below any stall threshold, far above a checkpoint's (each record is a transaction).
    "HARMONIZER_PROGRESS_SECONDS": "1",
    # Seconds a metrics scrape waits for a DuckDB warehouse a load holds before it serves the
    # values of its last scrape (harmonizer_scrape_warehouse_busy 1).
    "HARMONIZER_METRICS_LOCK_WAIT": "1",
    # Whose runs this location's alert sensors watch: "location" (its own), "fleet" (every
    # location's: the central machine's location), "off" (a Pi, when the central one alerts).
    "HARMONIZER_ALERTS": "location",
    # The Dagster webserver the triage page launches re-materializations through (GraphQL).
    "HARMONIZER_DAGSTER_URL": "http://127.0.0.1:3000",
    # Where a steward's browser reaches that webserver (behind the proxy); empty: the same URL.
    "HARMONIZER_DAGSTER_UI_URL": "",
    # The path prefix the proxy serves the triage page under, e.g. /dq; empty: the root.
    "HARMONIZER_DQ_ROOT_PATH": "",
    # Where the daily backup_warehouse schedule writes backups (empty: no schedule; backups are
    # taken by `harmonizer backup` or by launching the job).
    "HARMONIZER_BACKUP_DIR": "",
    # Kafka sinks (`sinks:` in a spec): the brokers (host:port, comma-separated) and how to log in:
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; a SASL mechanism (PLAIN, SCRAM-SHA-256,
    # SCRAM-SHA-512) with HARMONIZER_KAFKA_USERNAME and HARMONIZER_KAFKA_PASSWORD, or
    # HARMONIZER_KAFKA_SECRET_ID; a CA bundle for TLS (empty: the system's).
    "HARMONIZER_KAFKA_BROKERS": "",
    "HARMONIZER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    "HARMONIZER_KAFKA_SASL_MECHANISM": "",
    "HARMONIZER_KAFKA_CA_FILE": "",
    # gzip as the legacy processor (it costs a core about 10 us a message); lz4, zstd, snappy or none.
    "HARMONIZER_KAFKA_COMPRESSION": "gzip",
    # Records acknowledged between two checkpoints at most; a killed run re-sends at most a few of these.
    "HARMONIZER_KAFKA_CHECKPOINT_RECORDS": "10000",
    # Messages larger than this (bytes) are dead letters; Kafka's brokers refuse about 1 MB by default.
    "HARMONIZER_KAFKA_MAX_MESSAGE_BYTES": "1000000",
    # Seconds a message may wait for the broker's acknowledgement (retried meanwhile) before the run fails.
    "HARMONIZER_KAFKA_DELIVERY_TIMEOUT_SECONDS": "120",
    # Signs the triage page's session cookie (CSRF token, messages); empty: random per process.
    "HARMONIZER_DQ_SECRET": "",
    # The S3 landing area (s3://BUCKET/PREFIX/<source>/); an empty bucket: files land in the folder.
    "HARMONIZER_S3_BUCKET": "",
    "HARMONIZER_S3_PREFIX": "",
    # An S3-compatible endpoint instead of AWS's own (MinIO, a test server); empty: AWS.
    "HARMONIZER_S3_ENDPOINT_URL": "",
    # The largest file the HTTP API takes, in bytes (default 10 GiB).
    "HARMONIZER_UPLOAD_MAX_BYTES": str(10 << 30),
    # Requests one API key may make per minute; past it the API answers 429 with Retry-After.
    "HARMONIZER_API_RATE_LIMIT": "600",
    # API keys kept in the secrets store, not the warehouse: a JSON object of key names to
    # {"sha256": "<hex SHA-256 of the key>", "scopes": ["upload", "read", "triage"]}.
    "HARMONIZER_API_KEYS": "",
}


def current(name: str) -> str:
    """The value in force: the environment's, else the embedded default."""
    return os.environ.get(name, DEFAULTS[name])


def seeded_landing(folder: Path) -> Path:
    """The default landing folder, made a copy of the shipped samples when it does not exist
    yet: files dropped there stay out of the package (and out of `git status`), and a fresh
    clone still loads the samples. The copy is renamed into place whole, so processes starting
    together (`dagster dev`) never see half of it."""
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.copytree(SAMPLES_DIR, partial, dirs_exist_ok=True)
        try:
            partial.rename(folder)
        except OSError:  # another process seeded it first
            shutil.rmtree(partial)
    return folder


def engine_threads() -> int:
    """Threads a load may keep busy: HARMONIZER_THREADS, else the cores this process may run
    on. More threads than cores only make DuckDB's and polars' workers wait on each other."""
    configured = os.environ.get("HARMONIZER_THREADS", "").strip()
    return max(1, int(configured)) if configured else len(os.sched_getaffinity(0))


def lock_timeout() -> float:
    """Seconds to wait for a warehouse another process holds (HARMONIZER_WAREHOUSE_LOCK_TIMEOUT)."""
    return max(0.0, float(current("HARMONIZER_WAREHOUSE_LOCK_TIMEOUT")))


def stall_seconds() -> float:
    """Seconds without progress after which a load counts as stalled (HARMONIZER_STALL_MINUTES)."""
    return max(0.0, float(current("HARMONIZER_STALL_MINUTES"))) * 60


def progress_seconds() -> float:
    """Seconds between two progress records of a running load (HARMONIZER_PROGRESS_SECONDS)."""
    return max(0.0, float(current("HARMONIZER_PROGRESS_SECONDS")))
