"""Which asset (and partition) an object feeds: routes for the lake and for other buckets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from resources.lake.paths import LakeKey, LakePathError, Tier, dataset_prefix, parse_key
from resources.ledger import FileRef

PartitionKeyFn = Callable[[LakeKey], "str | None"]


def partition_of(lake_key: LakeKey) -> str | None:
    """The Dagster key of the object's own lake partition (daily, hourly or sub-hour)."""
    return lake_key.partition.dagster_key if lake_key.partition else None


def day_of(lake_key: LakeKey) -> str | None:
    """Daily partition key, for daily assets fed by hourly paths."""
    return lake_key.partition.to_day().dagster_key if lake_key.partition else None


@dataclass(frozen=True)
class Arrival:
    """A file that should be applied to `target` (in `partition_key`)."""

    target: dg.AssetKey
    ref: FileRef
    partition_key: str | None
    partitions_def: dg.PartitionsDefinition | None = None


@dataclass(frozen=True)
class LakeRoute:
    """Objects of tier[/domain[/dataset]] in the lake feed `asset`.

    The partition is found by `partition_key` if given, else from the asset's
    time-window `partitions_def` (the window holding the object's lake
    partition start), else the object's own lake partition.
    """

    asset: dg.AssetKey
    tier: Tier
    domain: str | None = None
    dataset: str | None = None
    partition_key: PartitionKeyFn | None = None
    partitions_def: dg.PartitionsDefinition | None = None
    exclude_domains: tuple[str, ...] = ()  # domains with sensors of their own (cdc)

    @classmethod
    def for_asset(
        cls, asset: dg.AssetsDefinition, tier: Tier, domain: str | None = None, dataset: str | None = None
    ) -> LakeRoute:
        return cls(asset.key, tier, domain, dataset, partitions_def=asset.partitions_def)

    def matches(self, key: LakeKey) -> bool:
        return (
            key.tier == self.tier
            and key.domain not in self.exclude_domains
            and (self.domain is None or key.domain == self.domain)
            and (self.dataset is None or key.dataset == self.dataset)
        )

    @property
    def prefix(self) -> str:
        if self.domain is None:
            return f"{Tier(self.tier).value}/"
        return dataset_prefix(self.tier, self.domain, self.dataset)

    def partition_for(self, key: LakeKey) -> str | None:
        if self.partition_key is not None:
            return self.partition_key(key)
        if isinstance(self.partitions_def, dg.TimeWindowPartitionsDefinition):
            if key.partition is None:
                raise LakePathError(
                    f"{key.key} has no partition in its path, but {self.asset} is partitioned"
                )
            return self.partitions_def.get_partition_key_for_timestamp(key.partition.start.timestamp())
        return partition_of(key)


@dataclass(frozen=True)
class BucketRoute:
    """Objects under `prefix` of a bucket other than the lake's feed `asset` (e.g. a DMS target).

    `bucket` may be a function, so the name comes from settings at tick time.
    Such objects are known to the ledger as `s3://bucket/key`.
    """

    bucket: str | Callable[[], str]
    prefix: str
    asset: dg.AssetKey
    partition_key: Callable[[str], str | None] = lambda _key: None
    partitions_def: dg.PartitionsDefinition | None = None

    def bucket_name(self) -> str:
        return self.bucket() if callable(self.bucket) else self.bucket

    def matches(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket_name() and key.startswith(self.prefix)


def lake_arrivals(key: str, etag: str, routes: list[LakeRoute]) -> list[Arrival]:
    """The arrivals a lake object makes (one per route that takes it). Raises LakePathError."""
    parsed = parse_key(key)
    ref = FileRef(key, etag)
    return [
        Arrival(route.asset, ref, route.partition_for(parsed), route.partitions_def)
        for route in routes
        if route.matches(parsed)
    ]


def bucket_arrivals(bucket: str, key: str, etag: str, routes: list[BucketRoute]) -> list[Arrival]:
    ref = FileRef(f"s3://{bucket}/{key}", etag)
    return [
        Arrival(route.asset, ref, route.partition_key(key), route.partitions_def)
        for route in routes
        if route.matches(bucket, key)
    ]
