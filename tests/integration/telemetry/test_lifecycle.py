"""Telemetry tiers: the S3 bucket lifecycle on a moto server, and the local archive asset on a
local lake (compaction, retention, re-runs after a crash), read back through the DuckDB views."""

from __future__ import annotations

import os
import random
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from assets.telemetry.archive import ArchiveError, archive, archive_telemetry, archived_key, sweep_staging
from assets.telemetry.lifecycle import (
    TIERED_DATASETS,
    apply_lifecycle,
    current_rules,
    lake_lifecycle,
    lifecycle_differences,
    lifecycle_matches,
)
from assets.telemetry.sql_catalog import processed_schema, sql_tables_asset, summary_schema
from resources.lake import LakePartition, LakeStorage, LocalLake, S3Lake, Tier
from resources.warehouse import DuckDBWarehouse
from services.aws_bootstrap import ensure_bucket_fanout
from services.telemetry_api.sink import RAW_SCHEMA

RAW, PROCESSED, CURATED = TIERED_DATASETS
FOREIGN_RULE = {
    "ID": "logs-expire",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 7},
}
# The rules this file expects of ours, spelled out here rather than read from the code.
DATASET_RULE_IDS = {
    "telemetry-tiers-raw-readings",
    "telemetry-tiers-processed-readings",
    "telemetry-tiers-curated-hourly_summary",
}
STAGING_RULE = "telemetry-tiers-staging"
OUR_RULE_IDS = DATASET_RULE_IDS | {STAGING_RULE}


# --- rows in the tiers' schemas ---------------------------------------------------------------
def rows_for(tier: Tier, start: datetime, n: int, rng: random.Random) -> pa.Table:
    """n rows of a tier's schema, timestamped inside the hour starting at `start`."""
    times = [start + timedelta(seconds=rng.randrange(3600)) for _ in range(n)]
    devices = [f"dev-{rng.randrange(5)}" for _ in range(n)]
    temps = [round(rng.uniform(-5, 35), 3) for _ in range(n)]
    if tier == Tier.RAW:
        return pa.table(
            {
                "device_id": devices,
                "timestamp": times,
                "temperature": temps,
                "humidity": [rng.uniform(20, 80) for _ in range(n)],
                "pressure": [rng.uniform(990, 1030) for _ in range(n)],
                "latitude": [37.5] * n,
                "longitude": [127.0] * n,
                "metadata_version": ["1"] * n,
                "metadata_source": ["test"] * n,
                "received_at": times,
                "batch_id": [f"b-{rng.randrange(10**9)}" for _ in range(n)],
            },
            schema=RAW_SCHEMA,
        )
    if tier == Tier.PROCESSED:
        return pa.table(
            {
                "device_id": devices,
                "temperature": temps,
                "humidity": [50.0] * n,
                "pressure": [1000.0] * n,
                "timestamp": times,
                "temperature_fahrenheit": [t * 9 / 5 + 32 for t in temps],
                "anomaly_flag": [False] * n,
                "anomaly_score": [None] * n,
                "hour": [start.hour] * n,
                "day_of_week": [start.isoweekday()] * n,
                "is_weekend": [start.isoweekday() >= 6] * n,
                "is_late": [False] * n,
            },
            schema=processed_schema(),
        )
    return pa.table(
        {
            "device_id": [f"dev-{i}" for i in range(n)],
            "hour": [start] * n,
            "record_count": [rng.randrange(1, 100) for _ in range(n)],
            "avg_temperature": temps,
            "min_temperature": temps,
            "max_temperature": temps,
            "temp_stddev": [0.5] * n,
            "anomaly_count": [0] * n,
            "data_quality_score": [1.0] * n,
            "late_count": [0] * n,
            "duplicate_count": [0] * n,
        },
        schema=summary_schema(),
    )


def write_hour(
    lake: LakeStorage, ds, day: date, hour: int, n: int, rng: random.Random, name: str
) -> pa.Table:
    table = rows_for(ds.tier, datetime(day.year, day.month, day.day, hour, tzinfo=UTC), n, rng)
    lake.write_parquet(table, ds.tier, "telemetry", ds.dataset, LakePartition(day, hour), name)
    return table


