"""The archived tier of a local lake: a day's hourly files compacted into one, and retention.

For each tiered dataset (lifecycle.TIERED_DATASETS), a day older than
settings.telemetry_archive_after_days() (30) has its hourly files compacted into

    archived/telemetry/<tier>_<dataset>/year=YYYY/month=MM/day=DD/part-00000.parquet

and the hourly files deleted once the archived object's row count is verified. Days older than
the tier's retention are deleted, archived or not.

Crash safety: the archived file carries a manifest (Parquet key-value metadata) of the source
keys it holds, in order, with their row counts. Compacting a day again keeps the archived rows of
sources that are gone and takes every source still present afresh, replacing its archived copy.
So a re-run after a crash between write and delete (or mid-delete) neither loses nor duplicates
rows, and an hour re-processed after it was archived replaces that hour's archived rows. A source
that changed while being compacted (size or time differs) is not deleted; the next run takes it.

Staging leftovers: a Spark run killed between staging and cleanup leaves its `_staging/<job>/`
prefix (resources.lake.paths.staging_prefix) behind. A prefix whose newest object is older than
lifecycle.STAGING_EXPIRE_DAYS (1 day) is deleted whole; one with any younger object is left alone,
as a run may be staging there right now. (Names the lake's listing hides, such as `_SUCCESS`,
`.crc` and `.tmp-*`, do not count towards a prefix's age; they are deleted with it.)

In an S3 lake the bucket lifecycle (lifecycle.py) tiers and expires objects in place, and this
asset only reports what it sees (days past the archive age, objects under 128 KiB that S3's
lifecycle does not transition, days past retention that are still there, staging prefixes past
their age): rewriting objects there would restart their lifecycle age and cost requests without
saving storage class changes.
"""

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.shared.conventions import domain_asset_args
from assets.telemetry.lifecycle import (
    DOMAIN,
    STAGING_EXPIRE_DAYS,
    TIERED_DATASETS,
    TieredDataset,
    lake_in_s3,
)
from resources import settings
from resources.lake import LakeObject, LakePartition, LakeStorage, Tier, dataset_prefix, object_key
from resources.lake.paths import (
    PARQUET_COMPRESSION,
    PARQUET_SUFFIX,
    STAGING_ROOT,
    LakePathError,
    parse_key,
)

if TYPE_CHECKING:
    import pyarrow as pa

ARCHIVE_FILE = "part-00000.parquet"
MANIFEST_KEY = b"platform.archive.sources"  # JSON [[source key, rows], ...] in file order
SMALL_OBJECT_BYTES = 128 * 1024  # S3 lifecycle does not transition smaller objects by default


class ArchiveError(RuntimeError):
    """A day that cannot be compacted safely; the message names the dataset, day and cause."""


@dataclass
class DatasetReport:
    days_compacted: int = 0
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    days_expired: int = 0
    # S3 lake (report only)
    days_past_archive_age: int = 0
    small_objects: int = 0
    days_past_retention: int = 0


@dataclass
class ArchiveReport:
    datasets: dict[str, DatasetReport] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.datasets.values())


@dataclass
class StagingReport:
    """Leftover `_staging/<job>/` prefixes past their age: removed (local) or seen (S3)."""

    prefixes: int = 0
    objects: int = 0
    kept_young: int = 0  # prefixes with an object younger than the age: maybe a live run


def stale_staging(lake: LakeStorage, now: datetime) -> tuple[dict[str, int], int]:
    """The `_staging/<job>/` prefixes whose newest listed object is older than
    STAGING_EXPIRE_DAYS, with their listed object counts, and how many prefixes are younger."""
    by_prefix: dict[str, list[LakeObject]] = defaultdict(list)
    root = f"{STAGING_ROOT}/"
    for obj in lake.list_objects(root):
        job, sep, _ = obj.key.removeprefix(root).partition("/")
        if job and sep:  # an object right under _staging/ is no job's: left alone
            by_prefix[f"{root}{job}/"].append(obj)
    cutoff = now - timedelta(days=STAGING_EXPIRE_DAYS)
    stale = {
        prefix: len(objs)
        for prefix, objs in sorted(by_prefix.items())
        if max(o.last_modified for o in objs) < cutoff
    }
    return stale, len(by_prefix) - len(stale)


def sweep_staging(lake: LakeStorage, now: datetime, delete: bool = True) -> StagingReport:
    """Delete (or with delete=False only count) the stale staging prefixes (stale_staging)."""
    stale, young = stale_staging(lake, now)
    report = StagingReport(kept_young=young)
    for prefix, listed in stale.items():
        report.prefixes += 1
        report.objects += lake.delete_prefix(prefix) if delete else listed
    return report


