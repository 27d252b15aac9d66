"""The store-sales domain's Definitions: the 30-minute window asset, its checks and the automation
sensor that evaluates its condition in the code server.

The windows read the shop's CDC tables; a CDC mapping without them (a team's own mapping, a test's)
gives an empty domain, not a code location that fails to load.
"""

import dagster as dg

from assets.cdc.mapping import load_mapping
from assets.store_sales.windows import CLUSTER, SOURCES


def build() -> dg.Definitions:
    mapping = load_mapping()
    try:
        tables = [mapping.by_target(f"{CLUSTER}.{name}") for name in SOURCES]
    except KeyError:
        return dg.Definitions()
    if not all(t.spec.enabled for t in tables):
        return dg.Definitions()
    from assets.store_sales.assets import store_sales_30min
    from assets.store_sales.automation import window_automation_sensor

    sensor = window_automation_sensor(dg.AssetSelection.assets(store_sales_30min))
    return dg.Definitions(assets=[store_sales_30min], sensors=[sensor])


defs = build()
