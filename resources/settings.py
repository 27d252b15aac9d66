"""Environment settings, read when a resource is used (never at import time).

Every variable the platform reads is named here, with its local default, so
that a code location loads with nothing configured and a deployment sets
only what differs from the embedded defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MOTO_PORT = 5055
DEFAULT_REGION = "us-east-1"


def profile_name() -> str:
    """The runtime profile: local (default), local-s3 or aws."""
    return os.environ.get("PLATFORM_PROFILE", "local").strip() or "local"


def var_dir() -> Path:
    """Where the local stack keeps its state (lake, warehouse, Dagster home, pids)."""
    return Path(os.environ.get("PLATFORM_VAR_DIR", PROJECT_ROOT / "var"))


def data_dir() -> Path:
    """Root of the local-directory lake."""
    return Path(os.environ.get("PLATFORM_LAKE_DIR", var_dir() / "lake"))


def warehouse_path() -> Path:
    """The local DuckDB warehouse file."""
    return Path(os.environ.get("PLATFORM_WAREHOUSE_PATH", var_dir() / "warehouse.duckdb"))


def aws_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def local_aws_endpoint() -> str:
    """The moto server that stands in for AWS on this machine."""
    return os.environ.get("PLATFORM_AWS_ENDPOINT_URL", f"http://127.0.0.1:{DEFAULT_MOTO_PORT}")


def lake_bucket() -> str:
    return os.environ.get("PLATFORM_LAKE_BUCKET", "data-platform-lake")


def landing_queue_name() -> str:
    """SQS queue that receives the lake bucket's S3 event notifications."""
    return os.environ.get("PLATFORM_LANDING_QUEUE", "data-platform-landing-events")


def cdc_mapping_dir() -> Path:
    """The CDC table mapping directory (a benchmark or a second stack maps other tables)."""
    return Path(os.environ.get("PLATFORM_CDC_MAPPING", PROJECT_ROOT / "platform" / "catalogs" / "cdc"))


def cdc_queue_name() -> str:
    """SQS queue that receives S3 event notifications for CDC change files (landing/cdc/)."""
    return os.environ.get("PLATFORM_CDC_QUEUE", "data-platform-cdc-events")


def lake_events_topic_name() -> str:
    """SNS topic the lake bucket's S3 events go to; the landing and CDC queues subscribe to it."""
    return os.environ.get("PLATFORM_LAKE_EVENTS_TOPIC", "data-platform-lake-events")


def alerts_topic_name() -> str:
    """SNS topic for alerts (failed loads, quarantined files, blocked tables)."""
    return os.environ.get("PLATFORM_ALERTS_TOPIC", "data-platform-alerts")


# The Dagster instance's PostgreSQL storage (platform/dagster.yaml reads the same variables
# through `{env: ...}`; `dp up` sets them with these defaults).
def dagster_pg_host() -> str:
    return os.environ.get("DAGSTER_PG_HOST", "127.0.0.1")


def dagster_pg_port() -> int:
    return int(os.environ.get("DAGSTER_PG_PORT", "5432"))


def dagster_pg_username() -> str:
    return os.environ.get("DAGSTER_PG_USERNAME", "postgres")


def dagster_pg_password() -> str:
    """Empty by default: the local PostgreSQL trusts local connections."""
    return os.environ.get("DAGSTER_PG_PASSWORD", "")