def archived_key(ds: TieredDataset, day: date) -> str:
    return object_key(Tier.ARCHIVED, DOMAIN, ds.archived_dataset, ARCHIVE_FILE, LakePartition(day))


def hourly_sources(lake: LakeStorage, ds: TieredDataset) -> dict[date, list[LakeObject]]:
    """The dataset's hourly Parquet objects by day; objects off the path conventions are skipped
    (lake_ops' conventions check reports them)."""
    days: dict[date, list[LakeObject]] = defaultdict(list)
    for obj in lake.list_objects(ds.prefix):
        if not obj.key.endswith(PARQUET_SUFFIX):
            continue
        try:
            partition = parse_key(obj.key).partition
        except LakePathError:
            continue
        if partition is not None and partition.hour is not None:
            days[partition.day].append(obj)
    return {day: sorted(objs, key=lambda o: o.key) for day, objs in days.items()}


def archived_days(lake: LakeStorage, ds: TieredDataset) -> dict[date, LakeObject]:
    found = {}
    for obj in lake.list_objects(dataset_prefix(Tier.ARCHIVED, DOMAIN, ds.archived_dataset)):
        try:
            partition = parse_key(obj.key).partition
        except LakePathError:
            continue
        if partition is not None and obj.key == archived_key(ds, partition.day):
            found[partition.day] = obj
    return found


def read_manifest(path: Path) -> list[tuple[str, int]]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if MANIFEST_KEY not in meta:
        raise ArchiveError(f"{path}: archived file has no {MANIFEST_KEY.decode()} manifest")
    return [(str(k), int(n)) for k, n in json.loads(meta[MANIFEST_KEY])]


