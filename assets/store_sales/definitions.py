"""The store-sales domain's Definitions: the 30-minute window asset, its checks and its sensor."""

import dagster as dg

from assets.store_sales.assets import store_sales_30min
from assets.store_sales.sensors import store_sales_windows_sensor

defs = dg.Definitions(assets=[store_sales_30min], sensors=[store_sales_windows_sensor])
