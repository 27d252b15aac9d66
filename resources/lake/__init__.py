"""The lake: path conventions (paths.py), storage behind one interface (storage.py), and
partitioned datasets written and read through it, for every domain (datasets.py)."""

from resources.lake.datasets import (
    Grain,
    LoadState,
    PartitionWriter,
    partition_end,
    partition_of,
    partition_schema,
    read_parquet_object,
    read_partition_batches,
)
from resources.lake.paths import LakeKey, LakePartition, LakePathError, Tier, dataset_prefix, object_key
from resources.lake.storage import LakeObject, LakeStorage, ListingCursor, LocalLake, S3Lake

__all__ = [
    "Grain",
    "LakeKey",
    "LakeObject",
    "LakePartition",
    "LakePathError",
    "LakeStorage",
    "ListingCursor",
    "LoadState",
    "LocalLake",
    "PartitionWriter",
    "S3Lake",
    "Tier",
    "dataset_prefix",
    "object_key",
    "partition_end",
    "partition_of",
    "partition_schema",
    "read_parquet_object",
    "read_partition_batches",
]
