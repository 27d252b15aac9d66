"""lake_ops assets materialized with materialize() on a local lake and on moto S3."""

import random
from datetime import date, datetime

import dagster as dg
import pyarrow as pa

from assets.lake_ops.assets import lake_inventory, lake_paths_follow_conventions, landing_arrivals
from resources.lake import LakePartition, Tier
from resources.lake.paths import dms_object_key
from resources.ledger import FileLedger, FileRef
from resources.warehouse import DuckDBWarehouse
from services.demo_feed import demo_batch, write_one


def test_landing_arrivals_counts_what_landed(lake, tmp_path):
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    day = LakePartition(date(2026, 11, 23), 4)
    rng = random.Random(7)
    sizes = [rng.randint(5, 50) for _ in range(3)]
    for rows in sizes:
        lake.write_parquet(
            demo_batch(datetime(2026, 11, 23, 4), rows, rng), Tier.LANDING, "demo", "events", day
        )
    lake.write_parquet(
        pa.table({"x": [1, 2]}), Tier.LANDING, "demo", "other", LakePartition(date(2026, 11, 24))
    )
    lake.put_bytes(f"landing/demo/events/{day.path}/broken.parquet", b"not parquet")
    # A CDC change file of that day: the CDC domain records its own arrivals, so it is not counted.
    lake.put_bytes(
        dms_object_key("main", "shop", "orders", date(2026, 11, 23), "20261123-0400000000.parquet"),
        b"not read",
    )

    resources = {"lake": lake, "warehouse": warehouse}
    result = dg.materialize([landing_arrivals], resources=resources, partition_key="2026-11-23")
    assert result.success
    meta = result.asset_materializations_for_node(landing_arrivals.op.name)[0].metadata
    assert meta["rows"].value == sum(sizes)
    assert meta["objects"].value == 4  # three files and the broken one, not the CDC file
    assert meta["unreadable_objects"].value == 1
    summary = lake.read_parquet(
        Tier.CURATED, "lake_ops", "landing_arrivals", LakePartition(date(2026, 11, 23))
    )
    assert summary.to_pylist()[0]["rows"] == sum(sizes)

    # Re-running the partition replaces its summary rather than adding a second one.
    assert dg.materialize([landing_arrivals], resources=resources, partition_key="2026-11-23").success
    assert len(lake.parquet_keys(Tier.CURATED, "lake_ops", "landing_arrivals")) == 1

    # The day's four files are in the file ledger, so the sensors do not ask for them again.
    listed = [o for o in lake.list_objects("landing/demo/") if "/day=23/" in o.key]
    refs = [FileRef(o.key, lake.etag(o)) for o in listed]
    assert len(FileLedger(warehouse).applied("lake_ops/landing_arrivals", refs)) == 4


def test_inventory_and_conventions_check(local_lake):
    keys = [write_one(local_lake, rows=10) for _ in range(3)]
    local_lake.write_parquet(pa.table({"x": [1]}), Tier.RAW, "demo", "t", LakePartition(date(2026, 1, 1)))
    local_lake.write_parquet(pa.table({"x": [1]}), Tier.RAW, "demo", "t", LakePartition(date(2026, 1, 2)))

    result = dg.materialize([lake_inventory, lake_paths_follow_conventions], resources={"lake": local_lake})
    assert result.success
    meta = result.asset_materializations_for_node(lake_inventory.op.name)[0].metadata
    assert meta["landing_objects"].value == len(keys)
    assert meta["raw_objects"].value == 2
    inventory = {
        (r["tier"], r["dataset"]): r
        for r in local_lake.read_parquet(Tier.CURATED, "lake_ops", "lake_inventory").to_pylist()
    }
    assert inventory[("raw", "t")]["partitions"] == 2
    assert inventory[("landing", "demo_events")]["objects"] == len(keys)
    [check] = result.get_asset_check_evaluations()
    assert check.passed

    local_lake.put_bytes("raw/demo/t/stray.csv", b"a,b")  # no partition directory: allowed (unpartitioned)
    local_lake.put_bytes("raw/demo/t/month=01/x.parquet", b"x")  # a broken partition path
    result = dg.materialize([lake_inventory, lake_paths_follow_conventions], resources={"lake": local_lake})
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["nonconforming_objects"].value == 1