def row_set(table: pa.Table) -> list[tuple]:
    return sorted(tuple(sorted(r.items())) for r in table.to_pylist())


def hourly_keys(lake: LakeStorage, ds, day: date) -> list[str]:
    return [
        k for k in lake.parquet_keys(ds.tier, "telemetry", ds.dataset) if f"/{LakePartition(day).path}/" in k
    ]


# --- S3: the bucket lifecycle -------------------------------------------------------------------
def _ours(rules: list[dict]) -> dict[str, dict]:
    return {r["ID"]: r for r in rules if r["ID"].startswith("telemetry-tiers-")}


def test_lifecycle_merges_with_foreign_rules_and_is_idempotent(s3_lake: S3Lake):
    s3 = s3_lake.aws.client("s3")
    s3.put_bucket_lifecycle_configuration(
        Bucket=s3_lake.bucket_name, LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
    )
    assert lifecycle_differences(s3_lake)  # before: our rules are missing

    apply_lifecycle(s3_lake)
    apply_lifecycle(s3_lake)  # a second put replaces our rules, never adds copies

    rules = current_rules(s3_lake)
    assert sorted(r["ID"] for r in rules) == sorted(OUR_RULE_IDS | {"logs-expire"})  # no copies
    [foreign] = [r for r in rules if r["ID"] == "logs-expire"]
    assert foreign["Expiration"]["Days"] == 7
    ours = _ours(rules)
    processed = ours["telemetry-tiers-processed-readings"]
    assert processed["Filter"]["Prefix"] == "lake/processed/telemetry/readings/"
    assert sorted((t["Days"], t["StorageClass"]) for t in processed["Transitions"]) == [
        (30, "STANDARD_IA"),
        (365, "GLACIER"),
    ]
    assert processed["Expiration"]["Days"] == 1095
    curated = ours["telemetry-tiers-curated-hourly_summary"]
    assert curated["Filter"]["Prefix"] == "lake/curated/telemetry/hourly_summary/"
    assert curated["Expiration"]["Days"] == 1825
    raw = ours["telemetry-tiers-raw-readings"]
    # Raw expires at 90 days, before Glacier's 365: only Standard-IA, and never the checkpoints.
    assert [(t["Days"], t["StorageClass"]) for t in raw["Transitions"]] == [(30, "STANDARD_IA")]
    assert raw["Expiration"]["Days"] == 90
    assert raw["Filter"]["Prefix"] == "lake/raw/telemetry/readings/"
    # Leftover staging prefixes: expired after a day (S3's minimum), under the lake's root prefix.
    staging = ours[STAGING_RULE]
    assert staging["Filter"]["Prefix"] == "lake/_staging/"
    assert staging["Status"] == "Enabled"
    assert staging["Expiration"]["Days"] == 1
    assert staging["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert "Transitions" not in staging
    assert lifecycle_differences(s3_lake) == []


def test_lifecycle_asset_repairs_drift_and_check_reports_it(s3_lake: S3Lake, monkeypatch):
    monkeypatch.setenv("PLATFORM_TELEMETRY_PROCESSED_RETENTION_DAYS", "400")
    # Someone shortened our processed rule: the check sees it, the asset puts it back.
    drifted = {
        "ID": "telemetry-tiers-processed-readings",
        "Filter": {"Prefix": "lake/processed/telemetry/readings/"},
        "Status": "Enabled",
        "Expiration": {"Days": 10},
    }
    s3_lake.aws.client("s3").put_bucket_lifecycle_configuration(
        Bucket=s3_lake.bucket_name, LifecycleConfiguration={"Rules": [drifted, FOREIGN_RULE]}
    )
    problems = lifecycle_differences(s3_lake)
    assert any(p.startswith("rule telemetry-tiers-processed-readings is {") for p in problems)
    assert "rule telemetry-tiers-raw-readings is missing" in problems

    result = dg.materialize([lake_lifecycle, lifecycle_matches], resources={"lake": s3_lake})
    assert result.success
    meta = result.asset_materializations_for_node(lake_lifecycle.op.name)[0].metadata
    assert meta["rules"].value == len(OUR_RULE_IDS)
    assert meta["other_rules_kept"].value == 1
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    processed = _ours(current_rules(s3_lake))["telemetry-tiers-processed-readings"]
    assert processed["Expiration"]["Days"] == 400
    assert {t["StorageClass"] for t in processed["Transitions"]} == {"STANDARD_IA", "GLACIER"}


@pytest.mark.parametrize(
    "drift",
    [
        pytest.param({"AbortIncompleteMultipartUpload": None}, id="no-multipart-abort"),
        pytest.param({"Filter": {"Prefix": "_staging/"}}, id="prefix-outside-the-lake-root"),
        pytest.param({"Expiration": {"Days": 30}}, id="expires-later"),
    ],
)
def test_staging_rule_drift_is_reported_and_repaired(s3_lake: S3Lake, drift: dict):
    good = {
        "ID": STAGING_RULE,
        "Filter": {"Prefix": "lake/_staging/"},
        "Status": "Enabled",
        "Expiration": {"Days": 1},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    drifted = {k: v for k, v in {**good, **drift}.items() if v is not None}
    apply_lifecycle(s3_lake)
    others = [r for r in current_rules(s3_lake) if r["ID"] != STAGING_RULE]
    s3_lake.aws.client("s3").put_bucket_lifecycle_configuration(
        Bucket=s3_lake.bucket_name, LifecycleConfiguration={"Rules": [*others, drifted, FOREIGN_RULE]}
    )
    problems = lifecycle_differences(s3_lake)
    assert len(problems) == 1 and problems[0].startswith(f"rule {STAGING_RULE} is {{"), problems

    failing = dg.materialize([lake_lifecycle, lifecycle_matches], resources={"lake": s3_lake},
                             selection=dg.AssetSelection.checks(lifecycle_matches))  # fmt: skip
    [check] = failing.get_asset_check_evaluations()
    assert not check.passed

    result = dg.materialize([lake_lifecycle, lifecycle_matches], resources={"lake": s3_lake})
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    rules = current_rules(s3_lake)
    assert _ours(rules)[STAGING_RULE] == good
    assert [r for r in rules if r["ID"] == "logs-expire"] == [FOREIGN_RULE]


def test_bad_retention_setting_is_named(s3_lake: S3Lake, monkeypatch):
    monkeypatch.setenv("PLATFORM_TELEMETRY_RAW_RETENTION_DAYS", "ninety")
    with pytest.raises(ValueError, match="PLATFORM_TELEMETRY_RAW_RETENTION_DAYS='ninety'"):
        apply_lifecycle(s3_lake)
    monkeypatch.setenv("PLATFORM_TELEMETRY_RAW_RETENTION_DAYS", "0")
    with pytest.raises(ValueError, match="must be a positive number of days"):
        apply_lifecycle(s3_lake)


def test_bootstrap_puts_the_lifecycle_on_the_lake_bucket(local_aws, s3_bucket):
    s3 = local_aws.client("s3")
    s3.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [FOREIGN_RULE]})
    ensure_bucket_fanout(local_aws, s3_bucket, f"{s3_bucket}-events", [f"{s3_bucket}-landing"])
    rules = s3.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert "logs-expire" in {r["ID"] for r in rules}
    ours = _ours(rules)
    assert ours["telemetry-tiers-processed-readings"]["Filter"]["Prefix"] == "processed/telemetry/readings/"
    assert ours[STAGING_RULE]["Filter"]["Prefix"] == "_staging/"  # a lake at the bucket's root
    assert set(ours) == OUR_RULE_IDS


