"""The CDC domain's Definitions, built from the table mapping (platform/catalogs/cdc/)."""

import dagster as dg

from assets.cdc.checks import reconcile_check
from assets.cdc.dashboard import build_dashboard_assets
from assets.cdc.factory import landed_spec, load_assets
from assets.cdc.mapping import load_mapping
from assets.cdc.sensors import events_sensor, listing_sensor


def build(mapping_dir: str | None = None) -> dg.Definitions:
    from pathlib import Path

    mapping = load_mapping(Path(mapping_dir) if mapping_dir else None)
    tables = mapping.enabled
    return dg.Definitions(
        assets=[
            *(landed_spec(t) for t in tables),
            *([load_assets(tables)] if tables else []),
            *build_dashboard_assets(mapping),
        ],
        asset_checks=[reconcile_check(t) for t in tables],
        sensors=[events_sensor(mapping), listing_sensor(mapping)],
    )


defs = build()
