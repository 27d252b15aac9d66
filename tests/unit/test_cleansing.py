from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from assets.migration.cleansing import CleansingError, cleanse
from assets.migration.registry import ColumnRule, Kind, LoadMode, StringRules, TableSpec, load_registry


def spec(
    kind: Kind = Kind.SOURCE, columns: dict[str, dict[str, Any]] | None = None, **rules: Any
) -> TableSpec:
    return TableSpec(
        name="t",
        description="test table",
        source_table="t",
        kind=kind,
        load_mode=LoadMode.OVERWRITE,
        string_rules=StringRules(**rules),
        columns={name: ColumnRule(**rule) for name, rule in (columns or {}).items()},
    )


def mart(rule: dict[str, Any], **rules: Any) -> TableSpec:
    return spec(Kind.MART, {"v": rule}, **rules)


def one_column(values: list[Any], table_spec: TableSpec) -> tuple[list[Any], int]:
    result = cleanse(pa.table({"v": pa.array(values, type=pa.string())}), table_spec)
    return result.table.column("v").to_pylist(), result.invalid_counts.get("v", 0)


# --- string rules ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("rules", "values", "expected"),
    [
        ({}, [" a ", "\tb\n", "", "   ", None, "x y"], ["a", "b", None, None, None, "x y"]),
        ({}, ["N/A", "NULL", "-", " N/A ", "n/a", "--"], [None, None, None, None, "n/a", "--"]),
        ({"trim": False}, [" a ", "", "   "], [" a ", None, "   "]),
        ({"empty_to_null": False}, ["", "  ", "NULL"], ["", "", None]),
        ({"null_tokens": ["?", "없음"]}, ["?", "없음", "N/A", "NULL"], [None, None, "N/A", "NULL"]),
        ({"null_tokens": []}, ["N/A", ""], ["N/A", None]),
        ({"case": "upper"}, [" gold ", "Vip", "홍길동", None], ["GOLD", "VIP", "홍길동", None]),
        ({"case": "lower"}, ["A@B.COM", "MiXeD"], ["a@b.com", "mixed"]),
        ({"case": "upper"}, ["n/a", "N/A"], ["N/A", None]),  # tokens match before the case rule
    ],
)
def test_string_rules(rules, values, expected):
    assert one_column(values, spec(**rules)) == (expected, 0)


def test_column_case_overrides_table_case():
    table = pa.table({"grade": ["Gold"], "email": ["A@B.com"], "note": ["MiXed"]})
    out = cleanse(table, spec(columns={"grade": {"case": "upper"}}, case="lower")).table
    assert out.to_pylist() == [{"grade": "GOLD", "email": "a@b.com", "note": "mixed"}]


def test_source_table_non_string_columns_pass_through():
    table = pa.table(
        {
            "id": pa.array([1, None], pa.int64()),
            "name": pa.array([" Kim ", "N/A"]),
            "amount": pa.array([Decimal("1.50"), None], pa.decimal128(12, 2)),
            "day": pa.array([date(2024, 1, 2), None], pa.date32()),
            "code": pa.array(["007", ""]),
        }
    )
    # Source tables arrive typed: only string rules apply.
    out = cleanse(table, spec())
    assert out.table.schema.types == [pa.int64(), pa.string(), pa.decimal128(12, 2), pa.date32(), pa.string()]
    assert out.table.column_names == ["id", "name", "amount", "day", "code"]
    assert out.table.column("id").equals(table.column("id"))
    assert out.table.column("amount").equals(table.column("amount"))
    assert out.table.column("day").equals(table.column("day"))
    assert out.table.column("name").to_pylist() == ["Kim", None]
    assert out.table.column("code").to_pylist() == ["007", None]
    assert out.invalid_counts == {}


def test_large_string_and_chunked_columns():
    chunked = pa.chunked_array(
        [[" a ", "2024-01-02"], ["NULL", "20240103", "2024-01-02"]], type=pa.large_string()
    )
    table = pa.table({"s": chunked, "d": chunked})
    out = cleanse(table, spec(Kind.MART, {"d": {"type": "date", "formats": ["%Y-%m-%d", "%Y%m%d"]}}))
    assert out.table.column("s").type == pa.large_string()
    assert out.table.column("s").to_pylist() == ["a", "2024-01-02", None, "20240103", "2024-01-02"]
    assert out.table.column("d").to_pylist() == [
        None,
        date(2024, 1, 2),
        None,
        date(2024, 1, 3),
        date(2024, 1, 2),
    ]
    assert out.invalid_counts == {"d": 1}