def dagster_pg_db() -> str:
    """The instance's database; a test or a second stack sets its own."""
    return os.environ.get("DAGSTER_PG_DB", "dagster")


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The serving cache; the local Redis by default."""
    return os.environ.get("PLATFORM_REDIS_URL") or DEFAULT_REDIS_URL


def demo_sources_enabled() -> bool:
    """Whether `dp up` generates the sample source databases (PLATFORM_DEMO_SOURCES=0 turns it off)."""
    return os.environ.get("PLATFORM_DEMO_SOURCES", "1").strip() != "0"


def env(name: str) -> str | None:
    """A variable named by a catalog (a source's `url_env`), or None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


PII_KEY_ENV = "PLATFORM_PII_KEY"


@dataclass(frozen=True)
class Secret:
    """A secret value and where it came from (a variable name or a file), for messages.

    The value never appears in repr, so a logged or raised Secret shows only its origin.
    """

    value: str = field(repr=False)
    origin: str


def pii_key_file() -> Path:
    """Where the local stack keeps its PII key (made on first `dp up`, mode 0600)."""
    return var_dir() / "secrets" / "pii.key"


def pii_key() -> Secret | None:
    """PLATFORM_PII_KEY if set; else, except on the aws profile, the local stack's key file.

    The aws profile takes secrets only from the environment: a key file left on
    a host must not silently become production's key.
    """
    value = env(PII_KEY_ENV)
    if value:
        return Secret(value, PII_KEY_ENV)
    path = pii_key_file()
    if profile_name() != "aws" and path.is_file():
        return Secret(path.read_text().strip(), str(path))
    return None


# --- the telemetry domain's ingest API (services/telemetry_api) ---
def telemetry_stream_name() -> str:
    """The Kinesis stream the telemetry API puts readings on (aws sink)."""
    return os.environ.get("PLATFORM_TELEMETRY_STREAM", "data-platform-telemetry")


def telemetry_sink() -> str:
    """local (WAL + raw files) or kinesis; by default kinesis on the aws profile, else local."""
    value = os.environ.get("PLATFORM_TELEMETRY_SINK", "").strip()
    return value or ("kinesis" if profile_name() == "aws" else "local")


def telemetry_wal_dir() -> Path:
    return Path(os.environ.get("PLATFORM_TELEMETRY_WAL_DIR", var_dir() / "telemetry" / "wal"))


def telemetry_buffer_bytes() -> int:
    return int(os.environ.get("PLATFORM_TELEMETRY_BUFFER_BYTES", "1000000"))


def telemetry_buffer_seconds() -> float:
    return float(os.environ.get("PLATFORM_TELEMETRY_BUFFER_SECONDS", "60"))


def telemetry_device_rate() -> float:
    return float(os.environ.get("PLATFORM_TELEMETRY_DEVICE_RATE", "10"))


def telemetry_global_rate() -> float:
    return float(os.environ.get("PLATFORM_TELEMETRY_GLOBAL_RATE", "50000"))


# --- the telemetry tiers: lifecycle, archive, SQL catalog (assets/telemetry/lifecycle.py) ---
# Processed keeps every raw reading, deduplicated and enriched, so raw is kept only long enough
# to re-process a period; processed 3 years (the seed's legal retention); summaries 5 years.
_TELEMETRY_RETENTION_DEFAULTS = {"raw": 90, "processed": 1095, "curated": 1825}


def _positive_days(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        days = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number of days") from None
    if days <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of days")
    return days


def telemetry_retention_days(tier: str) -> int:
    """Days a telemetry tier's data is kept (PLATFORM_TELEMETRY_<TIER>_RETENTION_DAYS)."""
    if tier not in _TELEMETRY_RETENTION_DEFAULTS:
        raise ValueError(
            f"no telemetry retention for tier {tier!r}; tiers: {sorted(_TELEMETRY_RETENTION_DEFAULTS)}"
        )
    return _positive_days(
        f"PLATFORM_TELEMETRY_{tier.upper()}_RETENTION_DAYS", _TELEMETRY_RETENTION_DEFAULTS[tier]
    )


def telemetry_archive_after_days() -> int:
    """Days after which the local archive compacts a day's hourly files (S3: Standard-IA)."""
    return _positive_days("PLATFORM_TELEMETRY_ARCHIVE_AFTER_DAYS", 30)


def telemetry_glue_database() -> str:
    """The Glue catalog database of the telemetry tiers' tables (S3 lake)."""
    return os.environ.get("PLATFORM_TELEMETRY_GLUE_DATABASE", "data_platform_telemetry")


# --- the telemetry alert path (services/telemetry_alerts) ---
def telemetry_alert_sink() -> str:
    """Where anomaly alerts go: log (the local alert log), sns (SNS, recorded in the alert log too)
    or off; by default sns when readings go through Kinesis (the aws path), else log."""
    value = os.environ.get("PLATFORM_TELEMETRY_ALERT_SINK", "").strip()
    return value or ("sns" if telemetry_sink() == "kinesis" else "log")


def telemetry_alert_log() -> Path:
    """The append-only JSON-lines alert log (also the SNS sink's record of what it published)."""
    return Path(os.environ.get("PLATFORM_TELEMETRY_ALERT_LOG", var_dir() / "telemetry" / "alerts.jsonl"))


def telemetry_alerts_topic_name() -> str:
    """The SNS topic that receives one message per anomaly episode."""
    return os.environ.get("PLATFORM_TELEMETRY_ALERTS_TOPIC", "data-platform-telemetry-alerts")


# --- Spark (resources/spark.py chooses the runner from these) -------------------------------
def spark_mode() -> str:
    """Where PySpark jobs run: local (default), standalone or emr-serverless."""
    return os.environ.get("PLATFORM_SPARK_MODE", "local").strip() or "local"


def spark_master_url() -> str | None:
    """The standalone master (spark://host:port); unset: the cluster `dp spark-cluster up` started."""
    return env("PLATFORM_SPARK_MASTER")


def spark_stage_in_lake() -> bool:
    """PLATFORM_SPARK_STAGE_IN_LAKE=1: a standalone cluster's jobs read and write a lake staging
    prefix instead of the driver's disk (workers on other hosts). EMR Serverless always does."""
    value = os.environ.get("PLATFORM_SPARK_STAGE_IN_LAKE", "0").strip().lower()
    if value not in ("0", "1", "true", "false", ""):
        raise ValueError(f"PLATFORM_SPARK_STAGE_IN_LAKE must be 0 or 1, got {value!r}")
    return value in ("1", "true")


def emr_serverless_application_id() -> str | None:
    return env("PLATFORM_EMR_SERVERLESS_APP_ID")


def emr_serverless_role_arn() -> str | None:
    return env("PLATFORM_EMR_SERVERLESS_ROLE_ARN")


def spark_scripts_s3_uri() -> str | None:
    """s3://bucket/prefix where the job scripts are uploaded for EMR Serverless."""
    return env("PLATFORM_SPARK_SCRIPTS_S3_URI")


# --- the telemetry domain's assets (assets/telemetry) ---
def telemetry_device_table() -> str:
    """The DynamoDB table holding each device's latest reading."""
    return os.environ.get("PLATFORM_TELEMETRY_DEVICE_TABLE", "data-platform-telemetry-devices")


# --- the report snapshot engine (services/snapshots, assets/reports) ---
def snapshot_table() -> str:
    """The DynamoDB table of report snapshots and the requests that asked for them."""
    return os.environ.get("PLATFORM_SNAPSHOT_TABLE", "platform-report-snapshots")


def snapshot_queue_name() -> str:
    """The SQS queue clients send report snapshot requests to."""
    return os.environ.get("PLATFORM_SNAPSHOT_QUEUE", "platform-report-requests")


def reports_dir() -> Path:
    """The report definitions (YAML); platform/reports of this checkout unless PLATFORM_REPORTS_DIR."""
    value = env("PLATFORM_REPORTS_DIR")
    return Path(value) if value else PROJECT_ROOT / "platform" / "reports"


def _positive_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def snapshot_lease_seconds() -> float:
    """How long a render holds its snapshot before another worker may take it over (renewed
    every third of it while the render runs)."""
    return _positive_number("PLATFORM_SNAPSHOT_LEASE_SECONDS", 60.0)


def snapshot_max_attempts() -> int:
    """Renders of one snapshot before it stays FAILED."""
    return int(_positive_number("PLATFORM_SNAPSHOT_MAX_ATTEMPTS", 3))


def snapshot_listen_seconds() -> float:
    """How long a report_requests tick keeps long-polling the request queue (0: one receive per
    tick). Under the sensor daemon's 5 s loop, so ticks follow each other with little gap, and a
    request for a READY snapshot is answered as it arrives instead of at the next tick."""
    raw = os.environ.get("PLATFORM_SNAPSHOT_LISTEN_SECONDS", "").strip()
    try:
        value = float(raw) if raw else 4.6
    except ValueError:
        raise ValueError(f"PLATFORM_SNAPSHOT_LISTEN_SECONDS must be a number, got {raw!r}") from None
    if not 0 <= value < 60:
        raise ValueError(f"PLATFORM_SNAPSHOT_LISTEN_SECONDS must be from 0 to under 60, got {raw!r}")
    return value


def snapshot_request_grace_seconds() -> float:
    """How long after a request the sweep may think its first run was never made (the sensor asks
    for it at once; a daemon killed before making it is what the sweep catches)."""
    return _positive_number("PLATFORM_SNAPSHOT_REQUEST_GRACE_SECONDS", 30.0)


def snapshot_batch_size() -> int:
    """Snapshots one render run takes at most: a burst of requests becomes a few runs, each paying
    the run process's start once and rendering its snapshots one after another."""
    return int(_positive_number("PLATFORM_SNAPSHOT_BATCH_SIZE", 16))


def snapshot_backoff_seconds() -> float:
    """The first retry's delay; each further retry waits twice as long."""
    return _positive_number("PLATFORM_SNAPSHOT_BACKOFF_SECONDS", 10.0)
