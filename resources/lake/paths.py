"""Lake path conventions. The only module that builds or parses lake keys.

    <tier>/<domain>/<dataset>/year=YYYY/month=MM/day=DD[/hour=HH[/minute=MM]]/part-*.parquet

One delivery layout of another tool is accepted in the landing tier, as
delivered: AWS DMS's S3 target, with bucket folder `landing/cdc/<cluster>`:

    landing/cdc/<cluster>/<schema>/<table>/YYYY/MM/DD/<file>

Keys are relative to the lake root (a local directory or an S3 bucket/prefix)
and always use forward slashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

PARQUET_COMPRESSION = "zstd"
PARQUET_SUFFIX = ".parquet"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PARTITION = re.compile(r"^year=(\d{4})/month=(\d{2})/day=(\d{2})(?:/hour=(\d{2})(?:/minute=(\d{2}))?)?$")


class LakePathError(ValueError):
    """A lake key or partition that does not follow the conventions."""


class Tier(StrEnum):
    LANDING = "landing"  # as delivered
    RAW = "raw"
    PROCESSED = "processed"
    CURATED = "curated"
    ARCHIVED = "archived"


@dataclass(frozen=True, order=True)
class LakePartition:
    """A day, an hour, or a window shorter than an hour (starting at `minute`) of a dataset.

    An hourly partition and a 30-minute window starting on the hour are
    different partitions with different paths (hour=07 vs hour=07/minute=00).
    """

    day: date
    hour: int | None = None
    minute: int | None = None

    def __post_init__(self) -> None:
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise LakePathError(f"hour must be 0-23, got {self.hour}")
        if self.minute is not None and (self.hour is None or not 0 <= self.minute <= 59):
            raise LakePathError(
                f"minute must be 0-59 and needs an hour, got hour={self.hour} minute={self.minute}"
            )

    @classmethod
    def from_key(cls, partition_key: str, partitions_def: Any = None) -> LakePartition:
        """The lake partition of a Dagster partition key.

        With the asset's time-window partitions definition, the key is parsed
        with that definition's own format and the window's length picks the
        grain (a day or longer: day; an hour: hour; shorter: minute). Without
        it, 'YYYY-MM-DD' is a day and 'YYYY-MM-DD-HH:MM' an hour, or a
        sub-hour window when the minutes are not zero.
        """
        if partitions_def is not None:
            return cls._from_window(partition_key, partitions_def)
        for fmt, grain in (("%Y-%m-%d", "day"), ("%Y-%m-%d-%H:%M", "time")):
            try:
                parsed = datetime.strptime(partition_key, fmt)
            except ValueError:
                continue
            if grain == "day":
                return cls(parsed.date())
            return cls(parsed.date(), parsed.hour, parsed.minute or None)
        raise LakePathError(
            f"partition key {partition_key!r} is neither daily (YYYY-MM-DD) nor hourly (YYYY-MM-DD-HH:MM)"
        )

    @classmethod
    def _from_window(cls, partition_key: str, partitions_def: Any) -> LakePartition:
        try:
            window = partitions_def.time_window_for_partition_key(partition_key)
        except Exception as exc:  # Dagster raises several types for a key outside its format
            raise LakePathError(
                f"partition key {partition_key!r} does not parse with {partitions_def}: {exc}"
            ) from None
        return cls.for_window(window.start, window.end - window.start)

    @classmethod
    def for_window(cls, start: datetime, length: timedelta) -> LakePartition:
        """The partition of a time window: its start, at the grain its length calls for."""
        if length >= timedelta(days=1):
            return cls(start.date())
        if length >= timedelta(hours=1):
            return cls(start.date(), start.hour)
        return cls(start.date(), start.hour, start.minute)

    @property
    def dagster_key(self) -> str:
        """The key in Dagster's default formats: YYYY-MM-DD, or YYYY-MM-DD-HH:MM."""
        day = self.day.isoformat()
        if self.hour is None:
            return day
        return f"{day}-{self.hour:02d}:{self.minute or 0:02d}"

    @property
    def start(self) -> datetime:
        """When the partition starts (UTC)."""
        return datetime(
            self.day.year, self.day.month, self.day.day, self.hour or 0, self.minute or 0, tzinfo=UTC
        )

    @property
    def path(self) -> str:
        path = f"year={self.day.year:04d}/month={self.day.month:02d}/day={self.day.day:02d}"
        if self.hour is not None:
            path += f"/hour={self.hour:02d}"
        if self.minute is not None:
            path += f"/minute={self.minute:02d}"
        return path

    def to_day(self) -> LakePartition:
        return LakePartition(self.day)

    def to_hour(self) -> LakePartition:
        return self if self.hour is None else LakePartition(self.day, self.hour)


