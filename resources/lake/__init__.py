"""The lake: path conventions (paths.py) and storage behind one interface (storage.py)."""

from resources.lake.paths import LakeKey, LakePartition, LakePathError, Tier, dataset_prefix, object_key
from resources.lake.storage import LakeObject, LakeStorage, ListingCursor, LocalLake, S3Lake

__all__ = [
    "LakeKey",
    "LakeObject",
    "LakePartition",
    "LakePathError",
    "LakeStorage",
    "ListingCursor",
    "LocalLake",
    "S3Lake",
    "Tier",
    "dataset_prefix",
    "object_key",
]