# --- local: the archive asset ----------------------------------------------------------------------
def test_archive_compacts_old_days_keeps_recent_and_expires(local_lake, tmp_path):
    rng = random.Random(10)
    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=40), today - timedelta(days=3)
    written: dict[str, list[pa.Table]] = {ds.archived_dataset: [] for ds in TIERED_DATASETS}
    for ds in TIERED_DATASETS:
        for hour, n in ((0, 7), (5, 11), (23, 4)):
            written[ds.archived_dataset].append(
                write_hour(local_lake, ds, old, hour, n, rng, "part-00000.parquet")
            )
        write_hour(local_lake, ds, recent, 2, 9, rng, "part-00000.parquet")
    # The raw sink writes one file per WAL segment: an hour of several files.
    written["raw_readings"].append(write_hour(local_lake, RAW, old, 5, 6, rng, "part-00001.parquet"))
    # Past retention: raw hourly files (90 days) never archived, and an archived processed day.
    expired_raw = today - timedelta(days=95)
    write_hour(local_lake, RAW, expired_raw, 1, 3, rng, "part-00000.parquet")
    expired_day = today - timedelta(days=1100)
    local_lake.write_parquet(
        rows_for(Tier.PROCESSED, datetime(2020, 1, 1, tzinfo=UTC), 2, rng),
        Tier.ARCHIVED, "telemetry", "processed_readings", LakePartition(expired_day), "part-00000.parquet",
    )  # fmt: skip
    bytes_before = sum(
        o.size
        for ds in TIERED_DATASETS
        for o in local_lake.list_objects(ds.prefix)
        if f"/{LakePartition(old).path}/" in o.key
    )

    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    result = dg.materialize([archive], resources={"lake": local_lake})
    assert result.success
    meta = result.asset_materializations_for_node(archive.op.name)[0].metadata
    total_rows = sum(t.num_rows for ts in written.values() for t in ts)
    assert meta["days_compacted"].value == 3
    assert meta["rows"].value == total_rows
    assert meta["bytes_before"].value == bytes_before
    assert meta["bytes_after"].value > 0
    assert meta["days_expired"].value == 2

    for ds in TIERED_DATASETS:
        assert hourly_keys(local_lake, ds, old) == []  # compacted: originals gone
        assert len(hourly_keys(local_lake, ds, recent)) == 1  # recent: untouched
        archived = local_lake.read_parquet(
            Tier.ARCHIVED, "telemetry", ds.archived_dataset, LakePartition(old)
        )
        assert row_set(archived) == row_set(pa.concat_tables(written[ds.archived_dataset]))
    assert hourly_keys(local_lake, RAW, expired_raw) == []
    assert not local_lake.exists(archived_key(RAW, expired_raw))
    assert not local_lake.exists(archived_key(PROCESSED, expired_day))

    # The archived tier is queryable: the views see the archived and the recent rows.
    assert dg.materialize([sql_tables_asset], resources={"lake": local_lake, "warehouse": warehouse}).success
    by_day = warehouse.query(
        "SELECT year, month, day, count(*) AS n FROM archived_telemetry_processed_readings GROUP BY ALL"
    ).to_pylist()
    assert by_day == [{"year": old.year, "month": old.month, "day": old.day, "n": 22}]
    assert warehouse.query("SELECT count(*) AS n FROM processed_telemetry_readings").to_pylist() == [{"n": 9}]
    raw_old = warehouse.query(
        f"SELECT count(*) AS n FROM archived_telemetry_raw_readings WHERE day = {old.day} AND month = {old.month}"
    )
    assert raw_old.to_pylist() == [{"n": len(pa.concat_tables(written["raw_readings"]))}]

    # Nothing left to do: a second run compacts nothing.
    again = dg.materialize([archive], resources={"lake": local_lake})
    assert again.asset_materializations_for_node(archive.op.name)[0].metadata["days_compacted"].value == 0


