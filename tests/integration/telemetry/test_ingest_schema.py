"""Schemathesis against the telemetry API's own OpenAPI schema: no 5xx, every error in the one
JSON shape, responses conforming to the documented models (positive and negative cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from schemathesis import GenerationMode

from resources.lake import LocalLake
from services.telemetry_api.app import Limits, create_app
from services.telemetry_api.sink import LocalSink
from tests.support.schemathesis_api import bearer, fuzz_operations, load_operations

TOKEN = "schema-test-token"
EXAMPLES = 40
# The schema cannot say that a timestamp lies within the last 7 days (see CHECKS in the helper).


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz(tmp_path: Path, mode: GenerationMode) -> None:
    sink = LocalSink(LocalLake(root=str(tmp_path / "lake")), tmp_path / "wal", buffer_seconds=3600)
    # The test owns the sink: the ASGI client schemathesis uses runs the app's lifespan unevenly.
    app = create_app(sink, TOKEN, Limits(device_rate=1_000_000), manage_sink=False)
    sink.start()
    accepted = 0

    def count_accepted(case: Any, response: Any) -> None:
        nonlocal accepted
        if response.status_code == 200 and case.path != "/health":
            accepted += response.json()["accepted"]

    try:
        operations = load_operations(app)
        assert {op.path for op in operations} == {"/v1/readings", "/v1/readings/batch", "/health"}
        statuses = fuzz_operations(
            operations, mode=mode, headers=bearer(TOKEN), max_examples=EXAMPLES, on_response=count_accepted
        )
    finally:
        sink.close()  # flushes every buffer
    assert not any(code >= 500 for code in statuses)
    assert 422 in statuses  # hypothesis' timestamps are mostly outside the 7-day window, refused by name
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "lake").glob("raw/**/part-*.parquet"))
    assert rows == accepted  # whatever was accepted reached the raw tier
    assert accepted > 0 or mode is GenerationMode.NEGATIVE  # the schema's example reading is accepted
