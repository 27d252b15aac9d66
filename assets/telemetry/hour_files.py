"""The files one hour's Spark run reads and writes, staged in a local work dir or a lake prefix.

The run reads a snapshot: the raw files listed when it starts are copied to a work directory, or
to a staging prefix in the lake when the job runs elsewhere (EMR Serverless), so files that land
meanwhile make a new run instead of half-entering this one. Spark writes its outputs there too,
and each is then put into the lake under a fixed name: the put replaces the previous output
atomically, so a run that fails leaves the hour's last good output in place (Spark's own
overwrite would empty the directory first).
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from assets.telemetry.partitions import DOMAIN, OUTPUT_FILE
from resources.lake import LakeObject, LakePartition, LakeStorage, Tier
from resources.lake.paths import PARQUET_SUFFIX, object_key, parse_key, partition_prefix, staging_prefix

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


class JobFiles(ABC):
    """Where one Spark run's inputs and outputs live while it runs, as the paths the job is given."""

    def __init__(self, lake: LakeStorage):
        self.lake = lake

    @abstractmethod
    def input(self, name: str, objects: Sequence[LakeObject]) -> str:
        """Stage a snapshot of objects (one file each, names unique by their key); the job's path."""

    @abstractmethod
    def output(self, name: str) -> str:
        """The path the job writes output `name` to."""

    @abstractmethod
    def output_files(self, name: str) -> list[str]:
        """The Parquet files the job wrote to output `name`."""

    @abstractmethod
    def publish_file(self, name: str, found: str, key: str) -> None:
        """Put one of output_files(name) into the lake under key."""

    @abstractmethod
    def cleanup(self) -> None: ...

    def publish(self, name: str, tier: Tier, dataset: str, hour: LakePartition) -> str:
        """Put the job's one output file for the hour into the lake; drop any other file there."""
        files = self.output_files(name)
        if len(files) != 1:
            raise RuntimeError(
                f"expected one Parquet file from the Spark job in {self.output(name)}, found {len(files)}"
            )
        key = object_key(tier, DOMAIN, dataset, OUTPUT_FILE, hour)
        self.publish_file(name, files[0], key)
        for obj in parquet_objects(self.lake, tier, dataset, hour):
            if obj.key != key:
                self.lake.delete(obj.key)
        return key


class LocalJobFiles(JobFiles):
    """A work directory on this machine: for a driver here (local mode, the standalone cluster)."""

    def __init__(self, lake: LakeStorage, job: str):
        super().__init__(lake)
        self.work = lake.scratch_dir() / job

    def input(self, name: str, objects: Sequence[LakeObject]) -> str:
        directory = self.work / name
        directory.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            self.lake.get_file(obj.key, directory / obj.key.replace("/", "__"))
        return str(directory)

    def output(self, name: str) -> str:
        return str(self.work / name)

    def output_files(self, name: str) -> list[str]:
        return [str(p) for p in sorted((self.work / name).glob(f"*{PARQUET_SUFFIX}"))]

    def publish_file(self, name: str, found: str, key: str) -> None:
        self.lake.put_file(key, Path(found))

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class LakeJobFiles(JobFiles):
    """A staging prefix in the lake (resources.lake.paths.staging_prefix): for a job that runs
    away from this machine (EMR Serverless) and reads and writes the lake's URIs. Inputs are
    copied server-side in S3, so the run still reads the snapshot taken when it started."""

    def __init__(self, lake: LakeStorage, job: str):
        super().__init__(lake)
        self.prefix = staging_prefix(job)

    def input(self, name: str, objects: Sequence[LakeObject]) -> str:
        for obj in objects:
            self.lake.copy_object(obj.key, f"{self.prefix}{name}/{obj.key.replace('/', '__')}")
        return self.output(name)

    def output(self, name: str) -> str:
        return self.lake.uri(f"{self.prefix}{name}")

    def output_files(self, name: str) -> list[str]:
        listed = self.lake.list_objects(f"{self.prefix}{name}/")  # hidden names (_SUCCESS, .crc) left out
        return [o.key for o in listed if o.key.endswith(PARQUET_SUFFIX)]

    def publish_file(self, name: str, found: str, key: str) -> None:
        self.lake.copy_object(found, key)

    def cleanup(self) -> None:
        self.lake.delete_prefix(self.prefix)


def job_files(lake: LakeStorage, in_lake: bool, job: str) -> JobFiles:
    return LakeJobFiles(lake, job) if in_lake else LocalJobFiles(lake, job)
