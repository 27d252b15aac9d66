"""The telemetry domain's sensors: raw files landing, and the automation of the hours they touch."""

from __future__ import annotations

import dagster as dg

from assets.shared.routes import LakeRoute
from assets.shared.sensors import lake_objects_sensor
from assets.telemetry.assets import raw_readings
from assets.telemetry.partitions import DOMAIN, HOURLY, RAW_DATASET, open_hour_key
from resources.lake import Tier

RAW_ROUTE = LakeRoute(
    asset=raw_readings.key,
    tier=Tier.RAW,
    domain=DOMAIN,
    dataset=RAW_DATASET,
    partition_key=open_hour_key,
    partitions_def=HOURLY,
)

raw_listing_sensor = lake_objects_sensor(
    "telemetry_raw_listing",
    [RAW_ROUTE],
    minimum_interval_seconds=15,
    description="Lists raw/telemetry/readings for new files and records each hour that received some.",
)


def telemetry_automation_sensor(selection: dg.AssetSelection) -> dg.AutomationConditionSensorDefinition:
    """The domain's automation, with its runs tagged so the run queue holds one Spark hour at a time
    (platform/dagster.yaml): a backlog of hours must not start a JVM per hour on a small machine."""
    return dg.AutomationConditionSensorDefinition(
        "telemetry_automation",
        target=selection,
        run_tags={"domain": DOMAIN},
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        description="Processes each hour whose raw readings changed, then updates the devices' latest state.",
    )
