"""Fixtures of the store-sales serving tests: a RedisCache under the test's own prefix, a temporary
DuckDB warehouse, and window rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from resources.cache import RedisCache
from resources.warehouse.duckdb import DuckDBWarehouse

LOCAL = "redis://127.0.0.1:6379/0"
TABLE = "store_sales.store_sales_30min"
W0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
COMPUTED = datetime(2024, 5, 1, 10, 31, 5, tzinfo=UTC)


def make_row(store_id: int, start: datetime, net: str = "100.00", version: int = 0, **extra: Any) -> dict:
    """A window row; `version` goes into late_changes (the marker of a publish)."""
    row = {
        "store_id": store_id,
        "window_start": start,
        "window_end": start + timedelta(minutes=30),
        "net_sales": Decimal(net),
        "gross_sales": Decimal(net) + Decimal("5.00"),
        "refund_amount": Decimal("5.00"),
        "refund_count": 1,
        "order_count": 4,
        "product_count": 9,
        "avg_basket": ((Decimal(net) + Decimal("5.00")) / 4).quantize(Decimal("0.01")),
        "late_changes": version,
        "computed_at": COMPUTED,
    }
    row.update(extra)
    return row


def window_table(rows: list[dict]) -> pa.Table:
    """Rows as the warehouse table holds them (decimals, UTC timestamps)."""
    money = pa.decimal128(18, 2)
    ts = pa.timestamp("us", tz="UTC")
    schema = pa.schema(
        [
            ("store_id", pa.int32()),
            ("window_start", ts),
            ("window_end", ts),
            ("net_sales", money),
            ("gross_sales", money),
            ("refund_amount", money),
            ("refund_count", pa.int32()),
            ("order_count", pa.int32()),
            ("product_count", pa.int32()),
            ("avg_basket", money),
            ("late_changes", pa.int32()),
            ("computed_at", ts),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture
def cache(redis_prefix: str) -> Iterator[RedisCache]:
    c = RedisCache(url=LOCAL, key_prefix=redis_prefix)
    yield c
    c.client().close()


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"), lock_timeout=5)
