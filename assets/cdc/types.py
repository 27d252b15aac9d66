"""Types of captured columns: a source column's catalog row -> an Arrow type and a value converter.

The capture (binlog values decoded by mysql-replication) and the full load
(values read by pymysql) both convert through here, so one column lands with
one type whichever way it was read. Defaults per MySQL/MariaDB type:

    bit(1), tinyint(1)            bool      (bit arrives as '0'/'1', ints or bytes)
    bit(n)                        int64     (bit(64): decimal(20,0), it can exceed int64)
    tinyint .. bigint             the smallest signed int that holds the range
                                  (unsigned bigint: decimal(20,0): BigQuery has no uint64)
    decimal(p,s)                  decimal128(p,s); p > 38: string, exact (plain notation)
    float / double                float32 / float64
    date                          date32    (zero dates '0000-00-00' -> null)
    time                          duration('us'): MySQL TIME spans -838:59:59..838:59:59,
                                  a time of day (time64) cannot hold that
    datetime                      timestamp('us') naive (a wall-clock reading, no zone)
    timestamp                     timestamp('us', 'UTC') (the zero timestamp -> null)
    year                          int16     (the zero year 0000 -> null)
    char/varchar/text/enum/set    string    (a set as its members in definition order, comma-joined)
    json                          string: the source's JSON text (MariaDB: as stored; MySQL: as it prints it)
    binary/varbinary/blob         binary

Timestamps: mysql-replication 1.0.x decodes TIMESTAMP with utcfromtimestamp
(naive UTC), and the full load reads with the session time zone at '+00:00':
a naive TIMESTAMP value is UTC here, whatever the process's TZ. An aware
value (other library versions) is converted to UTC.

Bulk conversion (ColumnConversion.to_array, used by the capture for a whole
buffered column): where every value already has the Python type the converter
would return unchanged (an int for an integer column, a Decimal for a decimal,
a naive datetime for a datetime...), the list goes to pyarrow as it is, which
checks ranges, precision and scale itself; any other value, or a value pyarrow
refuses, sends the whole column through the per-value converter (same values,
same errors). Bit(1)/tinyint(1) booleans map '0'/'1'/0/1 through a table; JSON
text is checked with orjson when installed (json.loads decides what orjson
refuses).

A mapping's ColumnSpec (`type: boolean|integer|...`) overrides the default.
Unsupported types (spatial, vector...) raise UnsupportedColumnType naming
cluster.database.table.column and the type.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import pyarrow as pa

# JSON validation in bulk: several times faster than json.loads, which decides what orjson refuses.
# Optional (installed with dlt, say): typed Any so mypy agrees with and without it.
orjson: Any
try:
    orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover
    orjson = None

if TYPE_CHECKING:
    from assets.cdc.mapping import ColumnSpec

MAX_DECIMAL128 = 38
_EXACT = Context(prec=200)  # the default context (28 digits) would round a decimal(38,s) or decimal(65,s)
_EPOCH = datetime(1970, 1, 1)
_ENUM_MEMBER = re.compile(r"'((?:[^']|'')*)'")
_INTEGER_TYPES: dict[str, tuple[pa.DataType, pa.DataType]] = {  # signed, unsigned
    "tinyint": (pa.int8(), pa.int16()),
    "smallint": (pa.int16(), pa.int32()),
    "mediumint": (pa.int32(), pa.int32()),
    "int": (pa.int32(), pa.int64()),
    "integer": (pa.int32(), pa.int64()),
    "bigint": (pa.int64(), pa.decimal128(20, 0)),
}
_STRING_TYPES = {
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "enum",
    "uuid",
    "inet4",
    "inet6",
}
_BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}


class TypeConversionError(ValueError):
    """A column that cannot be converted as asked, or a value that does not fit its column."""


class UnsupportedColumnType(TypeConversionError):
    pass


@dataclass(frozen=True)
class SourceColumn:
    """A column's row of information_schema.COLUMNS (names as the server spells them)."""

    name: str
    data_type: str  # DATA_TYPE: 'int', 'varchar', 'decimal', ...
    column_type: str  # COLUMN_TYPE: 'int(10) unsigned', 'tinyint(1)', "enum('a','b')", ...
    numeric_precision: int | None = None
    numeric_scale: int | None = None
    datetime_precision: int | None = None
    is_json: bool = False  # MariaDB's JSON is LONGTEXT with a json_valid() check: set from that

    @property
    def unsigned(self) -> bool:
        return "unsigned" in self.column_type.lower()

    def display_width(self) -> int | None:
        m = re.match(r"^\w+\((\d+)\)", self.column_type.strip())
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ColumnConversion:
    name: str
    arrow_type: pa.DataType
    convert: Callable[[Any], Any]  # a source value (never None) -> a value pa.array accepts for arrow_type
    # a whole column of source values (None allowed) -> its array, or None where only `convert` can say
    fast: Callable[[list[Any]], pa.Array | None] | None = None

    def array(self, values: Sequence[Any]) -> pa.Array:
        return pa.array(values, type=self.arrow_type)

    def to_array(self, values: list[Any]) -> pa.Array:
        """A column of source values (None: null) converted: in bulk where it can be, else one by one."""
        if self.fast is not None:
            arr = self.fast(values)
            if arr is not None:
                return arr
        convert = self.convert
        return self.array([convert(v) for v in values])


