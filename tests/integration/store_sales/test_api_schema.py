"""Schemathesis against the store API's own OpenAPI schema: no 5xx, errors in the one JSON shape,
responses conforming to the documented models (positive and negative cases, a bounded number each)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from schemathesis import GenerationMode

from assets.store_sales import serving
from resources.cache import RedisCache
from resources.warehouse.duckdb import DuckDBWarehouse
from services.store_api.app import create_app
from tests.support.schemathesis_api import bearer, fuzz_operations, load_operations

from .conftest import TABLE, W0, make_row, window_table

TOKEN = "schema-test-token"
EXAMPLES = 75
# The schema cannot say that start < end, that a range spans at most 7 days or that a time falls
# on minute 00 or 30, so a schema-valid request may rightly get 422 (see CHECKS in the helper).


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz(cache: RedisCache, warehouse: DuckDBWarehouse, mode: GenerationMode) -> None:
    rows = [
        make_row(s, W0 + timedelta(minutes=30 * k), f"{s * 10 + k}.50") for s in (1, 2, 3) for k in range(3)
    ]
    warehouse.load(TABLE, window_table(rows))
    serving.publish_window(cache, W0, [r for r in rows if r["window_start"] == W0])
    app = create_app(cache=cache, warehouse=warehouse, token=TOKEN, warehouse_timeout=2)

    operations = load_operations(app)
    assert len(operations) == 4
    statuses = fuzz_operations(operations, mode=mode, headers=bearer(TOKEN), max_examples=EXAMPLES)
    assert 500 not in statuses and 503 not in statuses
    assert any(code < 300 for code in statuses) or mode is GenerationMode.NEGATIVE, statuses
