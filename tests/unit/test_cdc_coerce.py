"""Conversions of change-file columns to the tables' types (assets.cdc.coerce)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest

from assets.cdc.coerce import CoerceError, coerce_array, commit_timestamps, plan_cast, spec_type, storage_type
from assets.cdc.mapping import ColumnSpec


@pytest.mark.parametrize(
    "values",
    [
        pa.array(["1", "0", None, "true", "FALSE"]),
        pa.array([b"\x01", b"\x00", None, b"\x01", b"\x00"]),
        pa.array([1, 0, None, 1, 0], pa.int8()),
        pa.array([True, False, None, True, False]),
    ],
)
def test_bits_and_flags_become_booleans(values: pa.Array) -> None:
    assert coerce_array(values, pa.bool_(), "vip").to_pylist() == [True, False, None, True, False]


@pytest.mark.parametrize(
    ("values", "example"),
    [(pa.array(["1", "2"]), "2"), (pa.array([0, 5]), 5), (pa.array([b"\x01", b"\x02"]), b"\x02")],
)
def test_a_flag_out_of_range_names_column_and_value(values: pa.Array, example: object) -> None:
    with pytest.raises(CoerceError, match="column 'vip'") as info:
        coerce_array(values, pa.bool_(), "vip")
    assert info.value.example == example


def test_decimals_from_text_and_doubles_are_exact() -> None:
    target = pa.decimal128(10, 2)
    assert coerce_array(pa.array([" 1.10", "-2.5", None]), target, "price").to_pylist() == [
        Decimal("1.10"),
        Decimal("-2.50"),
        None,
    ]
    # A double is read as the text MySQL printed (0.29 is 0.28999... in binary), never rounded:
    # 2.675 has more digits than the column's scale: a bad value, not 2.67 or 2.68.
    assert coerce_array(pa.array([0.29, 0.1]), target, "price").to_pylist() == [
        Decimal("0.29"),
        Decimal("0.10"),
    ]
    with pytest.raises(CoerceError, match=r"2\.675"):
        coerce_array(pa.array([2.675]), target, "price")
    with pytest.raises(CoerceError, match=r"'1\.234'"):
        coerce_array(pa.array(["1.0", "1.234"]), target, "price")
    with pytest.raises(CoerceError, match="'price'"):
        coerce_array(pa.array(["12345678901.00"]), target, "price")


def test_json_and_timestamps() -> None:
    doc = pa.array(['{"a":1}'], pa.json_())
    assert coerce_array(doc, pa.string(), "doc").to_pylist() == ['{"a":1}']
    naive = pa.array([datetime(2026, 1, 1, 12)], pa.timestamp("ms"))
    assert coerce_array(naive, pa.timestamp("us", tz="UTC"), "ts").to_pylist() == [
        datetime(2026, 1, 1, 12, tzinfo=UTC)
    ]
    aware = pa.array([datetime(2026, 1, 1, 12, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    assert coerce_array(aware, pa.timestamp("us"), "ts").to_pylist() == [datetime(2026, 1, 1, 12)]
    with pytest.raises(CoerceError, match="'ts'"):
        coerce_array(pa.array([1001], pa.timestamp("ns")), pa.timestamp("us"), "ts")  # would lose nanoseconds


def test_commit_timestamps_from_any_writer() -> None:
    at = datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC)
    expected = [at]
    assert (
        commit_timestamps(pa.array([at.replace(tzinfo=None)], pa.timestamp("us")), 1).to_pylist() == expected
    )
    assert commit_timestamps(pa.array(["2026-03-02 10:00:01"]), 1).to_pylist() == expected
    assert commit_timestamps(pa.array(["2026-03-02T12:00:01+02:00"]), 1).to_pylist() == expected
    assert commit_timestamps(None, 2).to_pylist() == [None, None]
    with pytest.raises(CoerceError, match="dms_commit_ts"):
        commit_timestamps(pa.array(["yesterday"]), 1)


@pytest.mark.parametrize(
    ("source", "target", "plan"),
    [
        (pa.int32(), pa.int32(), "same"),
        (pa.int32(), pa.int64(), "coerce"),
        (pa.int64(), pa.int32(), "widen"),
        (pa.string(), pa.int32(), "retype"),
        (pa.int32(), pa.string(), "coerce"),
        (pa.decimal128(12, 2), pa.decimal128(10, 2), "widen"),
        (pa.decimal128(10, 3), pa.decimal128(10, 2), "retype"),
        (pa.string(), pa.decimal128(10, 2), "coerce"),
        (pa.binary(), pa.bool_(), "coerce"),
        (pa.timestamp("us"), pa.timestamp("us", tz="UTC"), "coerce"),
        (pa.string(), pa.timestamp("us"), "retype"),
        (pa.float32(), pa.float64(), "coerce"),
        (pa.float64(), pa.float32(), "widen"),
        (pa.time64("us"), pa.duration("us"), "coerce"),
        (pa.null(), pa.date32(), "coerce"),
    ],
)
def test_plan_cast(source: pa.DataType, target: pa.DataType, plan: str) -> None:
    assert plan_cast(source, target) == plan


def test_time_of_day_as_duration() -> None:
    values = pa.array([3_600_000_000], pa.time64("us"))
    assert coerce_array(values, pa.duration("us"), "t").to_pylist() == [timedelta(hours=1)]


def test_mapping_types_and_new_columns() -> None:
    assert spec_type(ColumnSpec(type="boolean")) == pa.bool_()
    assert spec_type(ColumnSpec(type="decimal", precision=12, scale=2), pa.string()) == pa.decimal128(12, 2)
    assert spec_type(ColumnSpec(type="decimal"), pa.decimal128(9, 3)) == pa.decimal128(9, 3)
    assert spec_type(ColumnSpec(type="decimal", precision=65, scale=4)) == pa.string()
    assert spec_type(ColumnSpec(type="timestamp")) == pa.timestamp("us", tz="UTC")
    assert storage_type(pa.json_()) == pa.string()
    assert storage_type(pa.large_string()) == pa.string()
    assert storage_type(pa.timestamp("ns", tz="UTC")) == pa.timestamp("us", tz="UTC")