def conversion(
    column: SourceColumn, override: ColumnSpec | None = None, *, where: str = ""
) -> ColumnConversion:
    """The Arrow type and converter of one column; `where` is 'cluster.database.table' for errors."""
    place = f"{where}.{column.name}" if where else column.name
    data_type = column.data_type.lower()
    if override is not None:
        arrow_type, fn = _override(column, override, place)
    else:
        arrow_type, fn = _default(column, data_type, place)
    return ColumnConversion(column.name, arrow_type, _null_safe(fn, place, arrow_type), _bulk(fn, arrow_type))


def conversions(
    columns: Sequence[SourceColumn], overrides: dict[str, ColumnSpec] | None = None, *, where: str = ""
) -> list[ColumnConversion]:
    """Conversions of a table's columns. An override naming no column is an error (a typo would be silent)."""
    overrides = overrides or {}
    by_lower = {c.name.lower(): c.name for c in columns}
    unknown = [name for name in overrides if name.lower() not in by_lower]
    if unknown:
        raise TypeConversionError(
            f"{where}: the mapping converts columns {unknown} that the table does not have"
            f" (columns: {[c.name for c in columns]})"
        )
    lowered = {name.lower(): spec for name, spec in overrides.items()}
    return [conversion(c, lowered.get(c.name.lower()), where=where) for c in columns]


def _null_safe(fn: Callable[[Any], Any], place: str, arrow_type: pa.DataType) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        try:
            return fn(value)
        except TypeConversionError:
            raise
        except (ValueError, TypeError, ArithmeticError, InvalidOperation) as exc:
            raise TypeConversionError(
                f"{place}: value {value!r} cannot be converted to {arrow_type}: {exc}"
            ) from None

    return convert


# --- bulk conversion ------------------------------------------------------------------
_NONE_TYPE = type(None)
_PYARROW_REFUSED = (pa.ArrowException, ValueError, TypeError, OverflowError, ArithmeticError)


def _bulk(fn: Callable[[Any], Any], arrow_type: pa.DataType) -> Callable[[list[Any]], pa.Array | None] | None:
    """The bulk path of a converter, where one gives the same values as the converter does."""
    if fn is to_bool:
        return _bulk_bool
    if fn is to_json_text:
        return _bulk_json
    if fn is to_utc_timestamp:  # a naive datetime is UTC, as pyarrow takes it; the naive epoch is null
        return _as_is(arrow_type, frozenset({datetime}), (_EPOCH,))
    if fn is to_year:
        return _as_is(arrow_type, frozenset({int}), (0, 1900))
    if isinstance(fn, _DecimalValue):  # pyarrow refuses a value that needs rounding or is too wide
        return _as_is(arrow_type, frozenset({Decimal}))
    if fn is to_int and not pa.types.is_integer(arrow_type):
        return None
    kinds = _UNCHANGED.get(fn)
    return None if kinds is None else _as_is(arrow_type, kinds)


def _as_is(
    arrow_type: pa.DataType, kinds: frozenset[type], special: tuple[Any, ...] = ()
) -> Callable[[list[Any]], pa.Array | None]:
    """Values whose exact types are all in `kinds` (none equal to a `special` one) go to pyarrow as is."""
    allowed = kinds | {_NONE_TYPE}

    def bulk(values: list[Any]) -> pa.Array | None:
        if not set(map(type, values)) <= allowed:
            return None
        for value in special:
            if value in values:
                return None
        try:
            return pa.array(values, type=arrow_type)
        except _PYARROW_REFUSED:
            return None  # the converter says why (or converts what pyarrow would not)

    return bulk