# --- mart types -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 42 ", 42),
        ("1,234", 1234),
        ("1,234,567", 1234567),
        ("-1,000", -1000),
        ("+5", 5),
        ("007", 7),
        ("-0", 0),
        ("9223372036854775807", 9223372036854775807),
        ("-9223372036854775808", -9223372036854775808),
        ("9223372036854775808", None),
        ("-9223372036854775809", None),
        ("123456789012345678901", None),
        ("1,2x", None),
        ("1.5", None),
        ("1e3", None),
        ("--5", None),
        ("+-5", None),
        ("abc", None),
        (",", None),
    ],
)
def test_int(value, expected):
    assert one_column([value], mart({"type": "int"})) == ([expected], int(expected is None))


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        ("1234.56", 2, Decimal("1234.56")),
        ("1,234.56", 2, Decimal("1234.56")),
        ("-1,234", 2, Decimal("-1234.00")),
        ("+7.1", 2, Decimal("7.10")),
        ("12.340", 2, Decimal("12.34")),  # trailing zeros lose nothing
        (".5", 2, Decimal("0.50")),
        ("5.", 2, Decimal("5.00")),
        ("0007.25", 2, Decimal("7.25")),
        ("12.3", 4, Decimal("12.3000")),
        ("42", 0, Decimal("42")),
        ("9999999999999999.99", 2, Decimal("9999999999999999.99")),
        ("12.345", 2, None),  # would need rounding: invalid, never silently rounded
        ("42.5", 0, None),
        ("99999999999999999", 2, None),  # 17 integer digits do not fit decimal128(18, 2)
        ("1e3", 2, None),
        ("1,2x", 2, None),
        ("12..3", 2, None),
        (".", 2, None),
        ("abc", 2, None),
    ],
)
def test_decimal(value, scale, expected):
    values, invalid = one_column([value], mart({"type": "decimal", "scale": scale}))
    assert (values, invalid) == ([expected], int(expected is None))
    assert expected is None or str(values[0]) == str(expected)  # the declared scale, exactly


DATE_FORMATS = ["%Y-%m-%d", "%Y%m%d"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02", date(2024, 1, 2)),
        ("20240103", date(2024, 1, 3)),
        ("2024-02-29", date(2024, 2, 29)),
        ("2024-2-3", date(2024, 2, 3)),  # unpadded, accepted by strptime
        (" 2024-01-02 ", date(2024, 1, 2)),
        ("2024-13-45", None),
        ("2024-02-30", None),  # Arrow alone would roll this over to 2024-03-01
        ("2023-02-29", None),
        ("2024/01/02", None),
        ("2024-01-02 10:00", None),
        ("02-01-2024", None),
        ("x", None),
    ],
)
def test_date_mixed_formats(value, expected):
    assert one_column([value], mart({"type": "date", "formats": DATE_FORMATS})) == (
        [expected],
        int(expected is None),
    )


@pytest.mark.parametrize(
    ("formats", "expected"),
    [
        (["%d/%m/%Y", "%m/%d/%Y"], [date(2024, 4, 3), date(2024, 1, 13)]),
        (["%m/%d/%Y", "%d/%m/%Y"], [date(2024, 3, 4), date(2024, 1, 13)]),
    ],
)
def test_date_formats_are_tried_in_order(formats, expected):
    assert one_column(["03/04/2024", "13/01/2024"], mart({"type": "date", "formats": formats})) == (
        expected,
        0,
    )


@pytest.mark.parametrize(
    ("value", "formats", "expected"),
    [
        ("2024-01-02 10:11:12", [], datetime(2024, 1, 2, 10, 11, 12)),
        ("2024-01-02T10:11:12", [], datetime(2024, 1, 2, 10, 11, 12)),
        ("2024-01-02 10:11:12.5", [], datetime(2024, 1, 2, 10, 11, 12, 500000)),
        ("2024-01-02 10:11:12.000123", [], datetime(2024, 1, 2, 10, 11, 12, 123)),
        ("2024-01-02", [], datetime(2024, 1, 2)),
        ("2024-01-02 23:59:60", [], None),  # Arrow alone would give the next day
        ("2024-01-02 24:00:00", [], None),
        ("2024-01-02 10:11:12.1234567", [], None),
        ("02-JAN-2024 09:05", ["%d-%b-%Y %H:%M"], datetime(2024, 1, 2, 9, 5)),
        ("20240102 0905", ["%Y%m%d %H%M"], datetime(2024, 1, 2, 9, 5)),
        ("2024-01-02 10:11:12", ["%Y%m%d %H%M"], None),
    ],
)
def test_timestamp(value, formats, expected):
    assert one_column([value], mart({"type": "timestamp", "formats": formats})) == (
        [expected],
        int(expected is None),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, True) for v in ("Y", "y", "1", "true", "TRUE", "True", "T", " t ")],
        *[(v, False) for v in ("N", "n", "0", "false", "FALSE", "F")],
        ("yes", None),
        ("2", None),
        ("Y N", None),
    ],
)
def test_bool(value, expected):
    assert one_column([value], mart({"type": "bool"})) == ([expected], int(expected is None))


def test_bool_custom_values():
    rule = {"type": "bool", "true_values": ["예", "On"], "false_values": ["아니오", "off"]}
    assert one_column(["예", "on", "아니오", "OFF", "Y"], mart(rule)) == ([True, True, False, False, None], 1)


@pytest.mark.parametrize("type_", ["int", "decimal", "date", "timestamp", "bool"])
def test_blanks_and_null_tokens_are_no_value_not_invalid(type_):
    values, invalid = one_column(["", "   ", "N/A", "NULL", "-", None], mart({"type": type_}))
    assert (values, invalid) == ([None] * 6, 0)


