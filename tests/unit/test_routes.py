"""Routes: which asset and partition a lake object feeds, by the asset's own partitions."""

import dagster as dg
import pytest

from assets.shared.routes import BucketRoute, LakeRoute, bucket_arrivals, day_of, lake_arrivals
from assets.shared.sensors import batch_run_key
from resources.lake import Tier
from resources.lake.paths import LakePathError

WINDOWS = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/30 * * * *", start="2026-11-01-00:00", fmt="%Y-%m-%d-%H:%M"
)
DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01")
SALES, ORDERS = dg.AssetKey(["sales", "windows"]), dg.AssetKey(["cdc", "orders"])


def test_object_goes_to_the_window_that_holds_it():
    route = LakeRoute(SALES, Tier.LANDING, "shop", "orders", partitions_def=WINDOWS)
    [arrival] = lake_arrivals(
        "landing/shop/orders/year=2026/month=11/day=23/hour=07/minute=30/a.parquet", "e", [route]
    )
    assert arrival.partition_key == "2026-11-23-07:30"
    [early] = lake_arrivals("landing/shop/orders/year=2026/month=11/day=23/hour=07/a.parquet", "e", [route])
    assert early.partition_key == "2026-11-23-07:00"  # an hour path starts in the :00 window


def test_hourly_objects_feed_their_day_and_every_matching_route():
    daily = LakeRoute(ORDERS, Tier.LANDING, "shop", partitions_def=DAILY)
    arrivals_ = LakeRoute(dg.AssetKey("arrivals"), Tier.LANDING, partition_key=day_of)
    key = "landing/shop/orders/year=2026/month=11/day=23/hour=07/a.parquet"
    found = {(a.target, a.partition_key) for a in lake_arrivals(key, "e", [daily, arrivals_])}
    assert found == {(ORDERS, "2026-11-23"), (dg.AssetKey("arrivals"), "2026-11-23")}
    assert lake_arrivals("raw/shop/orders/x.parquet", "e", [daily]) == []  # other tier


def test_unpartitioned_object_for_a_partitioned_asset_is_refused_by_name():
    route = LakeRoute(ORDERS, Tier.LANDING, "shop", partitions_def=DAILY)
    with pytest.raises(LakePathError, match=r"landing/shop/orders/a\.parquet"):
        lake_arrivals("landing/shop/orders/a.parquet", "e", [route])


def test_other_bucket_route_names_objects_by_uri():
    route = BucketRoute(
        lambda: "dms-target", "cdc/shop/", ORDERS, partition_key=lambda k: k.split("/")[3][:8]
    )
    [arrival] = bucket_arrivals("dms-target", "cdc/shop/orders/20261123-0700.parquet", "e", [route])
    assert arrival.ref.identity == "s3://dms-target/cdc/shop/orders/20261123-0700.parquet@e"
    assert arrival.partition_key == "20261123"
    assert bucket_arrivals("elsewhere", "cdc/shop/orders/x.parquet", "e", [route]) == []


def test_batch_run_key_depends_on_the_files_not_their_order():
    route = LakeRoute(ORDERS, Tier.LANDING, "shop", partitions_def=DAILY)
    keys = [f"landing/shop/orders/year=2026/month=11/day=23/f{i}.parquet" for i in range(3)]
    arrivals = [a for k in keys for a in lake_arrivals(k, "e", [route])]
    assert batch_run_key("2026-11-23", arrivals) == batch_run_key("2026-11-23", arrivals[::-1])
    assert batch_run_key("2026-11-23", arrivals) != batch_run_key("2026-11-23", arrivals[:2])