def test_rerun_after_a_crash_between_write_and_delete(lake: LakeStorage):
    """The state a crash leaves (archived file written, some or all originals not yet deleted)
    is rebuilt with real files; the re-run must neither lose nor duplicate rows."""
    rng = random.Random(11)
    today = datetime.now(UTC).date()
    old = today - timedelta(days=40)
    hours = {h: write_hour(lake, PROCESSED, old, h, 5 + h, rng, "part-00000.parquet") for h in (1, 2, 3)}
    expected = row_set(pa.concat_tables(hours.values()))
    assert archive_telemetry(lake, today).total("days_compacted") == 1

    # Crash after the archived file was written, before any delete: all originals still there.
    for h, table in hours.items():
        lake.write_parquet(
            table, Tier.PROCESSED, "telemetry", "readings", LakePartition(old, h), "part-00000.parquet"
        )
    report = archive_telemetry(lake, today)
    assert report.total("rows") == sum(t.num_rows for t in hours.values())
    archived = lake.read_parquet(Tier.ARCHIVED, "telemetry", "processed_readings", LakePartition(old))
    assert row_set(archived) == expected
    assert hourly_keys(lake, PROCESSED, old) == []

    # Crash in the middle of the deletes: only hour 2's original is left.
    lake.write_parquet(
        hours[2], Tier.PROCESSED, "telemetry", "readings", LakePartition(old, 2), "part-00000.parquet"
    )
    archive_telemetry(lake, today)
    archived = lake.read_parquet(Tier.ARCHIVED, "telemetry", "processed_readings", LakePartition(old))
    assert row_set(archived) == expected

    # An hour re-processed after it was archived replaces that hour's archived rows.
    redone = rows_for(Tier.PROCESSED, datetime(old.year, old.month, old.day, 3, tzinfo=UTC), 2, rng)
    lake.write_parquet(
        redone, Tier.PROCESSED, "telemetry", "readings", LakePartition(old, 3), "part-00000.parquet"
    )
    archive_telemetry(lake, today)
    archived = lake.read_parquet(Tier.ARCHIVED, "telemetry", "processed_readings", LakePartition(old))
    assert row_set(archived) == row_set(pa.concat_tables([hours[1], hours[2], redone]))


