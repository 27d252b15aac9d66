"""The lake_ops domain's Definitions."""

import dagster as dg

from assets.lake_ops.assets import lake_inventory, lake_paths_follow_conventions, landing_arrivals
from assets.lake_ops.sensors import landing_events_sensor, landing_listing_sensor

defs = dg.Definitions(
    assets=[landing_arrivals, lake_inventory],
    asset_checks=[lake_paths_follow_conventions],
    sensors=[landing_listing_sensor, landing_events_sensor],
)