_BOOL_VALUES: dict[Any, bool | None] = {"0": False, "1": True, 0: False, 1: True, None: None}  # True == 1
_BOOL_KINDS = frozenset({str, int, bool, _NONE_TYPE})


def _bulk_bool(values: list[Any]) -> pa.Array | None:
    if not set(map(type, values)) <= _BOOL_KINDS:
        return None
    try:
        return pa.array(list(map(_BOOL_VALUES.__getitem__, values)), type=pa.bool_())
    except KeyError:
        return None


_TEXT_KINDS = frozenset({str, _NONE_TYPE})


def _bulk_json(values: list[Any]) -> pa.Array | None:
    if not set(map(type, values)) <= _TEXT_KINDS:
        return None
    for value in values:
        if value is None:
            continue
        if orjson is not None:
            try:
                orjson.loads(value)
                continue
            except Exception:  # not JSON for orjson (NaN, a huge number...): json.loads decides
                pass
        try:
            json.loads(value)
        except Exception:
            return None  # the converter names the column and the value
    return pa.array(values, type=pa.string())


# --- defaults ---------------------------------------------------------------------
def _default(column: SourceColumn, data_type: str, place: str) -> tuple[pa.DataType, Callable[[Any], Any]]:
    if column.is_json or data_type == "json":
        return pa.string(), to_json_text
    if data_type == "bit":
        bits = column.numeric_precision or column.display_width() or 1
        if bits == 1:
            return pa.bool_(), to_bool
        if bits == 64:
            return pa.decimal128(20, 0), lambda v: Decimal(bit_to_int(v))
        return pa.int64(), bit_to_int
    if data_type == "tinyint" and column.display_width() == 1 and not column.unsigned:
        return pa.bool_(), to_bool
    if data_type in _INTEGER_TYPES:
        signed, unsigned = _INTEGER_TYPES[data_type]
        arrow_type = unsigned if column.unsigned else signed
        if pa.types.is_decimal(arrow_type):
            return arrow_type, lambda v: Decimal(to_int(v))
        return arrow_type, to_int
    if data_type in ("decimal", "numeric", "dec", "fixed"):
        precision = column.numeric_precision or 10
        scale = column.numeric_scale or 0
        return _decimal_type(precision, scale, place)
    if data_type == "float":
        return pa.float32(), float
    if data_type in ("double", "real", "double precision"):
        return pa.float64(), float
    if data_type == "date":
        return pa.date32(), to_date
    if data_type == "time":
        return pa.duration("us"), to_duration
    if data_type == "datetime":
        return pa.timestamp("us"), to_naive_datetime
    if data_type == "timestamp":
        return pa.timestamp("us", tz="UTC"), to_utc_timestamp
    if data_type == "year":
        return pa.int16(), to_year
    if data_type == "set":
        return pa.string(), set_to_text(enum_members(column.column_type))
    if data_type in _STRING_TYPES:
        return pa.string(), to_text
    if data_type in _BINARY_TYPES:
        return pa.binary(), to_bytes
    raise UnsupportedColumnType(
        f"{place}: source type {column.column_type!r} is not supported by the CDC capture;"
        " exclude the column's table or convert the column at the source"
    )


def _decimal_type(precision: int, scale: int, place: str) -> tuple[pa.DataType, Callable[[Any], Any]]:
    if precision > MAX_DECIMAL128:
        return pa.string(), decimal_text(scale)
    arrow_type = pa.decimal128(precision, scale)
    return arrow_type, decimal_value(precision, scale)


# --- overrides --------------------------------------------------------------------
def _override(column: SourceColumn, spec: ColumnSpec, place: str) -> tuple[pa.DataType, Callable[[Any], Any]]:
    kind = spec.type
    data_type = column.data_type.lower()
    if kind == "boolean":
        return pa.bool_(), to_bool
    if kind == "integer":
        return pa.int64(), bit_to_int if data_type == "bit" else to_int
    if kind == "decimal":
        precision = spec.precision or column.numeric_precision
        scale = spec.scale if spec.scale is not None else column.numeric_scale
        if precision is None:
            raise TypeConversionError(
                f"{place}: type decimal needs a precision for source type {column.column_type!r}"
            )
        return _decimal_type(precision, scale or 0, place)
    if kind == "float":
        return pa.float64(), float
    if kind == "string":
        if data_type == "set":
            return pa.string(), set_to_text(enum_members(column.column_type))
        return pa.string(), to_canonical_text
    if kind == "date":
        return pa.date32(), to_date
    if kind == "time":
        return pa.duration("us"), to_duration
    if kind == "datetime":
        return pa.timestamp("us"), to_naive_datetime
    if kind == "timestamp":
        return pa.timestamp("us", tz="UTC"), to_utc_timestamp
    if kind == "json":
        return pa.string(), to_json_text
    if kind == "binary":
        return pa.binary(), to_bytes
    raise TypeConversionError(f"{place}: unknown override type {kind!r}")


