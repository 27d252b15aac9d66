"""Column conversions of change files: from what a file holds to what the warehouse tables hold.

Our capture and a real AWS DMS task write the same MySQL column differently
(bit(1) as '0'/'1' strings, b'\\x00'/b'\\x01' bytes or ints; DECIMAL as
decimal, string or double; timestamps with or without a time zone; JSON as
text or Arrow's JSON extension). These are representations, not schema
changes: `plan_cast` calls them "coerce" and `coerce_array` converts them,
value by value where a value could be out of range. A file whose column has
really changed type ("retype") or grown wider ("widen") is the apply
engine's decision, not a conversion.

Pure pyarrow: nothing here touches the lake or a warehouse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from assets.cdc.mapping import ColumnSpec

CastPlan = Literal["same", "coerce", "widen", "retype"]
_EXAMPLE_CHARS = 80
_TRUE = ("1", "true", "t", "y", "yes")
_FALSE = ("0", "false", "f", "n", "no")


class CoerceError(ValueError):
    """A value of a column that cannot become the column's type; names the column and an example."""

    def __init__(self, column: str, target: pa.DataType, example: object, detail: str = ""):
        self.column, self.target, self.example = column, target, example
        shown = repr(example)
        if len(shown) > _EXAMPLE_CHARS:
            shown = shown[:_EXAMPLE_CHARS] + "..."
        super().__init__(
            f"column {column!r}: value {shown} cannot be converted to {target}"
            + (f" ({detail})" if detail else "")
        )


def spec_type(spec: ColumnSpec, source: pa.DataType | None = None) -> pa.DataType:
    """The Arrow type of a mapping's column conversion (`columns:` in the CDC mapping).

    A decimal without precision keeps the file's decimal type, else becomes
    decimal(38, 0) for integers and decimal(38, 9) for anything else.
    """
    kind = spec.type
    if kind == "decimal":
        if (
            spec.precision is None
            and spec.scale is None
            and source is not None
            and pa.types.is_decimal(source)
        ):
            return source
        default_scale = 0 if source is not None and pa.types.is_integer(source) else 9
        precision = spec.precision or 38
        scale = spec.scale if spec.scale is not None else min(default_scale, precision)
        # Wider than decimal128: exact text, as assets.cdc.types writes it.
        return pa.decimal128(precision, scale) if precision <= 38 else pa.string()
    return {
        "boolean": pa.bool_(),
        "integer": pa.int64(),
        "float": pa.float64(),
        "string": pa.string(),
        "json": pa.string(),
        "date": pa.date32(),
        "time": pa.duration("us"),  # MySQL TIME spans +-838 hours (as assets.cdc.types)
        "datetime": pa.timestamp("us"),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "binary": pa.binary(),
    }[kind]


def storage_type(source: pa.DataType) -> pa.DataType:
    """The type a new table column gets from a file's column (no mapping override)."""
    if isinstance(source, pa.BaseExtensionType):  # arrow.json and other extensions: their storage
        return storage_type(source.storage_type)
    if pa.types.is_dictionary(source):
        return storage_type(source.value_type)
    if pa.types.is_large_string(source) or pa.types.is_string_view(source):
        return pa.string()
    if (
        pa.types.is_large_binary(source)
        or pa.types.is_fixed_size_binary(source)
        or pa.types.is_binary_view(source)
    ):
        return pa.binary()
    if pa.types.is_null(source):
        return pa.string()  # a column that is null in every row of the first file
    if pa.types.is_timestamp(source) and source.unit == "ns":
        return pa.timestamp("us", tz=source.tz)  # MySQL keeps microseconds; DuckDB/BigQuery too
    return source


def _int_range(t: pa.DataType) -> tuple[int, int]:
    bits = t.bit_width
    if pa.types.is_unsigned_integer(t):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _integer_digits(t: pa.DataType) -> int:
    return len(str(max(abs(v) for v in _int_range(t))))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bytes(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )


def plan_cast(source: pa.DataType, target: pa.DataType) -> CastPlan:
    """How a file's column type relates to a table's column type.

    same: nothing to do; coerce: a conversion that keeps every value (or
    fails on one value, which is a bad value, not a schema change); widen:
    the table's column must grow (int32 -> int64, decimal precision up at the
    same scale, float -> double); retype: the column changed type at the
    source and a cast would lose or invent information.
    """
    if isinstance(source, pa.BaseExtensionType):
        source = source.storage_type
    if pa.types.is_dictionary(source):
        source = source.value_type
    if source == target:
        return "same"
    if pa.types.is_null(source):
        return "coerce"  # every value null: fits any column
    if pa.types.is_boolean(target):
        ok = (
            pa.types.is_boolean(source)
            or pa.types.is_integer(source)
            or _is_text(source)
            or _is_bytes(source)
        )
        return "coerce" if ok else "retype"
    if pa.types.is_integer(target):
        if pa.types.is_boolean(source):
            return "coerce"
        if pa.types.is_integer(source):
            lo, hi = _int_range(source)
            tlo, thi = _int_range(target)
            return "coerce" if tlo <= lo and hi <= thi else "widen"
        if pa.types.is_decimal(source) and source.scale == 0:
            return "coerce"  # e.g. bigint unsigned written as decimal(20, 0): checked per value
        return "retype"
    if pa.types.is_decimal(target):
        if pa.types.is_decimal(source):
            if source.scale != target.scale:
                return "retype"
            return "coerce" if source.precision <= target.precision else "widen"
        if pa.types.is_integer(source):
            return "coerce" if _integer_digits(source) <= target.precision - target.scale else "widen"
        if _is_text(source) or pa.types.is_floating(source):
            return "coerce"  # DMS may write DECIMAL as text or double: checked per value
        return "retype"
    if pa.types.is_floating(target):
        if pa.types.is_floating(source):
            return "coerce" if source.bit_width <= target.bit_width else "widen"
        if pa.types.is_integer(source):
            return "coerce"
        return "retype"
    if _is_text(target):
        if _is_text(source):
            return "coerce"
        if pa.types.is_integer(source) or pa.types.is_decimal(source):
            return "coerce"  # numbers print losslessly as text
        return "retype"
    if _is_bytes(target):
        return "coerce" if _is_bytes(source) or _is_text(source) else "retype"
    if pa.types.is_timestamp(target):
        return "coerce" if pa.types.is_timestamp(source) else "retype"
    if pa.types.is_date(target):
        return "coerce" if pa.types.is_date(source) else "retype"
    if pa.types.is_time(target):
        return "coerce" if pa.types.is_time(source) else "retype"
    if pa.types.is_duration(target):
        return "coerce" if pa.types.is_duration(source) or pa.types.is_time(source) else "retype"
    return "retype"


