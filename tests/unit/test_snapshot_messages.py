"""The snapshot request body: what any SQS client sends, and each way it can be unusable."""

import json

import pytest

from services.snapshots.ids import request_id_for_invalid
from services.snapshots.messages import MAX_BODY_BYTES, RequestError, parse_request, request_body


def test_round_trip_and_message_id_default() -> None:
    body = request_body("store_sales_windows", {"day": "2026-11-23", "store_id": 7}, request_id="c-1")
    parsed = parse_request(body, "mid-1")
    assert (parsed.request_id, parsed.report_id, parsed.params) == (
        "c-1",
        "store_sales_windows",
        {"day": "2026-11-23", "store_id": 7},
    )
    # Without a request_id the SQS MessageId names it; without params, the report's defaults.
    bare = parse_request(json.dumps({"report": "cdc_table_status"}), "mid-2")
    assert (bare.request_id, bare.params) == ("mid-2", {})
    assert parse_request(json.dumps({"report": "r", "params": None}), "m").params == {}


@pytest.mark.parametrize(
    ("body", "message", "named_request"),
    [
        ("{report: x", "not JSON", False),
        ("[1, 2]", "must be a JSON object, not list", False),
        ('{"report": "r", "request_id": "has space"}', "request_id 'has space'", False),
        ('{"report": "r", "colour": "red"}', "unknown field(s) ['colour']", True),
        ('{"params": {}}', "field 'report'", True),
        ('{"report": 7}', "field 'report'", True),
        ('{"report": "r", "params": [1]}', "field 'params' must be an object, not list", True),
    ],
)
def test_unusable_bodies_say_why_and_where_the_answer_goes(
    body: str, message: str, named_request: bool
) -> None:
    with pytest.raises(RequestError) as raised:
        parse_request(body, "mid-9")
    assert message in str(raised.value)
    # A body whose request id cannot be read is answered under an id derived from the body, so a
    # redelivery lands on the same FAILED item; otherwise under the request's own id.
    assert raised.value.request_id == ("mid-9" if named_request else request_id_for_invalid(body))


def test_oversized_body_is_refused() -> None:
    body = json.dumps({"report": "r", "params": {"x": "y" * MAX_BODY_BYTES}})
    with pytest.raises(RequestError, match="bytes; at most"):
        parse_request(body, "m")
    with pytest.raises(ValueError, match="request_id"):
        request_body("r", {}, request_id="no spaces allowed")
