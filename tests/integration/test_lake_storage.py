"""The lake round trip, in local-directory mode and in S3 mode against moto."""

from datetime import date

import pyarrow as pa
import pytest

from resources.lake import LakePartition, LakePathError, ListingCursor, Tier
from resources.lake.paths import staging_prefix


def test_partition_round_trip(lake):
    day1, day2 = LakePartition(date(2026, 11, 22)), LakePartition(date(2026, 11, 23))
    t1 = pa.table({"id": [1, 2, 3], "name": ["가", "b", None]})
    t2 = pa.table({"id": [4], "name": ["d"]})
    k1 = lake.write_parquet(t1, Tier.RAW, "demo", "things", day1)
    lake.write_parquet(t2, Tier.RAW, "demo", "things", day2)

    assert k1.startswith("raw/demo/things/year=2026/month=11/day=22/part-")
    assert lake.list_partitions(Tier.RAW, "demo", "things") == [day1, day2]
    assert lake.read_parquet(Tier.RAW, "demo", "things", day1).to_pylist() == t1.to_pylist()
    everything = lake.read_parquet(Tier.RAW, "demo", "things").sort_by("id")
    assert everything.column("id").to_pylist() == [1, 2, 3, 4]
    keys = [o.key for o in lake.list_objects("raw/demo/things/")]
    assert len(keys) == 2 and all(".tmp-" not in k for k in keys)


def test_fixed_name_overwrites(lake):
    day = LakePartition(date(2026, 1, 2))
    lake.write_parquet(pa.table({"x": [1]}), Tier.CURATED, "demo", "s", day, "summary.parquet")
    lake.write_parquet(pa.table({"x": [2, 3]}), Tier.CURATED, "demo", "s", day, "summary.parquet")
    assert lake.read_parquet(Tier.CURATED, "demo", "s", day).column("x").to_pylist() == [2, 3]
    assert len(lake.parquet_keys(Tier.CURATED, "demo", "s")) == 1


def test_listing_cursor_returns_only_new_objects(lake):
    day = LakePartition(date(2026, 11, 23), 1)
    lake.write_parquet(pa.table({"x": [1]}), Tier.LANDING, "demo", "e", day)
    new, cursor = lake.list_new_objects("landing/demo/", ListingCursor())
    assert len(new) == 1
    again, cursor = lake.list_new_objects("landing/demo/", cursor)
    assert again == []
    key = lake.write_parquet(pa.table({"x": [2]}), Tier.LANDING, "demo", "e", day)
    later, _ = lake.list_new_objects("landing/demo/", cursor)
    assert [o.key for o in later] == [key]


def test_missing_partition_names_the_location(lake):
    with pytest.raises(FileNotFoundError, match="raw/demo/none"):
        lake.read_parquet(Tier.RAW, "demo", "none")


def test_local_write_leaves_no_temporary_file(local_lake, tmp_path):
    local_lake.put_bytes("raw/demo/x/file.bin", b"abc")
    files = [p.name for p in (tmp_path / "lake" / "raw" / "demo" / "x").iterdir()]
    assert files == ["file.bin"]
    with pytest.raises(ValueError, match="inside the lake"):
        local_lake.put_bytes("../escape", b"x")


def test_copy_object_and_delete_prefix(lake):
    prefix = staging_prefix("job-1")
    lake.put_bytes("raw/demo/a/x.parquet", b"first")
    lake.copy_object("raw/demo/a/x.parquet", f"{prefix}in/x.parquet")
    lake.put_bytes(f"{prefix}out/_SUCCESS", b"")  # hidden names are deleted with the prefix too
    lake.put_bytes(f"{prefix}out/part-0.parquet", b"second")
    lake.put_bytes("_staging/job-10/keep.parquet", b"another job")  # shares the string prefix
    assert lake.get_bytes(f"{prefix}in/x.parquet") == b"first"
    assert [o.key for o in lake.list_objects(prefix)] == [
        f"{prefix}in/x.parquet",
        f"{prefix}out/part-0.parquet",
    ]
    assert [o.key for o in lake.list_objects("raw/")] == ["raw/demo/a/x.parquet"]  # not in a tier

    assert lake.delete_prefix(prefix) == 3
    assert lake.list_objects(prefix) == [] and lake.delete_prefix(prefix) == 0
    assert lake.get_bytes("raw/demo/a/x.parquet") == b"first"
    assert lake.get_bytes("_staging/job-10/keep.parquet") == b"another job"
    with pytest.raises(ValueError, match="ending in '/'"):
        lake.delete_prefix("_staging/job-1")
    with pytest.raises(LakePathError, match="staging job name"):
        staging_prefix("../etc")
