"""The warehouse: one interface (base.py), DuckDB here and BigQuery in production.

SQL is written once in DuckDB's dialect (sql.py) and transpiled for BigQuery.
Importing this package loads neither engine's client nor pyarrow.
"""

from resources.warehouse.base import Warehouse
from resources.warehouse.bigquery import BigQueryWarehouse
from resources.warehouse.duckdb import DuckDBWarehouse
from resources.warehouse.sql import merge_sql, to_dialect

__all__ = ["BigQueryWarehouse", "DuckDBWarehouse", "Warehouse", "merge_sql", "to_dialect"]
