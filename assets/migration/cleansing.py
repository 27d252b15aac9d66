"""Type-based cleansing of one migrated table, from its registry entry (pure, over pyarrow).

Every string column gets the table's StringRules (trim, empty to null, null tokens to
null, case; a ColumnRule's case overrides the table's). Mart tables arrive all-string, so
their declared columns also get their types back: int, decimal(18, scale), date,
timestamp, bool. A value that is present but does not parse becomes null and is counted
per column; blanks and null tokens are "no value", so they are nulled but not counted.

Everything is vectorized with pyarrow.compute. Date and timestamp columns are parsed over
their distinct values only (`map_distinct`), which is also where the one Python fallback
lives: values Arrow's strptime would silently roll over (2024-02-30 -> 2024-03-01).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from assets.migration.registry import ColumnRule, Kind, StringRules, TableSpec

if TYPE_CHECKING:
    import pyarrow as pa

DECIMAL_PRECISION = 18
TIMESTAMP_UNIT = "us"
# When a date/timestamp rule declares no formats: ISO 8601, as Oracle and Sqoop export them.
DEFAULT_FORMATS = {
    "date": ["%Y-%m-%d"],
    "timestamp": ["%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
}
_INT64_MAX = "9223372036854775807"
_INT64_MIN_ABS = "9223372036854775808"


class CleansingError(ValueError):
    """A table that does not match its registry entry; the message names table and column."""


@dataclass(frozen=True)
class CleansingResult:
    table: pa.Table
    # typed (parsed) column -> values present but unparseable, now null; 0 when all parsed
    invalid_counts: dict[str, int] = field(default_factory=dict)


def cleanse(table: pa.Table, spec: TableSpec) -> CleansingResult:
    import pyarrow as pa

    _check_columns(table, spec)
    fields, arrays, invalid = [], [], {}
    for fld, column in zip(table.schema, table.columns, strict=True):
        rule = spec.columns.get(fld.name, ColumnRule())
        target = rule.type if spec.kind == Kind.MART else None
        if _is_text(column.type):
            column = _string_rules(column, spec.string_rules, rule.case, keep_case=target in (None, "string"))
            if target not in (None, "string"):
                column, invalid[fld.name] = _parse(column, rule, target)
            fld = fld.with_type(column.type).with_nullable(True)
        elif target not in (None, "string"):
            # An all-null column gets its declared type; an already typed one (a re-run) passes.
            if pa.types.is_null(column.type):
                column = column.cast(_arrow_type(rule, target))
                fld = fld.with_type(column.type)
            elif column.type != _arrow_type(rule, target):
                raise CleansingError(
                    f"{spec.name}.{fld.name}: declared {target}, arrived as {column.type} instead of a string"
                )
            invalid[fld.name] = 0
        fields.append(fld)
        arrays.append(column)
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return CleansingResult(pa.Table.from_arrays(arrays, schema=schema), invalid)


def map_distinct(values: Any, fn: Callable[[pa.Array], pa.Array]) -> Any:
    """Apply `fn` to the distinct non-null values only and spread the results back by index.

    Expensive per-value work (strptime with a fallback, encryption, hashing) then costs
    one call per distinct value; chunking is kept, nulls stay null.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        if encoded.num_chunks == 0:
            return pa.chunked_array([], type=fn(pa.array([], type=values.type)).type)
        # Arrow unifies the dictionary across the chunks of one dictionary_encode call.
        mapped = fn(encoded.chunk(0).dictionary)
        return pa.chunked_array([pc.take(mapped, c.indices) for c in encoded.chunks], type=mapped.type)
    return pc.take(fn(encoded.dictionary), encoded.indices)


def _check_columns(table: pa.Table, spec: TableSpec) -> None:
    missing = sorted(set(spec.columns) - set(table.column_names))
    if missing:
        raise CleansingError(f"{spec.name}: columns {missing} are in the registry but not in the table")
    for name, rule in spec.columns.items():
        if rule.type == "decimal" and not 0 <= rule.scale <= DECIMAL_PRECISION:
            raise CleansingError(f"{spec.name}.{name}: decimal scale must be 0-{DECIMAL_PRECISION}")


