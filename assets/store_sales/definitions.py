"""The store-sales domain's Definitions: the 30-minute window asset, its checks and its sensor.

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
    from assets.store_sales.sensors import store_sales_windows_sensor

    return dg.Definitions(assets=[store_sales_30min], sensors=[store_sales_windows_sensor])


defs = build()