def test_archived_file_without_manifest_is_refused_and_originals_kept(local_lake):
    rng = random.Random(12)
    today = datetime.now(UTC).date()
    old = today - timedelta(days=35)
    write_hour(local_lake, CURATED, old, 4, 3, rng, "part-00000.parquet")
    # An archived file not written by the archive (no manifest): merging it could duplicate rows.
    local_lake.write_parquet(
        rows_for(Tier.CURATED, datetime(old.year, old.month, old.day, 4, tzinfo=UTC), 3, rng),
        Tier.ARCHIVED, "telemetry", "curated_hourly_summary", LakePartition(old), "part-00000.parquet",
    )  # fmt: skip
    with pytest.raises(ArchiveError, match=r"no platform\.archive\.sources manifest"):
        archive_telemetry(local_lake, today)
    assert len(hourly_keys(local_lake, CURATED, old)) == 1


def test_archive_in_s3_only_reports(s3_lake: S3Lake):
    rng = random.Random(13)
    today = datetime.now(UTC).date()
    old = today - timedelta(days=31)
    for h in (0, 1):
        write_hour(s3_lake, RAW, old, h, 4, rng, "part-00000.parquet")
    write_hour(s3_lake, RAW, today - timedelta(days=100), 0, 4, rng, "part-00000.parquet")
    staged = "_staging/telemetry-0badf00d-12345678/raw/part-00000.parquet"
    s3_lake.put_bytes(staged, b"left by a killed run")

    result = dg.materialize([archive], resources={"lake": s3_lake})
    meta = result.asset_materializations_for_node(archive.op.name)[0].metadata
    assert meta["mode"].value == "s3 (report only)"
    assert meta["days_past_archive_age"].value == 2
    assert meta["small_objects"].value == 3  # under 128 KiB: S3 lifecycle leaves them in Standard
    assert meta["days_past_retention"].value == 1  # the lifecycle has not run on it (moto)
    assert meta["staging_prefixes_past_age"].value == 0  # written just now
    assert meta["staging_prefixes_kept_young"].value == 1
    assert "staging_prefixes_removed" not in meta
    assert len(hourly_keys(s3_lake, RAW, old)) == 2  # nothing moved or deleted
    assert s3_lake.list_objects("archived/") == []
    # Two days on (moto's clock cannot be moved), the prefix is past its age: counted, not deleted.
    later = sweep_staging(s3_lake, datetime.now(UTC) + timedelta(days=2), delete=False)
    assert (later.prefixes, later.objects, later.kept_young) == (1, 1, 0)
    assert s3_lake.exists(staged)


def test_unreadable_hourly_file_is_named_and_nothing_is_deleted(local_lake):
    rng = random.Random(14)
    today = datetime.now(UTC).date()
    old = today - timedelta(days=33)
    write_hour(local_lake, RAW, old, 2, 5, rng, "part-00000.parquet")
    bad = f"raw/telemetry/readings/{LakePartition(old, 3).path}/part-00001.parquet"
    local_lake.put_bytes(bad, b"not parquet")
    with pytest.raises(ArchiveError, match=f"{bad} is not readable Parquet"):
        archive_telemetry(local_lake, today)
    assert len(hourly_keys(local_lake, RAW, old)) == 2
    assert not local_lake.exists(archived_key(RAW, old))


