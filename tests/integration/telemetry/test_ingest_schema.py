"""Schemathesis against the telemetry API's own OpenAPI schema: no 5xx, every error in the one
JSON shape, responses conforming to the documented models (positive and negative cases)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
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

from resources.lake import LocalLake
from services.telemetry_api.app import Limits, create_app
from services.telemetry_api.sink import LocalSink

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 40
# Not positive_data_acceptance: the schema cannot say that a timestamp lies within the last 7 days.
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
def test_schema_fuzz(tmp_path: Path, mode: GenerationMode) -> None:
    sink = LocalSink(LocalLake(root=str(tmp_path / "lake")), tmp_path / "wal", buffer_seconds=3600)
    # The test owns the sink: the ASGI client schemathesis uses runs the app's lifespan unevenly.
    app = create_app(sink, TOKEN, Limits(device_rate=1_000_000), manage_sink=False)
    sink.start()
    statuses: dict[int, int] = {}
    accepted = 0
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} == {"/v1/readings", "/v1/readings/batch", "/health"}
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and operation.path == "/health":
                continue

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def run(case) -> None:
                nonlocal accepted
                response = case.call(headers=AUTH)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.path, case.body, response.text)
                _check_error_shape(response)
                case.validate_response(response, checks=CHECKS)
                if response.status_code == 200 and case.path != "/health":
                    accepted += response.json()["accepted"]

            run()
    finally:
        sink.close()  # flushes every buffer
    print(mode, sorted(statuses.items()))
    assert not any(code >= 500 for code in statuses)
    assert 422 in statuses  # hypothesis' timestamps are mostly outside the 7-day window, refused by name
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "lake").glob("raw/**/part-*.parquet"))
    assert rows == accepted  # whatever was accepted reached the raw tier
    assert accepted > 0 or mode is GenerationMode.NEGATIVE  # the schema's example reading is accepted