@dataclass(frozen=True)
class LakeKey:
    """A parsed object key."""

    tier: Tier
    domain: str
    dataset: str
    partition: LakePartition | None
    filename: str
    # "<schema>/<table>" of a DMS-layout key (landing/cdc/<cluster>/<schema>/<table>/YYYY/MM/DD/<file>)
    subpath: str | None = None

    @property
    def key(self) -> str:
        if self.subpath is not None:
            schema, table = self.subpath.split("/")
            if self.partition is None:
                raise LakePathError(f"DMS key {self.subpath}/{self.filename} needs a day")
            return dms_object_key(self.dataset, schema, table, self.partition.day, self.filename)
        return object_key(self.tier, self.domain, self.dataset, self.filename, self.partition)


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise LakePathError(f"{kind} {value!r} must be lower-case letters, digits and underscores")
    return value


def dataset_prefix(tier: Tier | str, domain: str, dataset: str | None = None) -> str:
    """'tier/domain/' or 'tier/domain/dataset/' (with the trailing slash, for listings)."""
    tier = Tier(tier)
    prefix = f"{tier.value}/{_check_name('domain', domain)}/"
    return prefix if dataset is None else f"{prefix}{_check_name('dataset', dataset)}/"


def partition_prefix(tier: Tier | str, domain: str, dataset: str, partition: LakePartition | None) -> str:
    prefix = dataset_prefix(tier, domain, dataset)
    return prefix if partition is None else f"{prefix}{partition.path}/"


def object_key(
    tier: Tier | str, domain: str, dataset: str, filename: str, partition: LakePartition | None = None
) -> str:
    if not filename or "/" in filename or filename.startswith((".", "_")):
        raise LakePathError(f"file name {filename!r} must be a plain name not starting with '.' or '_'")
    return partition_prefix(tier, domain, dataset, partition) + filename


# Working copies of a job that runs away from this machine (EMR Serverless reads and writes the
# lake, not a local disk). Not a tier: no tier's listing sees them; the job's caller deletes them.
STAGING_ROOT = "_staging"
_JOB = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def staging_prefix(job: str) -> str:
    """'_staging/<job>/': the lake prefix one job run's inputs and outputs are staged under."""
    if not _JOB.match(job):
        raise LakePathError(f"staging job name {job!r} must be lower-case letters, digits and '-'")
    return f"{STAGING_ROOT}/{job}/"


# Rendered report snapshots (assets/reports): a folder per snapshot, written once, never rewritten
# (a snapshot id names the data it was rendered from). Not a tier: snapshots are outputs to read.
SNAPSHOTS_ROOT = "snapshots"
_SNAPSHOT_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def snapshot_prefix(report_id: str, snapshot_id: str) -> str:
    """'snapshots/<report_id>/<snapshot_id>/'."""
    for kind, value in (("report id", report_id), ("snapshot id", snapshot_id)):
        if not _SNAPSHOT_PART.match(value):
            raise LakePathError(f"{kind} {value!r} must be letters, digits, '_' and '-'")
    return f"{SNAPSHOTS_ROOT}/{report_id}/{snapshot_id}/"


def is_hidden(key: str) -> bool:
    """In-progress and marker files ('.tmp-*', '_SUCCESS') are never data."""
    return key.rsplit("/", 1)[-1].startswith((".", "_"))