def test_typed_columns_ignore_whitespace_even_with_string_rules_off():
    table_spec = mart({"type": "int"}, trim=False, empty_to_null=False)
    assert one_column(["", "   ", " 12 "], table_spec) == ([None, None, 12], 0)


def test_invalid_counts_per_column():
    # 'N/A' is not a null token here, so it is a value that does not parse.
    table_spec = spec(
        Kind.MART,
        {
            "n": {"type": "int"},
            "d": {"type": "date", "formats": DATE_FORMATS},
            "b": {"type": "bool"},
            "amount": {"type": "decimal"},
            "grade": {"type": "string", "case": "upper"},
        },
        null_tokens=["NULL"],
    )
    table = pa.table(
        {
            "n": ["1", "N/A", "1,2x", "", "NULL", None],
            "d": ["2024-13-45", "20240101", "N/A", "2024-01-01", "", "NULL"],
            "b": ["Y", "N", "maybe", "", None, "NULL"],
            "amount": ["1.00", "2", "3", "", "NULL", None],
            "grade": ["a", "N/A", "", "NULL", None, "b"],
        }
    )
    result = cleanse(table, table_spec)
    assert result.invalid_counts == {"n": 2, "d": 2, "b": 1, "amount": 0}
    assert result.table.column("n").to_pylist() == [1, None, None, None, None, None]
    assert result.table.column("grade").to_pylist() == ["A", "N/A", None, None, None, "B"]


def test_mart_schema_and_column_order_from_the_registry():
    (card_db,) = [s for s in load_registry() if s.name == "card_db"]
    table_spec = card_db.table("mart_customer_monthly")
    table = pa.table(
        {
            "phone": ["010-1234-5678", "N/A"],
            "is_vip": ["Y", "n"],
            "base_month": ["2024-01", "2024-02"],
            "total_amount": ["1,234,567.80", "0"],
            "customer_id": ["1,001", "1002"],
            "last_txn_date": ["2024-01-31", "20240229"],
            "grade": [" gold", "silver "],
            "txn_count": ["12", ""],
        }
    )
    result = cleanse(table, table_spec)
    assert result.table.schema == pa.schema(
        [
            ("phone", pa.string()),
            ("is_vip", pa.bool_()),
            ("base_month", pa.string()),
            ("total_amount", pa.decimal128(18, 2)),
            ("customer_id", pa.int64()),
            ("last_txn_date", pa.date32()),
            ("grade", pa.string()),
            ("txn_count", pa.int64()),
        ]
    )
    assert result.table.to_pylist()[0] == {
        "phone": "010-1234-5678",
        "is_vip": True,
        "base_month": "2024-01",
        "total_amount": Decimal("1234567.80"),
        "customer_id": 1001,
        "last_txn_date": date(2024, 1, 31),
        "grade": "GOLD",
        "txn_count": 12,
    }
    assert result.table.column("phone").to_pylist() == ["010-1234-5678", None]
    assert result.table.column("last_txn_date").to_pylist()[1] == date(2024, 2, 29)
    assert result.invalid_counts == {
        "is_vip": 0,
        "total_amount": 0,
        "customer_id": 0,
        "last_txn_date": 0,
        "txn_count": 0,
    }


def test_empty_mart_table_gets_its_types():
    table_spec = spec(Kind.MART, {"n": {"type": "int"}, "d": {"type": "date"}, "b": {"type": "bool"}})
    table = pa.table(
        {"n": pa.array([], pa.string()), "d": pa.array([], pa.string()), "b": pa.array([], pa.string())}
    )
    result = cleanse(table, table_spec)
    assert result.table.schema.types == [pa.int64(), pa.date32(), pa.bool_()]
    assert result.invalid_counts == {"n": 0, "d": 0, "b": 0}


def test_all_null_and_already_typed_mart_columns():
    table = pa.table({"n": pa.array([None, None]), "d": pa.array([date(2024, 1, 2), None], pa.date32())})
    result = cleanse(table, spec(Kind.MART, {"n": {"type": "int"}, "d": {"type": "date"}}))
    assert result.table.schema.types == [pa.int64(), pa.date32()]
    assert result.table.column("d").to_pylist() == [date(2024, 1, 2), None]


def test_mart_column_of_another_type_is_an_error():
    table = pa.table({"n": pa.array([1.5])})
    with pytest.raises(CleansingError, match=r"t\.n: declared int, arrived as double"):
        cleanse(table, spec(Kind.MART, {"n": {"type": "int"}}))


def test_declared_column_missing_from_table_is_named():
    table = pa.table({"a": ["1"]})
    with pytest.raises(CleansingError, match=r"\['txn_count'\]"):
        cleanse(table, spec(Kind.MART, {"a": {"type": "int"}, "txn_count": {"type": "int"}}))


def test_decimal_scale_beyond_precision_is_refused_by_the_registry():
    with pytest.raises(ValueError, match="scale"):
        mart({"type": "decimal", "scale": 19})


def test_a_type_on_a_source_table_is_refused_by_the_registry():
    with pytest.raises(ValueError, match="only restored for mart tables"):
        spec(columns={"code": {"type": "int"}})