def _example(values: pa.Array, bad: pa.Array) -> object:
    """The first value where bad is true (bad: a boolean array without nulls)."""
    index = pc.index(bad, True).as_py()
    return values[index].as_py() if index is not None and index >= 0 else None


def _first_failing(values: pa.Array, target: pa.DataType) -> object:
    """The first value that does not cast safely on its own (the error path only)."""
    for i in range(len(values)):
        try:
            pc.cast(values.slice(i, 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return values[i].as_py()
    return None


def _safe_cast(values: pa.Array, target: pa.DataType, column: str) -> pa.Array:
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CoerceError(column, target, _first_failing(values, target), str(exc).split("\n")[0]) from None


def _to_bool(values: pa.Array, column: str) -> pa.Array:
    source = values.type
    if pa.types.is_boolean(source):
        return values
    valid = pc.is_valid(values)
    if pa.types.is_integer(source):
        truthy = pc.equal(values, 1)
        ok = pc.or_(truthy, pc.equal(values, 0))
    elif _is_text(source):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        truthy = pc.is_in(text, value_set=pa.array(_TRUE))
        ok = pc.or_(truthy, pc.is_in(text, value_set=pa.array(_FALSE)))
    else:  # bytes: bit(1) arrives as b'\x00' / b'\x01' (some writers: b'0' / b'1')
        data = pc.cast(values, pa.binary())
        truthy = pc.is_in(data, value_set=pa.array([b"\x01", b"1"]))
        ok = pc.or_(truthy, pc.is_in(data, value_set=pa.array([b"\x00", b"0"])))
    bad = pc.and_(valid, pc.invert(pc.fill_null(ok, False)))
    if pc.any(bad).as_py():
        raise CoerceError(
            column, pa.bool_(), _example(values, bad), "a flag must be 0/1, true/false or a bit"
        )
    return pc.if_else(valid, truthy, pa.scalar(None, pa.bool_()))


def _to_decimal(values: pa.Array, target: pa.DataType, column: str) -> pa.Array:
    source = values.type
    if pa.types.is_floating(source):
        # A double's shortest text form is what MySQL printed; a direct cast would round 2.675 to 2.67.
        values = pc.cast(values, pa.string())
    elif _is_text(source):
        values = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    return _safe_cast(values, target, column)


def _to_timestamp(values: pa.Array, target: pa.DataType, column: str) -> pa.Array:
    source = values.type
    # A timestamp without a zone holds UTC (DMS and the capture write UTC); casting
    # between zoned and zone-less Arrow timestamps keeps the UTC instant.
    if source.unit != target.unit:
        values = _safe_cast(values, pa.timestamp(target.unit, tz=source.tz), column)
    return values.cast(target)


def coerce_array(values: pa.Array | pa.ChunkedArray, target: pa.DataType, column: str) -> pa.Array:
    """values converted to target; CoerceError names the column and a value that does not fit."""
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()  # (no copy of one)
    if isinstance(values.type, pa.BaseExtensionType):
        values = values.storage
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.type == target:
        return values
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), target)
    if pa.types.is_boolean(target):
        return _to_bool(values, column)
    if pa.types.is_decimal(target):
        return _to_decimal(values, target, column)
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(values.type):
        return _to_timestamp(values, target, column)
    if pa.types.is_integer(target) and pa.types.is_boolean(values.type):
        return pc.cast(values, target)
    if pa.types.is_duration(target) and pa.types.is_time(values.type):
        # A time of day (another writer's TIME) as the time since midnight.
        micros = pc.cast(pc.cast(values, pa.time64("us")), pa.int64())
        return pc.cast(micros, pa.duration("us")).cast(target)
    return _safe_cast(values, target, column)


def commit_timestamps(values: pa.Array | pa.ChunkedArray | None, rows: int) -> pa.Array:
    """The commit-time column as timestamp[us, UTC]: zoned, zone-less (UTC) or ISO text."""
    target = pa.timestamp("us", tz="UTC")
    if values is None:
        return pa.nulls(rows, target)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if _is_text(values.type):
        text = pc.cast(values, pa.string())
        zoned = pc.match_substring_regex(text, r"(Z|[+-]\d\d:?\d\d)$")
        if pc.any(zoned).as_py():
            values = _safe_cast(text, target, "dms_commit_ts")
        else:
            values = _safe_cast(text, pa.timestamp("us"), "dms_commit_ts")
    if not pa.types.is_timestamp(values.type):
        raise CoerceError(
            "dms_commit_ts", target, values[0].as_py() if len(values) else None, "not a timestamp"
        )
    return _to_timestamp(values, target, "dms_commit_ts")
