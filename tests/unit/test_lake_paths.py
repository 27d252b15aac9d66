from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from resources.lake import LakeObject, LakePartition, LakePathError, ListingCursor, Tier, object_key
from resources.lake.paths import is_hidden, parse_key


def test_object_key_and_parse_round_trip():
    partition = LakePartition(date(2026, 3, 9), 7)
    key = object_key(Tier.RAW, "telemetry", "readings", "part-1.parquet", partition)
    assert key == "raw/telemetry/readings/year=2026/month=03/day=09/hour=07/part-1.parquet"
    parsed = parse_key(key)
    assert (parsed.tier, parsed.domain, parsed.dataset, parsed.partition) == (
        Tier.RAW,
        "telemetry",
        "readings",
        partition,
    )
    assert parsed.key == key


def test_unpartitioned_key():
    parsed = parse_key("curated/lake_ops/lake_inventory/inventory.parquet")
    assert parsed.partition is None and parsed.filename == "inventory.parquet"


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("bronze/a/b/x.parquet", "tier 'bronze'"),
        ("raw/Bad-Domain/b/x.parquet", "domain 'Bad-Domain'"),
        ("raw/a/b/year=2026/day=01/x.parquet", "year=2026/day=01"),
        ("raw/a/b/year=2026/month=02/day=30/x.parquet", "day is out of range"),
        ("raw/a/x.parquet", "at least tier/domain/dataset/file"),
    ],
)
def test_bad_keys_name_what_is_wrong(key, names):
    with pytest.raises(LakePathError, match=names):
        parse_key(key)


def test_partition_keys_from_dagster():
    assert LakePartition.from_key("2026-11-23") == LakePartition(date(2026, 11, 23))
    hourly = LakePartition.from_key("2026-11-23-05:00")
    assert hourly == LakePartition(date(2026, 11, 23), 5)
    assert hourly.dagster_key == "2026-11-23-05:00"
    assert hourly.to_day().dagster_key == "2026-11-23"
    with pytest.raises(LakePathError, match="2026/11/23"):
        LakePartition.from_key("2026/11/23")


def test_hidden_names_are_not_data():
    assert is_hidden("raw/a/b/.tmp-123-part.parquet")
    assert is_hidden("raw/a/b/_SUCCESS")
    assert not is_hidden("raw/a/b/part.parquet")
    with pytest.raises(LakePathError):
        object_key(Tier.RAW, "a", "b", ".tmp-x")


def _objs(*specs):
    base = datetime(2026, 11, 23, tzinfo=UTC)
    return [LakeObject(key, 1, base + timedelta(seconds=sec)) for key, sec in specs]


def test_cursor_sees_objects_sharing_the_boundary_time_once():
    cursor = ListingCursor()
    first, cursor = cursor.take_new(_objs(("a", 0), ("b", 1)), limit=10)
    assert [o.key for o in first] == ["a", "b"]
    # 'c' lands in the same second as 'b' after the first listing.
    second, cursor = cursor.take_new(_objs(("a", 0), ("b", 1), ("c", 1)), limit=10)
    assert [o.key for o in second] == ["c"]
    assert cursor.keys_at_last_modified == ["b", "c"]
    third, _ = cursor.take_new(_objs(("a", 0), ("b", 1), ("c", 1)), limit=10)
    assert third == []


def test_cursor_limit_resumes_where_it_stopped():
    objects = _objs(("a", 0), ("b", 1), ("c", 2))
    first, cursor = ListingCursor().take_new(objects, limit=2)
    rest, _ = ListingCursor.from_json(cursor.to_json()).take_new(objects, limit=2)
    assert [o.key for o in first] == ["a", "b"] and [o.key for o in rest] == ["c"]


# --- windows shorter than an hour ----------------------------------------------
THIRTY_MINUTES = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/30 * * * *", start="2026-11-01-00:00", fmt="%Y-%m-%d-%H:%M"
)


def test_thirty_minute_key_round_trips_through_lake_paths():
    for key in THIRTY_MINUTES.get_partition_keys_in_range(
        dg.PartitionKeyRange("2026-11-23-06:30", "2026-11-23-08:00")
    ):
        partition = LakePartition.from_key(key, THIRTY_MINUTES)
        lake_key = object_key(Tier.CURATED, "store_sales", "sales_30min", "part-1.parquet", partition)
        parsed = parse_key(lake_key).partition
        assert parsed == partition
        assert parsed.dagster_key == key
        assert THIRTY_MINUTES.time_window_for_partition_key(key).start == parsed.start


def test_two_windows_of_one_hour_land_in_different_paths():
    first = LakePartition.from_key("2026-11-23-07:00", THIRTY_MINUTES)
    second = LakePartition.from_key("2026-11-23-07:30", THIRTY_MINUTES)
    hourly = LakePartition.from_key(
        "2026-11-23-07:00", dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00")
    )
    paths = {p.path for p in (first, second, hourly)}
    assert paths == {
        "year=2026/month=11/day=23/hour=07/minute=00",
        "year=2026/month=11/day=23/hour=07/minute=30",
        "year=2026/month=11/day=23/hour=07",
    }


def test_partition_key_is_parsed_with_the_definitions_own_format():
    custom = dg.TimeWindowPartitionsDefinition(
        cron_schedule="*/15 * * * *", start="2026-11-01T00:00", fmt="%Y-%m-%dT%H:%M"
    )
    partition = LakePartition.from_key("2026-11-23T07:45", custom)
    assert partition.path.endswith("hour=07/minute=45")
    monthly = LakePartition.from_key("2026-11-01", dg.MonthlyPartitionsDefinition(start_date="2026-01-01"))
    assert monthly == LakePartition(date(2026, 11, 1))
    with pytest.raises(LakePathError, match="2026-11-23-07:45"):
        LakePartition.from_key("2026-11-23-07:45", custom)  # not the definition's format


def test_minute_needs_an_hour_and_bad_minute_paths_are_named():
    with pytest.raises(LakePathError, match="minute"):
        LakePartition(date(2026, 11, 23), None, 30)
    with pytest.raises(LakePathError, match="minute=5"):
        parse_key("raw/a/b/year=2026/month=11/day=23/hour=07/minute=5/x.parquet")