def _conform(batch: "pa.RecordBatch", schema: "pa.Schema") -> "pa.RecordBatch":
    """The batch with the schema's columns in its order (missing ones null), cast to its types."""
    import pyarrow as pa

    columns = [
        batch.column(f.name).cast(f.type)
        if f.name in batch.schema.names
        else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def compact_day(
    lake: LakeStorage, ds: TieredDataset, day: date, sources: list[LakeObject]
) -> tuple[int, int]:
    """Compact the day's hourly `sources` into its archived file, then delete them.

    Returns (rows in the archived file, its bytes). Raises ArchiveError, deleting nothing, when
    the written file does not hold exactly the rows expected.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    scratch = lake.scratch_dir()
    target = archived_key(ds, day)
    where = f"{ds.tier.value}/{DOMAIN}/{ds.dataset} day {day}"
    local: dict[str, Path] = {}
    out = scratch / f"archive-{uuid.uuid4().hex}.parquet"
    old: Path | None = None  # the current archived file, when the day has one
    try:
        for obj in sources:
            local[obj.key] = scratch / f"archive-src-{uuid.uuid4().hex}.parquet"
            lake.get_file(obj.key, local[obj.key])
        source_rows = {}
        for key, path in local.items():
            try:
                source_rows[key] = pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                raise ArchiveError(
                    f"{where}: {key} is not readable Parquet ({exc}); nothing archived"
                ) from None

        kept: list[tuple[str, int, int]] = []  # (key, first row, rows) of the old archive to keep
        if lake.exists(target):
            old = scratch / f"archive-old-{uuid.uuid4().hex}.parquet"
            lake.get_file(target, old)
            offset = 0
            for key, rows in read_manifest(old):
                if key not in local:  # a present source replaces its archived copy
                    kept.append((key, offset, rows))
                offset += rows

        schemas = [pq.read_schema(p) for p in local.values()] + ([pq.read_schema(old)] if old else [])
        try:
            schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ArchiveError(f"{where}: the hourly files' schemas do not combine: {exc}") from None
        manifest = [(k, n) for k, _, n in kept] + [(k, source_rows[k]) for k in local]
        expected = sum(n for _, n in manifest)
        schema = schema.with_metadata({MANIFEST_KEY: json.dumps(manifest).encode()})

        with pq.ParquetWriter(out, schema, compression=PARQUET_COMPRESSION) as writer:
            if old is not None and kept:
                _copy_ranges(pq.ParquetFile(old), [(s, n) for _, s, n in kept], schema, writer)
            for path in local.values():
                for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches():
                    writer.write_batch(_conform(batch, schema))
        _check_rows(out, expected, f"{where}: written file")
        lake.put_file(target, out)

        # Verify the stored object, not the local copy, before anything is deleted.
        stored = scratch / f"archive-check-{uuid.uuid4().hex}.parquet"
        try:
            lake.get_file(target, stored)
            _check_rows(stored, expected, f"{where}: archived object {target}")
            size = stored.stat().st_size
        finally:
            stored.unlink(missing_ok=True)
    finally:
        for path in [*local.values(), out, *([old] if old else [])]:
            path.unlink(missing_ok=True)

    # Delete only what was read: a source rewritten meanwhile stays for the next run.
    read = {o.key: o for o in sources}
    for obj in lake.list_objects(ds.prefix + LakePartition(day).path + "/"):
        was = read.get(obj.key)
        if was is not None and (obj.size, obj.last_modified) == (was.size, was.last_modified):
            lake.delete(obj.key)
    return expected, size


def _copy_ranges(old: Any, ranges: list[tuple[int, int]], schema: "pa.Schema", writer: Any) -> None:
    """Write the rows [start, start + n) of each range of the old archive file, streaming."""
    offset = 0
    for batch in old.iter_batches():
        end = offset + batch.num_rows
        for start, n in ranges:
            lo, hi = max(start, offset), min(start + n, end)
            if lo < hi:
                writer.write_batch(_conform(batch.slice(lo - offset, hi - lo), schema))
        offset = end


def _check_rows(path: Path, expected: int, what: str) -> None:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).metadata.num_rows
    if rows != expected:
        raise ArchiveError(f"{what} has {rows} rows, expected {expected}; the hourly files are kept")


def archive_telemetry(
    lake: LakeStorage, today: date, archive_after: int | None = None, compact: bool = True
) -> ArchiveReport:
    """Compact days older than `archive_after` days and delete days older than retention.

    With compact=False (an S3 lake) nothing is written or deleted; the report counts what is there.
    """
    after = archive_after if archive_after is not None else settings.telemetry_archive_after_days()
    report = ArchiveReport()
    for ds in TIERED_DATASETS:
        rep = report.datasets[ds.archived_dataset] = DatasetReport()
        retention = ds.retention_days()
        for day, objs in sorted(hourly_sources(lake, ds).items()):
            age = (today - day).days
            if age <= after:
                continue
            rep.days_past_archive_age += 1
            rep.small_objects += sum(o.size < SMALL_OBJECT_BYTES for o in objs)
            if not compact:
                rep.days_past_retention += age > retention
                continue
            if age > retention:  # past retention before it was ever archived: nothing to keep
                for obj in objs:
                    lake.delete(obj.key)
                rep.days_expired += 1
                continue
            rows, size = compact_day(lake, ds, day, objs)
            rep.days_compacted += 1
            rep.rows += rows
            rep.bytes_before += sum(o.size for o in objs)
            rep.bytes_after += size
        for day, obj in sorted(archived_days(lake, ds).items()):
            if (today - day).days > retention:
                if compact:
                    lake.delete(obj.key)
                    rep.days_expired += 1
                else:
                    rep.days_past_retention += 1
    return report


@dg.asset(
    key=[DOMAIN, "archive"],
    description=(
        "Local lake: compacts each telemetry dataset's hourly files older than 30 days into one"
        " file a day in the archived tier (rows verified before the originals are deleted),"
        " deletes days past retention and `_staging/<job>/` prefixes left by killed runs (newest"
        " object older than a day). S3 lake: reports only; the bucket lifecycle tiers and expires."
    ),
    automation_condition=dg.AutomationCondition.on_cron("15 3 * * *"),
    **domain_asset_args(DOMAIN),
)
def archive(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
    in_s3 = lake_in_s3(lake)
    now = datetime.now(UTC)
    report = archive_telemetry(lake, now.date(), compact=not in_s3)
    staging = sweep_staging(lake, now, delete=not in_s3)
    names = (
        ["days_past_archive_age", "small_objects", "days_past_retention"]
        if in_s3
        else ["days_compacted", "rows", "bytes_before", "bytes_after", "days_expired"]
    )
    metadata: dict[str, Any] = {"mode": "s3 (report only)" if in_s3 else "local"}
    metadata.update({name: report.total(name) for name in names})
    done = "past_age" if in_s3 else "removed"  # S3: the lifecycle's staging rule expires them
    metadata[f"staging_prefixes_{done}"] = staging.prefixes
    metadata[f"staging_objects_{done}"] = staging.objects
    metadata["staging_prefixes_kept_young"] = staging.kept_young
    metadata["by_dataset"] = dg.MetadataValue.json(
        {ds: {n: getattr(r, n) for n in names} for ds, r in report.datasets.items()}
    )
    context.log.info(f"telemetry archive: {metadata}")
    return dg.MaterializeResult(metadata=metadata)


ASSETS = [archive]
