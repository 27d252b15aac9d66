"""assets.cdc.types: Arrow types and value conversions of captured MySQL/MariaDB columns."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from assets.cdc.mapping import ColumnSpec
from assets.cdc.types import (
    SourceColumn,
    TypeConversionError,
    UnsupportedColumnType,
    conversion,
    conversions,
    enum_members,
)


def col(column_type: str, data_type: str | None = None, **kw) -> SourceColumn:
    data_type = data_type or column_type.split("(")[0].split()[0]
    return SourceColumn("c", data_type, column_type, **kw)


def convert(column: SourceColumn, values: list, spec: ColumnSpec | None = None) -> pa.Array:
    conv = conversion(column, spec, where="main.db.t")
    return conv.array([conv.convert(v) for v in values])


def test_bit1_and_tinyint1_are_booleans_from_every_representation() -> None:
    bit = convert(col("bit(1)", numeric_precision=1), ["0", "1", 0, 1, b"\x00", b"\x01", None])
    assert bit.type == pa.bool_()
    assert bit.to_pylist() == [False, True, False, True, False, True, None]
    tiny = convert(col("tinyint(1)"), [0, 1, -1, 5, None])
    assert tiny.type == pa.bool_()
    assert tiny.to_pylist() == [False, True, True, True, None]
    # tinyint(3) is a number, not a flag
    assert convert(col("tinyint(3)"), [-128, 127]).type == pa.int8()


def test_wider_bits_are_integers() -> None:
    arr = convert(col("bit(10)", numeric_precision=10), ["1000000001", b"\x02\x01", 7])
    assert arr.type == pa.int64()
    assert arr.to_pylist() == [513, 513, 7]
    top = convert(col("bit(64)", numeric_precision=64), ["1" * 64])
    assert top.to_pylist() == [Decimal(2**64 - 1)]


@pytest.mark.parametrize(
    ("column_type", "arrow_type", "value"),
    [
        ("tinyint(4) unsigned", pa.int16(), 255),
        ("smallint(6)", pa.int16(), -32768),
        ("smallint(5) unsigned", pa.int32(), 65535),
        ("mediumint(9)", pa.int32(), -8388608),
        ("int(11)", pa.int32(), -(2**31)),
        ("int(10) unsigned", pa.int64(), 2**32 - 1),
        ("bigint(20)", pa.int64(), -(2**63)),
        ("bigint(20) unsigned", pa.decimal128(20, 0), 2**64 - 1),
    ],
)
def test_integers_fit_their_range(column_type: str, arrow_type: pa.DataType, value: int) -> None:
    arr = convert(col(column_type), [value])
    assert arr.type == arrow_type
    assert int(arr[0].as_py()) == value


def test_decimals_exact_and_wide_decimals_as_text() -> None:
    arr = convert(
        col("decimal(18,4)", numeric_precision=18, numeric_scale=4),
        [Decimal("12.5"), Decimal("-99999999999999.9999")],
    )
    assert arr.type == pa.decimal128(18, 4)
    assert arr.to_pylist() == [Decimal("12.5000"), Decimal("-99999999999999.9999")]
    big = Decimal("12345678901234567890123456789012345678.123456789012")
    assert convert(
        col("decimal(38,0)", numeric_precision=38, numeric_scale=0), [Decimal(10**37 * 9)]
    ).to_pylist() == [Decimal(10**37 * 9)]
    wide = convert(
        col("decimal(50,12)", numeric_precision=50, numeric_scale=12), [big, Decimal("0E-12"), Decimal("1.5")]
    )
    assert wide.type == pa.string()
    assert wide.to_pylist() == [str(big), "0.000000000000", "1.500000000000"]
    with pytest.raises(TypeConversionError, match=r"main\.db\.t\.c.*more than 4 decimal places"):
        convert(col("decimal(18,4)", numeric_precision=18, numeric_scale=4), [Decimal("1.00001")])


def test_floats() -> None:
    assert convert(col("float"), [1.5]).type == pa.float32()
    assert convert(col("double"), [0.1]).to_pylist() == [0.1]


def test_dates_times_and_zero_dates() -> None:
    d = convert(col("date"), [date(2024, 2, 29), "0000-00-00", datetime(2024, 1, 2, 3, 4)])
    assert d.type == pa.date32()
    assert d.to_pylist() == [date(2024, 2, 29), None, date(2024, 1, 2)]
    t = convert(
        col("time(6)"),
        [timedelta(hours=-838, minutes=-59), timedelta(hours=30, microseconds=5), "-01:02:03.5"],
    )
    assert t.type == pa.duration("us")
    assert t.to_pylist() == [
        timedelta(hours=-838, minutes=-59),
        timedelta(hours=30, microseconds=5),
        -timedelta(hours=1, minutes=2, seconds=3, microseconds=500000),
    ]
    dt = convert(col("datetime(6)"), [datetime(2024, 5, 6, 7, 8, 9, 123456), "0000-00-00 00:00:00"])
    assert dt.type == pa.timestamp("us")
    assert dt.to_pylist() == [datetime(2024, 5, 6, 7, 8, 9, 123456), None]


def test_timestamps_are_utc_whatever_their_form() -> None:
    seoul = timezone(timedelta(hours=9))
    ts = convert(
        col("timestamp(3)"),
        [
            datetime(2024, 5, 6, 7, 8, 9, 123000),  # naive: UTC (mysql-replication's utcfromtimestamp)
            datetime(2024, 5, 6, 16, 8, 9, 123000, tzinfo=seoul),  # aware in another zone
            datetime(1970, 1, 1),  # the zero timestamp as mysql-replication decodes it
        ],
    )
    assert ts.type == pa.timestamp("us", tz="UTC")
    expected = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    assert ts.to_pylist() == [expected, expected, None]


def test_year_strings_sets_json_binary() -> None:
    assert convert(col("year(4)"), [2024, 1900, 0]).to_pylist() == [2024, None, None]
    s = convert(col("set('b','a','c')"), [{"a", "b"}, "b,a", {"c"}])
    assert s.to_pylist() == ["b,a", "b,a", "c"]
    assert convert(col("enum('x','y')"), ["y"]).to_pylist() == ["y"]
    assert convert(col("varchar(10)"), ["한글", b"ab"]).to_pylist() == ["한글", "ab"]
    mariadb_json = col("longtext", is_json=True)
    j = convert(mariadb_json, ['{"b": 1, "a": [1, 2.5, "x"]}', b'{"z":null}', {b"k": [1, {"y": 2, "x": 1}]}])
    # MariaDB's text as stored; MySQL's decoded JSON as MySQL prints it (keys by length, then bytes).
    assert j.to_pylist() == ['{"b": 1, "a": [1, 2.5, "x"]}', '{"z":null}', '{"k": [1, {"x": 1, "y": 2}]}']
    assert convert(mariadb_json, [{"bb": 1, "a": 2, "c": None}]).to_pylist() == [
        '{"a": 2, "c": null, "bb": 1}'
    ]
    assert json.loads(j[0].as_py()) == {"a": [1, 2.5, "x"], "b": 1}
    assert convert(col("longtext"), ['{"b": 1}']).to_pylist() == ['{"b": 1}']  # not JSON: as is
    b = convert(col("varbinary(8)"), [b"\x00\xff", "ab"])
    assert b.type == pa.binary()
    assert b.to_pylist() == [b"\x00\xff", b"ab"]


def test_overrides_win() -> None:
    flag = convert(col("tinyint(4)"), [0, 2], ColumnSpec(type="boolean"))
    assert flag.to_pylist() == [False, True]
    assert convert(col("bit(1)", numeric_precision=1), ["1"], ColumnSpec(type="integer")).to_pylist() == [1]
    dec = convert(col("varchar(20)"), ["12.30"], ColumnSpec(type="decimal", precision=10, scale=2))
    assert dec.type == pa.decimal128(10, 2)
    assert dec.to_pylist() == [Decimal("12.30")]
    text = convert(
        col("decimal(10,2)", numeric_precision=10, numeric_scale=2),
        [Decimal("1.50")],
        ColumnSpec(type="string"),
    )
    assert text.to_pylist() == ["1.50"]
    assert convert(col("text"), ['{"b":2,"a":1}'], ColumnSpec(type="json")).to_pylist() == ['{"b":2,"a":1}']
    with pytest.raises(TypeConversionError, match=r"Expecting"):
        convert(col("text"), ["{oops"], ColumnSpec(type="json"))
    assert convert(col("varchar(30)"), ["2024-01-02 03:04:05"], ColumnSpec(type="timestamp")).to_pylist() == [
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    ]


def test_errors_name_the_column_and_type() -> None:
    with pytest.raises(UnsupportedColumnType, match=r"main\.db\.t\.c: source type 'geometry'"):
        conversion(col("geometry"), where="main.db.t")
    with pytest.raises(
        TypeConversionError, match=r"main\.db\.t\.c: value 'maybe' cannot be converted to bool"
    ):
        convert(col("tinyint(1)"), ["maybe"])
    with pytest.raises(TypeConversionError, match=r"converts columns \['nope'\]"):
        conversions([col("int(11)")], {"nope": ColumnSpec(type="boolean")}, where="main.db.t")


def test_enum_members_with_quotes() -> None:
    assert enum_members("enum('a','it''s','c,d')") == ["a", "it's", "c,d"]


BULK_CASES = [
    ("bigint(20)", {}, [1, None, -(2**63), 2**63 - 1]),
    ("int(11)", {}, [7, None]),
    ("bit(1)", {"numeric_precision": 1}, ["0", "1", None]),
    ("tinyint(1)", {}, [0, 1, None]),
    (
        "decimal(18,4)",
        {"numeric_precision": 18, "numeric_scale": 4},
        [Decimal("1.5"), Decimal("-0.0001"), None],
    ),
    ("double", {}, [1.25, None]),
    ("date", {}, [date(2000, 1, 31), None]),
    ("time", {}, [timedelta(hours=-12), None]),
    ("datetime(6)", {"data_type": "datetime"}, [datetime(2024, 2, 29, 23, 59, 59, 123456), None]),
    ("timestamp(3)", {"data_type": "timestamp"}, [datetime(2024, 5, 6, 7, 8, 9, 123000), None]),
    ("varchar(10)", {}, ["a", "한글", None]),
    ("json", {}, ['{"b": [1, 2], "a": "x"}', "[]", "NaN", None]),
    ("varbinary(4)", {}, [b"\x00\x01", None]),
    ("year", {}, [2024, None]),
]


@pytest.mark.parametrize(("column_type", "kw", "values"), BULK_CASES)
def test_bulk_conversion_is_the_per_value_one(column_type: str, kw: dict, values: list) -> None:
    conv = conversion(col(column_type, **kw), where="main.db.t")
    assert conv.fast is not None and conv.fast(values) is not None  # binlog values take the bulk path
    assert conv.to_array(values).equals(conv.array([conv.convert(v) for v in values]))


@pytest.mark.parametrize(
    ("column_type", "kw", "values"),
    [
        ("tinyint(1)", {}, [0, 5, -1, "1", True]),  # not 0/1: value by value
        ("bit(1)", {"numeric_precision": 1}, [b"\x01", " 1", "0"]),
        ("int(11)", {}, [1, Decimal(2), 3.0, "4"]),  # mixed representations
        ("datetime", {}, [datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=9))), date(2024, 1, 2)]),
        ("timestamp", {}, [datetime(1970, 1, 1), datetime(2024, 1, 1)]),  # the zero timestamp: null
        ("date", {}, [datetime(2024, 1, 1, 5), "0000-00-00"]),
        ("year", {}, [0, 1900, 2024]),
    ],
)
def test_bulk_conversion_falls_back_value_by_value(column_type: str, kw: dict, values: list) -> None:
    conv = conversion(col(column_type, **kw), where="main.db.t")
    assert conv.to_array(values).equals(conv.array([conv.convert(v) for v in values]))


def test_bulk_conversion_errors_name_the_column() -> None:
    dec = conversion(col("decimal(6,2)", numeric_precision=6, numeric_scale=2), where="main.db.t")
    with pytest.raises(TypeConversionError, match=r"main\.db\.t\.c.*decimal places"):
        dec.to_array([Decimal("1.00"), Decimal("1.001")])
    with pytest.raises(TypeConversionError, match="does not fit"):
        dec.to_array([Decimal("10000.00")])
    js = conversion(col("json"), where="main.db.t")
    with pytest.raises(TypeConversionError, match=r"main\.db\.t\.c"):
        js.to_array(['{"a": 1}', "{not json"])