def _is_text(type_: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def _arrow_type(rule: ColumnRule, target: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "int": pa.int64(),
        "decimal": pa.decimal128(DECIMAL_PRECISION, rule.scale),
        "date": pa.date32(),
        "timestamp": pa.timestamp(TIMESTAMP_UNIT),
        "bool": pa.bool_(),
    }[target]


def _string_rules(column: Any, rules: StringRules, column_case: str | None, keep_case: bool) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string_view(column.type):
        column = column.cast(pa.string())  # not every string kernel takes views yet
    if rules.trim:
        column = pc.utf8_trim_whitespace(column)
    tokens = list(rules.null_tokens) + ([""] if rules.empty_to_null else [])
    if tokens:
        column = _null_where(column, pc.is_in(column, value_set=pa.array(tokens, type=column.type)))
    case = column_case or rules.case
    if keep_case and case == "upper":
        column = pc.utf8_upper(column)
    elif keep_case and case == "lower":
        column = pc.utf8_lower(column)
    return column


def _null_where(column: Any, mask: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(mask, pa.scalar(None, type=column.type), column)


def _parse(column: Any, rule: ColumnRule, target: str) -> tuple[Any, int]:
    """Parse a cleansed string column; returns it typed and how many present values failed."""
    import pyarrow.compute as pc

    # Whitespace never means anything in a number, date or bool, even with trim off; a blank is no value.
    text = pc.utf8_trim_whitespace(column)
    text = _null_where(text, pc.equal(text, ""))
    if target == "int":
        typed = _parse_int(text)
    elif target == "decimal":
        typed = _parse_decimal(text, rule.scale)
    elif target == "bool":
        typed = _parse_bool(text, rule)
    else:
        formats = rule.formats or DEFAULT_FORMATS[target]
        typed = map_distinct(text, lambda distinct: _parse_datetimes(distinct, formats))
        typed = typed.cast(_arrow_type(rule, target), safe=False)  # date: keep the day of a timestamp
    invalid = pc.sum(pc.and_(pc.is_valid(text), pc.is_null(typed))).as_py() or 0
    return typed, invalid


def _parse_int(text: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.replace_substring(text, ",", "")  # thousands separators
    parts = pc.extract_regex(text, r"^(?P<sign>[+-]?)0*(?P<digits>\d{1,19})$")
    sign, digits = pc.struct_field(parts, "sign"), pc.struct_field(parts, "digits")
    # 19-digit values are compared as text with the int64 bounds, so the cast below never fails.
    bound = pc.if_else(pc.equal(sign, "-"), _INT64_MIN_ABS, _INT64_MAX)
    fits = pc.or_(pc.less(pc.utf8_length(digits), 19), pc.less_equal(digits, bound))
    joined = pc.binary_join_element_wise(pc.replace_substring(sign, "+", ""), digits, "")
    return _null_where(joined, pc.invert(fits)).cast(pa.int64())


def _parse_decimal(text: Any, scale: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.replace_substring(text, ",", "")
    syntax = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)$")
    # Significant digits on each side of the point; more than the type holds is invalid, not rounded.
    parts = pc.extract_regex(text, r"^[+-]?0*(?P<whole>\d*)(?:\.(?P<frac>\d*?)0*)?$")
    whole, frac = pc.struct_field(parts, "whole"), pc.struct_field(parts, "frac")
    fits = pc.and_(
        pc.less_equal(pc.utf8_length(whole), DECIMAL_PRECISION - scale),
        pc.less_equal(pc.utf8_length(pc.coalesce(frac, "")), scale),
    )
    return _null_where(text, pc.invert(pc.and_(syntax, fits))).cast(pa.decimal128(DECIMAL_PRECISION, scale))


def _parse_bool(text: Any, rule: ColumnRule) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    lower = pc.utf8_lower(text)
    is_true = pc.is_in(lower, value_set=pa.array([v.lower() for v in rule.true_values], type=lower.type))
    is_false = pc.is_in(lower, value_set=pa.array([v.lower() for v in rule.false_values], type=lower.type))
    return pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, type=pa.bool_())))


def _parse_datetimes(distinct: pa.Array, formats: list[str]) -> pa.Array:
    """Distinct strings -> timestamp[us]: the first format that parses a value wins."""
    import pyarrow as pa
    import pyarrow.compute as pc

    result = pa.nulls(len(distinct), type=pa.timestamp(TIMESTAMP_UNIT))
    for fmt in formats:
        todo = _null_where(distinct, pc.is_valid(result))
        result = pc.coalesce(result, _strptime(todo, fmt))
    return result


def _strptime(text: pa.Array, fmt: str) -> pa.Array:
    """Strict strptime of one format; a trailing '.%f' is split off, as Arrow has no %f."""
    import pyarrow as pa
    import pyarrow.compute as pc

    micros = None
    if fmt.endswith(".%f"):
        fmt = fmt[:-3]
        parts = pc.extract_regex(text, r"^(?P<head>.*)\.(?P<frac>\d{1,6})$")
        text = pc.struct_field(parts, "head")
        micros = pc.utf8_rpad(pc.struct_field(parts, "frac"), width=6, padding="0").cast(pa.int64())
    parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
    # Arrow's strptime rolls impossible dates over (02-30 -> 03-01, second 60 -> next minute).
    # A value that formats back to exactly its input is real; Python's strict strptime judges
    # the few others (unpadded fields, month-name case, rolled-over dates).
    exact = pc.equal(pc.strftime(parsed, format=fmt), text)
    doubtful = pc.and_(pc.is_valid(parsed), pc.invert(exact))
    if pc.any(doubtful).as_py():
        checked = pa.array(
            [
                _strict(v, fmt) if d else None
                for v, d in zip(text.to_pylist(), doubtful.to_pylist(), strict=True)
            ],
            type=pa.timestamp("s"),
        )
        parsed = pc.if_else(exact, parsed.cast(pa.timestamp("s")), checked)
    parsed = parsed.cast(pa.timestamp(TIMESTAMP_UNIT))
    if micros is not None:
        parsed = pc.add(parsed, micros.cast(pa.duration(TIMESTAMP_UNIT)))
    return parsed


def _strict(value: str, fmt: str) -> datetime | None:
    try:
        return datetime.strptime(value, fmt)
    except ValueError:
        return None