# --- value converters (never given None) ------------------------------------------
def bit_to_int(value: Any) -> int:
    """BIT values: '0101' (mysql-replication), b'\\x05' (pymysql), or an int."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    if isinstance(value, str):
        text = value.strip()
        if text and set(text) <= {"0", "1"}:
            return int(text, 2)
        raise ValueError("not a bit string")
    raise TypeError(f"{type(value).__name__} is not a bit value")


_TRUE = {"1", "true", "t", "y", "yes"}
_FALSE = {"0", "false", "f", "n", "no", ""}


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)):
        return value != 0
    if isinstance(value, (bytes, bytearray)):
        if value in (b"0", b"1"):  # a bit column read as text
            return value == b"1"
        return int.from_bytes(value, "big") != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if set(text) <= {"0", "1"}:  # '0001' from a wider bit column
            return int(text, 2) != 0
        raise ValueError("not a boolean")
    raise TypeError(f"{type(value).__name__} is not a boolean value")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError("has a fractional part")
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("has a fractional part")
        return int(value)
    if isinstance(value, (str, bytes)):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not an integer value")


class _DecimalValue:
    """A decimal(p,s) value, exact: refused when it needs rounding or does not fit."""

    def __init__(self, precision: int, scale: int) -> None:
        self.precision, self.scale = precision, scale
        self.quantum = Decimal(1).scaleb(-scale)
        self.limit = Decimal(10).scaleb(precision - scale - 1)

    def __call__(self, value: Any) -> Decimal:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        q = d.quantize(self.quantum, context=_EXACT)
        if q != d:
            raise ValueError(f"has more than {self.scale} decimal places")
        if abs(q) >= self.limit:
            raise ValueError(f"does not fit decimal({self.precision},{self.scale})")
        return q


def decimal_value(precision: int, scale: int) -> Callable[[Any], Decimal]:
    return _DecimalValue(precision, scale)


def decimal_text(scale: int) -> Callable[[Any], str]:
    """Exact plain-notation text (no exponent) with the column's scale: '12.500', '-0.000001'."""
    quantum = Decimal(1).scaleb(-scale)

    def convert(value: Any) -> str:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
        q = d.quantize(quantum, context=_EXACT)
        return format(q if q == d else d, "f")  # the column's scale, unless that would round

    return convert


def to_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        if value.startswith("0000-00-00") or value[5:7] == "00" or value[8:10] == "00":
            return None  # a zero or partial date: MySQL's "no date"
        return date.fromisoformat(value[:10])
    raise TypeError(f"{type(value).__name__} is not a date")


def to_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, time):
        return timedelta(
            hours=value.hour, minutes=value.minute, seconds=value.second, microseconds=value.microsecond
        )
    if isinstance(value, str):
        m = re.fullmatch(r"(-)?(\d+):(\d{2}):(\d{2})(?:\.(\d{1,6}))?", value.strip())
        if not m:
            raise ValueError("not [-]H:MM:SS[.ffffff]")
        sign, h, mi, s, frac = m.groups()
        td = timedelta(
            hours=int(h), minutes=int(mi), seconds=int(s), microseconds=int((frac or "0").ljust(6, "0"))
        )
        return -td if sign else td
    raise TypeError(f"{type(value).__name__} is not a time")


def to_naive_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return (
            value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
        )
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        if value.startswith("0000-00-00"):
            return None
        return datetime.fromisoformat(value)
    raise TypeError(f"{type(value).__name__} is not a datetime")


def to_utc_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime; a naive one is UTC (see the module's note); the zero timestamp is null."""
    if isinstance(value, str):
        if value.startswith("0000-00-00"):
            return None
        value = datetime.fromisoformat(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, UTC)
    if not isinstance(value, datetime):
        raise TypeError(f"{type(value).__name__} is not a timestamp")
    if value.tzinfo is None:
        if value == _EPOCH:
            return None  # mysql-replication's decoding of '0000-00-00 00:00:00' (TIMESTAMP starts at 1 s)
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def to_year(value: Any) -> int | None:
    year = to_int(value)
    # The zero year '0000': mysql-replication decodes its stored 0 as 0 + 1900.
    return None if year in (0, 1900) else year


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, (set, frozenset)):
        return ",".join(sorted(value))
    return str(value)


