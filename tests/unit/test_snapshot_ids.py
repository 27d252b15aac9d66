"""Snapshot ids: deterministic, order-independent, sensitive to every input, safe as keys."""

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.snapshots.ids import (
    SNAPSHOT_ID_PATTERN,
    canonical_params,
    data_version_token,
    is_snapshot_id,
    request_id_for_invalid,
    snapshot_id,
)

PARAMS = {
    "day": date(2026, 3, 1),
    "since": datetime(2026, 3, 1, 6, 30, tzinfo=UTC),
    "stores": ["s-001", "s-002"],
    "limit": 25,
    "threshold": 0.75,
    "region": "서울",  # non-ASCII must work (and stay one canonical form)
}
VERSIONS = {"fleet/anomalies_daily": "1842", "store_sales/sales_window": "77"}

# What a Dagster dynamic partition key, a DynamoDB key and an S3 key all accept without escaping.
KEY_SAFE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def test_same_inputs_same_id_and_the_id_is_key_safe() -> None:
    first = snapshot_id("fleet_anomalies", PARAMS, VERSIONS)
    assert first == snapshot_id("fleet_anomalies", dict(PARAMS), dict(VERSIONS))
    assert KEY_SAFE.fullmatch(first), first
    assert first.startswith("fleet_anomalies-")
    assert is_snapshot_id(first)
    assert SNAPSHOT_ID_PATTERN.fullmatch(first)


def test_parameter_and_version_order_do_not_matter() -> None:
    reversed_params = dict(reversed(list(PARAMS.items())))
    reversed_versions = dict(reversed(list(VERSIONS.items())))
    assert list(reversed_params) != list(PARAMS)  # the test really reorders
    assert canonical_params(reversed_params) == canonical_params(PARAMS)
    assert data_version_token(reversed_versions) == data_version_token(VERSIONS)
    assert snapshot_id("r", reversed_params, reversed_versions) == snapshot_id("r", PARAMS, VERSIONS)


@pytest.mark.parametrize(
    "name, changed",
    [
        ("day", date(2026, 3, 2)),
        ("since", datetime(2026, 3, 1, 6, 30, 1, tzinfo=UTC)),
        ("stores", ["s-002", "s-001"]),  # a list's order is part of its value
        ("stores", ["s-001"]),
        ("limit", 26),
        ("threshold", 0.7500001),
        ("region", "부산"),
    ],
)
def test_any_parameter_change_changes_the_id(name: str, changed: object) -> None:
    assert snapshot_id("r", {**PARAMS, name: changed}, VERSIONS) != snapshot_id("r", PARAMS, VERSIONS)


def test_adding_or_removing_a_parameter_changes_the_id() -> None:
    base = snapshot_id("r", PARAMS, VERSIONS)
    assert snapshot_id("r", {**PARAMS, "extra": None}, VERSIONS) != base
    assert snapshot_id("r", {k: v for k, v in PARAMS.items() if k != "limit"}, VERSIONS) != base


def test_any_version_change_changes_the_id() -> None:
    base = snapshot_id("r", PARAMS, VERSIONS)
    for key in VERSIONS:
        assert snapshot_id("r", PARAMS, {**VERSIONS, key: VERSIONS[key] + "1"}) != base, key
    assert snapshot_id("r", PARAMS, {**VERSIONS, "cdc/table_status": "5"}) != base
    assert snapshot_id("r", PARAMS, {}) != base


def test_the_report_changes_the_id() -> None:
    assert (
        snapshot_id("report_a", PARAMS, VERSIONS).split("-")[-1]
        != snapshot_id("report_b", PARAMS, VERSIONS).split("-")[-1]
    )


def test_the_report_definition_changes_the_id() -> None:
    base = snapshot_id("r", PARAMS, VERSIONS, "0123456789abcdef")
    assert snapshot_id("r", PARAMS, VERSIONS, "0123456789abcdef") == base
    assert snapshot_id("r", PARAMS, VERSIONS, "fedcba9876543210") != base
    assert snapshot_id("r", PARAMS, VERSIONS) != base


def test_parts_cannot_bleed_into_each_other() -> None:
    # The same characters split differently between report, parameters and versions are different.
    assert snapshot_id("ab", {"c": 1}, {}).split("-")[-1] != snapshot_id("a", {"bc": 1}, {}).split("-")[-1]
    assert snapshot_id("r", {"a": "b"}, {"c": "d"}) != snapshot_id("r", {"a": "b", "c": "d"}, {})
    assert data_version_token({"a": "bc"}) != data_version_token({"ab": "c"})
    assert canonical_params({"a": "b,c"}) != canonical_params({"a": "b", "c": None})


