"""The fleet telemetry domain's Definitions."""

import dagster as dg

from assets.telemetry import archive, lifecycle, sql_catalog
from assets.telemetry.assets import processed_and_summary, raw_readings
from assets.telemetry.device_state import device_latest_state
from assets.telemetry.sensors import raw_listing_sensor, telemetry_automation_sensor

_ASSETS = [
    raw_readings,
    processed_and_summary,
    device_latest_state,
    *archive.ASSETS,
    *lifecycle.ASSETS,
    *sql_catalog.ASSETS,
]

defs = dg.Definitions(
    assets=_ASSETS,
    asset_checks=[*lifecycle.CHECKS],
    sensors=[raw_listing_sensor, telemetry_automation_sensor(dg.AssetSelection.assets(*_ASSETS))],
)