# --- the AWS DMS delivery layout (landing tier, domain cdc) -------------------------
DMS_DOMAIN = "cdc"
_DMS_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$-]*$")  # MySQL schema and table names


@dataclass(frozen=True)
class DmsKey:
    cluster: str
    schema: str
    table: str
    day: date
    filename: str

    @property
    def key(self) -> str:
        return dms_object_key(self.cluster, self.schema, self.table, self.day, self.filename)


def dms_prefix(cluster: str, schema: str | None = None, table: str | None = None) -> str:
    """The DMS bucket folder of a cluster, or one table's folder under it (with the trailing slash)."""
    prefix = dataset_prefix(Tier.LANDING, DMS_DOMAIN, cluster)
    if schema is None:
        return prefix
    prefix += _check_dms_name("schema", schema) + "/"
    return prefix if table is None else prefix + _check_dms_name("table", table) + "/"


def dms_object_key(cluster: str, schema: str, table: str, day: date, filename: str) -> str:
    if not filename or "/" in filename or filename.startswith((".", "_")):
        raise LakePathError(f"file name {filename!r} must be a plain name not starting with '.' or '_'")
    return f"{dms_prefix(cluster, schema, table)}{day.year:04d}/{day.month:02d}/{day.day:02d}/{filename}"


def parse_dms_key(key: str) -> DmsKey:
    """Parse landing/cdc/<cluster>/<schema>/<table>/YYYY/MM/DD/<file>; LakePathError names what is wrong."""
    parts = key.strip("/").split("/")
    if len(parts) != 9 or parts[0] != Tier.LANDING.value or parts[1] != DMS_DOMAIN:
        raise LakePathError(
            f"DMS key {key!r} is not landing/{DMS_DOMAIN}/<cluster>/<schema>/<table>/YYYY/MM/DD/<file>"
        )
    _, _, cluster, schema, table, year, month, day_, filename = parts
    _check_name("cluster", cluster)
    _check_dms_name("schema", schema)
    _check_dms_name("table", table)
    try:
        day = date(int(year), int(month), int(day_))
    except ValueError as exc:
        raise LakePathError(f"DMS key {key!r}: {year}/{month}/{day_} is not a date ({exc})") from None
    return DmsKey(cluster, schema, table, day, filename)


def _check_dms_name(kind: str, value: str) -> str:
    if not _DMS_NAME.match(value):
        raise LakePathError(f"{kind} {value!r} is not a MySQL schema or table name usable in a key")
    return value


def parse_key(key: str) -> LakeKey:
    """Parse an object key; raise LakePathError naming the part that is wrong."""
    parts = key.strip("/").split("/")
    if len(parts) > 2 and parts[0] == Tier.LANDING.value and parts[1] == DMS_DOMAIN:
        dms = parse_dms_key(key)
        return LakeKey(
            Tier.LANDING,
            DMS_DOMAIN,
            dms.cluster,
            LakePartition(dms.day),
            dms.filename,
            f"{dms.schema}/{dms.table}",
        )
    if len(parts) < 4:
        raise LakePathError(f"lake key {key!r} needs at least tier/domain/dataset/file")
    tier_name, domain, dataset, *middle, filename = parts
    try:
        tier = Tier(tier_name)
    except ValueError:
        raise LakePathError(
            f"lake key {key!r}: tier {tier_name!r} is not one of {[t.value for t in Tier]}"
        ) from None
    _check_name("domain", domain)
    _check_name("dataset", dataset)
    partition = None
    if middle:
        match = _PARTITION.match("/".join(middle))
        if not match:
            raise LakePathError(
                f"lake key {key!r}: {'/'.join(middle)!r} is not"
                " year=YYYY/month=MM/day=DD[/hour=HH[/minute=MM]]"
            )
        year, month, day_, hour, minute = match.groups()
        try:
            day = date(int(year), int(month), int(day_))
        except ValueError as exc:
            raise LakePathError(f"lake key {key!r}: {exc}") from None
        partition = LakePartition(
            day, int(hour) if hour is not None else None, int(minute) if minute is not None else None
        )
    return LakeKey(tier, domain, dataset, partition, filename)