def test_canonical_form() -> None:
    text = canonical_params(
        {
            "z": 1,
            "a": 1.0,
            "m": Decimal("1.50"),
            "big": Decimal("1E+2"),
            "when": datetime(2026, 3, 1, 15, 30, tzinfo=timezone(timedelta(hours=9))),
            "naive": datetime(2026, 3, 1, 6, 30),
            "day": date(2026, 3, 1),
            "tags": {"y", "x"},
            "nested": {"b": [1, (2, 3)], "a": True},
            "none": None,
        }
    )
    assert " " not in text
    parsed = json.loads(text)
    assert list(parsed) == sorted(parsed)
    assert parsed["z"] == 1 and isinstance(parsed["z"], int)
    assert parsed["a"] == 1.0 and isinstance(parsed["a"], float)  # 1 and 1.0 stay distinct
    assert canonical_params({"x": 1}) != canonical_params({"x": 1.0})
    assert parsed["m"] == 1.5 and parsed["big"] == 100
    assert canonical_params({"m": Decimal("1.50")}) == canonical_params({"m": Decimal("1.5")})
    assert parsed["when"] == "2026-03-01T06:30:00Z"  # +09:00 normalised to UTC
    assert parsed["naive"] == "2026-03-01T06:30:00Z"  # naive read as UTC
    assert parsed["day"] == "2026-03-01"
    assert parsed["tags"] == ["x", "y"]  # a set is sorted
    assert parsed["nested"] == {"a": True, "b": [1, [2, 3]]}
    assert list(json.loads(text)["nested"]) == ["a", "b"]
    assert parsed["none"] is None


def test_equal_instants_in_different_zones_are_the_same_parameter() -> None:
    utc = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    seoul = utc.astimezone(timezone(timedelta(hours=9)))
    assert snapshot_id("r", {"t": seoul}, VERSIONS) == snapshot_id("r", {"t": utc}, VERSIONS)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"window": object()}, r"parameter window: cannot canonicalise a object"),
        ({"ratio": float("nan")}, r"parameter ratio: nan is not a finite number"),
        ({"ratio": float("inf")}, r"parameter ratio: inf is not a finite number"),
        ({"amount": Decimal("NaN")}, r"parameter amount: .* is not a finite number"),
        ({"stores": ["a", b"b"]}, r"parameter stores\[1\]: cannot canonicalise a bytes"),
        ({"filter": {"x": {1: "a"}}}, r"parameter filter.x: key 1 is not a string"),
        ({3: "x"}, r"parameter name 3 is not a non-empty string"),
        ({"": "x"}, r"parameter name '' is not a non-empty string"),
    ],
)
def test_values_that_cannot_be_canonicalised_are_rejected_by_name(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        canonical_params(params)
    with pytest.raises(ValueError, match=message):
        snapshot_id("r", params, VERSIONS)


def test_parameters_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="parameters must be a mapping of name to value, not list"):
        canonical_params([("a", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "versions, message",
    [
        ({"fleet/x": 3}, r"data version of 'fleet/x' is 3, not a non-empty string"),
        ({"fleet/x": ""}, r"data version of 'fleet/x' is '', not a non-empty string"),
        ({"": "1"}, r"data version key '' is not a non-empty asset key string"),
    ],
)
def test_bad_versions_are_rejected(versions: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data_version_token(versions)


@pytest.mark.parametrize(
    "report_id", ["", "has space", "dots...in", "a/b", "-leading", "x" * 65, "보고서", "semi;colon"]
)
def test_report_ids_that_are_not_key_safe_are_rejected(report_id: str) -> None:
    with pytest.raises(ValueError, match=r"report id .* must be 1-64 letters, digits"):
        snapshot_id(report_id, PARAMS, VERSIONS)


def test_is_snapshot_id_rejects_other_strings() -> None:
    good = snapshot_id("r", PARAMS, VERSIONS)
    assert is_snapshot_id(good)
    for bad in ("r", "request#abc", good + "0", good[:-1], good.upper(), "r-" + "g" * 20, good + "\n"):
        assert not is_snapshot_id(bad), bad


def test_invalid_request_ids_are_deterministic_and_distinct() -> None:
    body = '{"report_id": "fleet_anomalies", "params": {'  # truncated JSON
    first = request_id_for_invalid(body)
    assert first == request_id_for_invalid(body)
    assert first != request_id_for_invalid(body + " ")
    assert first != request_id_for_invalid("")
    assert KEY_SAFE.fullmatch(first)
    assert not is_snapshot_id(first)  # never mistaken for a snapshot's key
    with pytest.raises(ValueError, match="a message body is text, not bytes"):
        request_id_for_invalid(b"{}")  # type: ignore[arg-type]
