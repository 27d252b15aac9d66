"""The files one hour's Spark run reads and writes, moved between the lake and a local work dir.

The run reads a snapshot: the raw files listed when it starts are copied to a work directory (and
recorded as applied), so files that land meanwhile make a new run instead of half-entering this
one. Outputs are written by Spark into the work directory and then put into the lake under a
fixed name: the put replaces the previous output atomically, so a run that fails leaves the
hour's last good output in place (Spark's own overwrite would empty the directory first).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from assets.telemetry.partitions import DOMAIN, OUTPUT_FILE
from resources.lake import LakeObject, LakePartition, LakeStorage, Tier
from resources.lake.paths import PARQUET_SUFFIX, object_key, parse_key, partition_prefix

BASELINE_HOURS = 24  # as the job's baseline window (assets/telemetry/spark/process_hour.py)


def parquet_objects(lake: LakeStorage, tier: Tier, dataset: str, hour: LakePartition) -> list[LakeObject]:
    prefix = partition_prefix(tier, DOMAIN, dataset, hour)
    return [o for o in lake.list_objects(prefix) if o.key.endswith(PARQUET_SUFFIX)]


def previous_hours_objects(
    lake: LakeStorage, tier: Tier, dataset: str, hour: LakePartition
) -> list[LakeObject]:
    """The dataset's files of the BASELINE_HOURS hours before `hour` (listed a day at a time)."""
    first = hour.start - timedelta(hours=BASELINE_HOURS)
    days = sorted({(first + timedelta(hours=h)).date() for h in range(BASELINE_HOURS)})
    found = []
    for day in days:
        for obj in lake.list_objects(partition_prefix(tier, DOMAIN, dataset, LakePartition(day))):
            part = parse_key(obj.key).partition
            in_window = part is not None and part.hour is not None and first <= part.start < hour.start
            if in_window and obj.key.endswith(PARQUET_SUFFIX):
                found.append(obj)
    return found


def stage(lake: LakeStorage, objects: Sequence[LakeObject], directory: Path) -> Path:
    """Copy objects into directory (one file each, names unique by their key) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        lake.get_file(obj.key, directory / obj.key.replace("/", "__"))
    return directory


def publish(lake: LakeStorage, out_dir: Path, tier: Tier, dataset: str, hour: LakePartition) -> str:
    """Put the job's one output file for the hour into the lake; drop any other file there."""
    files = sorted(out_dir.glob(f"*{PARQUET_SUFFIX}"))
    if len(files) != 1:
        raise RuntimeError(f"expected one Parquet file from the Spark job in {out_dir}, found {len(files)}")
    key = object_key(tier, DOMAIN, dataset, OUTPUT_FILE, hour)
    lake.put_file(key, files[0])
    for obj in parquet_objects(lake, tier, dataset, hour):
        if obj.key != key:
            lake.delete(obj.key)
    return key
