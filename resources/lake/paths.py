"""Lake path conventions. The only module that builds or parses lake keys.

    <tier>/<domain>/<dataset>/year=YYYY/month=MM/day=DD[/hour=HH]/part-*.parquet

Keys are relative to the lake root (a local directory or an S3 bucket/prefix)
and always use forward slashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

PARQUET_COMPRESSION = "zstd"
PARQUET_SUFFIX = ".parquet"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PARTITION = re.compile(r"^year=(\d{4})/month=(\d{2})/day=(\d{2})(?:/hour=(\d{2}))?$")


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
    """A day, or an hour of a day, of a dataset."""

    day: date
    hour: int | None = None

    def __post_init__(self) -> None:
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise LakePathError(f"hour must be 0-23, got {self.hour}")

    @classmethod
    def from_key(cls, partition_key: str) -> LakePartition:
        """Parse a Dagster daily ('2026-11-23') or hourly ('2026-11-23-07:00') partition key."""
        for fmt, hourly in (("%Y-%m-%d", False), ("%Y-%m-%d-%H:%M", True)):
            try:
                parsed = datetime.strptime(partition_key, fmt)
            except ValueError:
                continue
            return cls(parsed.date(), parsed.hour if hourly else None)
        raise LakePathError(
            f"partition key {partition_key!r} is neither daily (YYYY-MM-DD) nor hourly (YYYY-MM-DD-HH:MM)"
        )

    @property
    def dagster_key(self) -> str:
        day = self.day.isoformat()
        return day if self.hour is None else f"{day}-{self.hour:02d}:00"

    @property
    def path(self) -> str:
        path = f"year={self.day.year:04d}/month={self.day.month:02d}/day={self.day.day:02d}"
        return path if self.hour is None else f"{path}/hour={self.hour:02d}"

    def to_day(self) -> LakePartition:
        return LakePartition(self.day)


@dataclass(frozen=True)
class LakeKey:
    """A parsed object key."""

    tier: Tier
    domain: str
    dataset: str
    partition: LakePartition | None
    filename: str

    @property
    def key(self) -> str:
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


def is_hidden(key: str) -> bool:
    """In-progress and marker files ('.tmp-*', '_SUCCESS') are never data."""
    return key.rsplit("/", 1)[-1].startswith((".", "_"))


def parse_key(key: str) -> LakeKey:
    """Parse an object key; raise LakePathError naming the part that is wrong."""
    parts = key.strip("/").split("/")
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
                f"lake key {key!r}: {'/'.join(middle)!r} is not year=YYYY/month=MM/day=DD[/hour=HH]"
            )
        year, month, day_, hour = match.groups()
        try:
            day = date(int(year), int(month), int(day_))
        except ValueError as exc:
            raise LakePathError(f"lake key {key!r}: {exc}") from None
        partition = LakePartition(day, int(hour) if hour is not None else None)
    return LakeKey(tier, domain, dataset, partition, filename)