def to_canonical_text(value: Any) -> str:
    """Any value as text in a stable form (for a `type: string` override)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return to_json_text(value)
    return to_text(value)


def enum_members(column_type: str) -> list[str]:
    """The members of "enum('a','b')" / "set('x','y')" in definition order."""
    inner = column_type[column_type.find("(") + 1 : column_type.rfind(")")]
    return [m.replace("''", "'") for m in _ENUM_MEMBER.findall(inner)]


def set_to_text(members: list[str]) -> Callable[[Any], str]:
    """A SET value as MySQL shows it: its members in definition order, comma-joined."""
    order = {m: i for i, m in enumerate(members)}

    def convert(value: Any) -> str:
        if isinstance(value, (set, frozenset, list, tuple)):
            return ",".join(sorted(value, key=lambda m: order.get(m, len(order))))
        return to_text(value)

    return convert


def to_json_text(value: Any) -> str:
    """JSON as the source prints it, so the lake holds what the source holds and row hashes agree.

    MariaDB's JSON is LONGTEXT: its text is kept as stored (checked to be JSON). MySQL's binary
    JSON arrives decoded (dict/list): it is printed as MySQL prints it, keys ordered by length
    then bytes, with ', ' and ': ' separators.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        json.loads(value)  # a value that is not JSON is refused, naming the column (by the caller)
        return value
    return _mysql_json(_json_keys_to_str(value))


def _mysql_json(value: Any) -> str:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return (
            "{"
            + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_mysql_json(value[k])}" for k in keys)
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_mysql_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_keys_to_str(value: Any) -> Any:
    # mysql-replication decodes MySQL's binary JSON keys and strings as bytes.
    if isinstance(value, dict):
        return {(k.decode() if isinstance(k, bytes) else k): _json_keys_to_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_keys_to_str(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        # mysql-replication decodes a binary column with a character set as text
        return value.encode("utf-8")
    raise TypeError(f"{type(value).__name__} is not binary")


# Converters that return a value of these exact types unchanged (bulk: pyarrow takes the list as it is).
_UNCHANGED: dict[Callable[[Any], Any], frozenset[type]] = {
    to_int: frozenset({int}),  # integer Arrow types only (see _bulk)
    float: frozenset({float}),
    to_text: frozenset({str}),
    to_canonical_text: frozenset({str}),
    to_bytes: frozenset({bytes}),
    to_date: frozenset({date}),  # not a datetime (a date subclass): the converter takes its date
    to_duration: frozenset({timedelta}),
    to_naive_datetime: frozenset({datetime}),  # pyarrow takes an aware one to UTC, as the converter does
}


# --- reading the catalog ------------------------------------------------------------
COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION"
    " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)
JSON_CHECKS_SQL = (
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
    " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s"
)


def read_source_columns(connection: Any, database: str, table: str) -> list[SourceColumn]:
    """The table's columns from information_schema (empty when the table does not exist).

    `connection` is a DB-API connection to the server (pymysql). A MariaDB
    JSON column is LONGTEXT with a json_valid(`col`) check: found through
    CHECK_CONSTRAINTS.
    """
    with connection.cursor() as cur:
        cur.execute(COLUMNS_SQL, (database, table))
        rows = [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]
        json_columns: set[str] = set()
        try:
            cur.execute(JSON_CHECKS_SQL, (database, table))
            for r in cur.fetchall():
                clause = (r["CHECK_CLAUSE"] if isinstance(r, dict) else r[0]) or ""
                json_columns.update(m.lower() for m in re.findall(r"json_valid\(`((?:[^`]|``)+)`\)", clause))
        except Exception:  # MySQL before 8.0.16 has no CHECK_CONSTRAINTS; its JSON is a real type
            json_columns = set()
    return [
        SourceColumn(
            name=_text(name),
            data_type=_text(data_type).lower(),
            column_type=_text(column_type),
            numeric_precision=None if precision is None else int(precision),
            numeric_scale=None if scale is None else int(scale),
            datetime_precision=None if dt_precision is None else int(dt_precision),
            is_json=_text(data_type).lower() in ("longtext", "json") and _text(name).lower() in json_columns,
        )
        for name, data_type, column_type, precision, scale, dt_precision in rows
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
