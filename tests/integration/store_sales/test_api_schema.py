"""Schemathesis against the store API's own OpenAPI schema: no 5xx, errors in the one JSON shape,
responses conforming to the documented models (positive and negative cases, a bounded number each)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from assets.store_sales import serving
from resources.cache import RedisCache
from resources.warehouse.duckdb import DuckDBWarehouse
from services.store_api.app import create_app

from .conftest import TABLE, W0, make_row, window_table

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 75
# Not positive_data_acceptance: the schema cannot say that start < end, that a range spans at most
# 7 days or that a time falls on minute 00 or 30, so a schema-valid request may rightly get 422.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _check_error_shape(response) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"].get("parameter") is None or isinstance(body["error"]["parameter"], str)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz(cache: RedisCache, warehouse: DuckDBWarehouse, mode: GenerationMode) -> None:
    rows = [
        make_row(s, W0 + timedelta(minutes=30 * k), f"{s * 10 + k}.50") for s in (1, 2, 3) for k in range(3)
    ]
    warehouse.load(TABLE, window_table(rows))
    serving.publish_window(cache, W0, [r for r in rows if r["window_start"] == W0])
    app = create_app(cache=cache, warehouse=warehouse, token=TOKEN, warehouse_timeout=2)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    statuses: dict[int, int] = {}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.path == "/health":
            continue  # no parameters: nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case) -> None:
            response = case.call(headers=AUTH)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.path, case.path_parameters, case.query, response.text)
            _check_error_shape(response)
            case.validate_response(response, checks=CHECKS)

        run()
    print(mode, sorted(statuses.items()))
    assert 500 not in statuses and 503 not in statuses
    assert any(code < 300 for code in statuses) or mode is GenerationMode.NEGATIVE, statuses