# --- local: leftover staging prefixes ----------------------------------------------------------------
def age(lake: LocalLake, key: str, by: timedelta) -> None:
    """Backdate a local lake object (LocalLake.list_objects reports the file's mtime)."""
    when = (datetime.now(UTC) - by).timestamp()
    os.utime(lake.uri(key), (when, when))


def test_archive_sweeps_old_staging_prefixes_and_keeps_fresh_ones(local_lake: LocalLake):
    rng = random.Random(15)
    today = datetime.now(UTC).date()
    # A run killed two days ago: inputs copied in, Spark's output written, its _SUCCESS marker.
    dead = "_staging/telemetry-deadbeef-00000001/"
    dead_keys = [
        f"{dead}raw/raw__telemetry__readings__part-00000.parquet",
        f"{dead}summary/part-00000.parquet",
    ]
    for key in dead_keys:
        local_lake.put_bytes(key, b"staged")
        age(local_lake, key, timedelta(days=2))
    marker = local_lake.uri(f"{dead}summary/_SUCCESS")
    open(marker, "wb").close()
    # A run staging right now: its inputs were copied a while ago, its output is being written.
    live = "_staging/telemetry-1ive0000-00000002/"
    local_lake.put_bytes(f"{live}raw/part-00000.parquet", b"staged")
    age(local_lake, f"{live}raw/part-00000.parquet", timedelta(days=3))
    local_lake.put_bytes(f"{live}summary/part-00000.parquet", b"being written")
    # Just under a day old: not yet past the age.
    recent = "_staging/telemetry-2ecent00-00000003/"
    local_lake.put_bytes(f"{recent}raw/part-00000.parquet", b"staged")
    age(local_lake, f"{recent}raw/part-00000.parquet", timedelta(hours=23))
    # Not staging: a recent hour (inside the archive age) and a checkpoint, both with old mtimes.
    write_hour(local_lake, RAW, today - timedelta(days=3), 4, 5, rng, "part-00000.parquet")
    [hour_key] = hourly_keys(local_lake, RAW, today - timedelta(days=3))
    checkpoint = "raw/telemetry/kinesis_checkpoints/shard-0.json"
    local_lake.put_bytes(checkpoint, b"{}")
    for key in (hour_key, checkpoint):
        age(local_lake, key, timedelta(days=5))

    result = dg.materialize([archive], resources={"lake": local_lake})
    assert result.success
    meta = result.asset_materializations_for_node(archive.op.name)[0].metadata
    assert meta["staging_prefixes_removed"].value == 1
    assert meta["staging_objects_removed"].value == 3  # the two staged files and the _SUCCESS marker
    assert meta["staging_prefixes_kept_young"].value == 2
    assert meta["days_compacted"].value == 0

    assert local_lake.list_objects(dead) == []
    assert not os.path.exists(local_lake.uri(dead))  # the whole folder, hidden names too
    assert [o.key for o in local_lake.list_objects(live)] == [
        f"{live}raw/part-00000.parquet",
        f"{live}summary/part-00000.parquet",
    ]
    assert local_lake.get_bytes(f"{recent}raw/part-00000.parquet") == b"staged"
    assert local_lake.exists(hour_key) and local_lake.exists(checkpoint)

    # Nothing more to collect until the others age.
    again = dg.materialize([archive], resources={"lake": local_lake})
    assert (
        again.asset_materializations_for_node(archive.op.name)[0].metadata["staging_prefixes_removed"].value
        == 0
    )
    # A day and a bit later the live run's prefix would go too, if it were still there.
    later = sweep_staging(local_lake, datetime.now(UTC) + timedelta(days=1, hours=1))
    assert (later.prefixes, later.objects, later.kept_young) == (2, 3, 0)
    assert local_lake.list_objects("_staging/") == []
    assert local_lake.exists(hour_key) and local_lake.exists(checkpoint)
