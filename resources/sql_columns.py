"""How each source column is read: its SQL expression, its Arrow type, its canonical text.

A table's columns are described from the live source catalog (PostgreSQL,
MariaDB/MySQL, Oracle) and mapped one by one to a documented Arrow type; a
type with no mapping is refused before any data is read, naming the table,
the column and the type (a registry `read_as` override reads it as another
type instead). The mapping is the README's "Column types" table.

Each column also has a canonical text form, computed the same way in the
source (in its own SQL) and in the lake (in DuckDB over the Parquet files),
from which the row hash of reconciliation and change detection is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.sql_source import SqlSource

NULL_TOKEN = "\\N"  # a NULL's canonical text: never produced by a value's own text
SEPARATOR = "chr(31)"  # unit separator between columns (PostgreSQL/DuckDB spelling)
FLOAT_DECIMALS = 6  # floats are compared at this many decimal places (their text differs by engine)
HASH_HEX_DIGITS = 15  # 60 bits of the MD5: a signed 64-bit integer in every engine, summed exactly

# The Arrow types a column can be read as; `read_as` in the registry names one of them.
READ_AS = ("string", "int64", "float64", "bool", "date", "timestamp", "timestamptz", "binary")
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")


class UnsupportedColumn(TypeError):
    """A source column whose type has no mapping; the message names table, column and type."""


@dataclass(frozen=True)
class SourceColumn:
    """A column as the source catalog describes it (type names lower-case)."""

    name: str
    type: str  # base type name: 'numeric', 'character varying', 'int', 'timestamp with time zone'
    full_type: str = ""  # with modifiers: 'numeric(12,2)', 'tinyint(1) unsigned', 'integer[]'
    precision: int | None = None
    scale: int | None = None
    element: str | None = None  # PostgreSQL arrays: the element type name ('int4', 'text')
    enum: bool = False  # PostgreSQL enum types (the catalog names them by their own name)

    @property
    def shown(self) -> str:
        return self.full_type or self.type


@dataclass(frozen=True)
class ColumnPlan:
    """One column: the SQL that reads it, the Arrow type it lands as, how it hashes."""

    name: str
    source_type: str
    select: str  # SQL expression in the source dialect (the quoted column, or a cast of it)
    arrow: pa.DataType
    # canonical family: int, float, decimal, bool, string, date, timestamp, time, duration, binary, list
    kind: str


@dataclass(frozen=True)
class TablePlan:
    table: str
    dialect: str
    columns: list[ColumnPlan]

    @property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnPlan:
        return next(c for c in self.columns if c.name == name)


# --- describing the live source ------------------------------------------------------------


def describe(source: SqlSource, table: str) -> list[SourceColumn]:
    """The table's columns from the source catalog, in order; [] when the table does not exist."""
    import sqlalchemy as sa

    schema, _, name = table.rpartition(".")
    dialect = source.dialect_name
    with source.engine().connect() as conn:
        if dialect == "postgresql":
            rows = conn.execute(sa.text(_PG_COLUMNS), {"table": table}).all()
            return [_pg_column(*row) for row in rows]
        if dialect in ("mysql", "mariadb"):
            rows = conn.execute(sa.text(_MYSQL_COLUMNS), {"schema": schema or None, "table": name}).all()
            return [_mysql_column(*row) for row in rows]
        if dialect == "oracle":
            rows = conn.execute(
                sa.text(_ORACLE_COLUMNS), {"owner": schema.upper() or None, "table": name.upper()}
            ).all()
            return [_oracle_column(*row) for row in rows]
    raise UnsupportedColumn(f"table {table!r}: source dialect {dialect!r} is not supported")


_PG_COLUMNS = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       b.typname, b.typtype, e.typname
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_MYSQL_COLUMNS = """
SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table
ORDER BY ORDINAL_POSITION
"""

_ORACLE_COLUMNS = """
SELECT COLUMN_NAME, DATA_TYPE, DATA_PRECISION, DATA_SCALE
FROM ALL_TAB_COLUMNS
WHERE OWNER = COALESCE(:owner, SYS_CONTEXT('USERENV', 'CURRENT_SCHEMA')) AND TABLE_NAME = :table
ORDER BY COLUMN_ID
"""

_MODIFIERS = re.compile(r"\((\d+)(?:\s*,\s*(\d+))?\)")


def _modifiers(full_type: str) -> tuple[int | None, int | None]:
    match = _MODIFIERS.search(full_type)
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2)) if match.group(2) is not None else None


def _pg_column(name: str, full_type: str, base: str, typtype: str, element: str | None) -> SourceColumn:
    precision, scale = _modifiers(full_type)
    # format_type names the base type with its modifiers: 'numeric(12,2)', 'timestamp(3) with time zone'.
    # Domains arrive as their base type's name; intervals may carry fields ('interval day to second').
    type_name = _MODIFIERS.sub("", full_type).replace("[]", "").strip() if not element else "array"
    if type_name.startswith("interval"):
        type_name = "interval"
    return SourceColumn(
        name, type_name, full_type, precision, scale, element.lstrip("_") if element else None, typtype == "e"
    )


def _mysql_column(name: str, data_type: str, column_type: str, precision: Any, scale: Any) -> SourceColumn:
    p, s = _modifiers(column_type)
    if data_type.lower() in ("decimal", "numeric"):
        p, s = int(precision) if precision is not None else p, int(scale) if scale is not None else s
    return SourceColumn(name, data_type.lower(), column_type.lower(), p, s)


def _oracle_column(name: str, data_type: str, precision: Any, scale: Any) -> SourceColumn:
    # Oracle folds unquoted names to upper case; the registry (and the lake) use lower case.
    shown = name.lower() if name.isupper() else name
    base = re.sub(r"\(\d+\)", "", data_type.lower())
    return SourceColumn(
        shown,
        base,
        data_type.lower(),
        int(precision) if precision is not None else None,
        int(scale) if scale is not None else None,
    )


# --- mapping a column -----------------------------------------------------------------------


def plan_column(dialect: str, column: SourceColumn, quoted: str, read_as: str | None = None) -> ColumnPlan:
    """The column's read plan; UnsupportedColumn when its type has no mapping and no override."""
    if read_as:
        return _override(dialect, column, quoted, read_as)
    if dialect == "postgresql":
        plan = _postgres(column, quoted)
    elif dialect in ("mysql", "mariadb"):
        plan = _mysql(column, quoted)
    elif dialect == "oracle":
        plan = _oracle(column, quoted)
    else:
        plan = None
    if plan is None:
        raise UnsupportedColumn(
            f"column {column.name!r} has type {column.shown!r}, which has no mapping to an Arrow type;"
            f" give it `read_as` ({', '.join(READ_AS)} or decimal(p,s)) in the registry, or leave it out"
            " with exclude_columns"
        )
    return plan


def _plan(column: SourceColumn, select: str, arrow: pa.DataType, kind: str) -> ColumnPlan:
    return ColumnPlan(column.name, column.shown, select, arrow, kind)


def _decimal(column: SourceColumn, select: str, text_select: str) -> ColumnPlan:
    """Decimal(p, s) up to 38 digits; wider or unconstrained numbers are kept exactly as text."""
    import pyarrow as pa

    p, s = column.precision, column.scale or 0
    if p is None or p > 38:
        return _plan(column, text_select, pa.string(), "string")
    return _plan(column, select, pa.decimal128(p, s), "decimal")


_PG_INTS = {"smallint": "int16", "integer": "int32", "bigint": "int64"}
_PG_ARRAY_ELEMENTS = {
    "int2": "int16",
    "int4": "int32",
    "int8": "int64",
    "text": "string",
    "varchar": "string",
}
_PG_TEXT = {
    "text",
    "character varying",
    "character",
    "name",
    "citext",
    "uuid",
    "json",
    "jsonb",
    "xml",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "time with time zone",
    "bit varying",
    "tsvector",
}


def _postgres(column: SourceColumn, q: str) -> ColumnPlan | None:
    import pyarrow as pa

    t = column.type
    if t in _PG_INTS:
        return _plan(column, q, getattr(pa, _PG_INTS[t])(), "int")
    if t == "real":
        return _plan(column, q, pa.float32(), "float")
    if t == "double precision":
        return _plan(column, q, pa.float64(), "float")
    if t == "numeric":
        return _decimal(column, q, f"{q}::text")
    if t == "money":
        return _plan(column, f"{q}::numeric(19,2)", pa.decimal128(19, 2), "decimal")
    if t == "boolean":
        return _plan(column, q, pa.bool_(), "bool")
    if t == "bit" and column.precision in (None, 1):
        return _plan(column, f"({q} = B'1')", pa.bool_(), "bool")
    if t == "bit":
        return _plan(column, f"{q}::text", pa.string(), "string")
    if column.enum or t in _PG_TEXT:
        # character(n) keeps its padding as the server prints it; text casts would trim it.
        select = q if t in ("text", "character varying", "character") else f"{q}::text"
        return _plan(column, select, pa.string(), "string")
    if t == "bytea":
        return _plan(column, q, pa.binary(), "binary")
    if t == "date":
        return _plan(column, q, pa.date32(), "date")
    if t == "time without time zone":
        return _plan(column, q, pa.time64("us"), "time")
    if t == "timestamp without time zone":
        return _plan(column, q, pa.timestamp("us"), "timestamp")
    if t == "timestamp with time zone":
        return _plan(column, q, pa.timestamp("us", tz="UTC"), "timestamp")
    if t == "interval":
        # Months count as 30 days and years as 365.25, PostgreSQL's own epoch of an interval.
        return _plan(column, f"(extract(epoch from {q}) * 1000000)::bigint", pa.duration("us"), "duration")
    if t == "array":
        element = _PG_ARRAY_ELEMENTS.get(column.element or "")
        if element:
            return _plan(column, q, pa.list_(getattr(pa, element)()), "list")
        # Other element types travel as their PostgreSQL text: timestamps, numerics, booleans, uuids.
        return _plan(column, f"{q}::text[]", pa.list_(pa.string()), "list")
    return None


_MYSQL_INTS = {"tinyint": 8, "smallint": 16, "mediumint": 32, "int": 32, "integer": 32, "bigint": 64}
_MYSQL_TEXT = {
    "char",
    "varchar",
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "enum",
    "set",
    "json",
}
_MYSQL_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}


def _mysql(column: SourceColumn, q: str) -> ColumnPlan | None:
    import pyarrow as pa

    t = column.type
    if t in _MYSQL_INTS:
        bits = _MYSQL_INTS[t]
        unsigned = "unsigned" in column.full_type
        return _plan(column, q, getattr(pa, f"{'u' if unsigned else ''}int{bits}")(), "int")
    if t == "float":
        # As a double: the text protocol would round a FLOAT to 6 significant digits.
        return _plan(column, f"CAST({q} AS DOUBLE)", pa.float32(), "float")
    if t in ("double", "real"):
        return _plan(column, q, pa.float64(), "float")
    if t in ("decimal", "numeric"):
        return _decimal(column, q, f"CAST({q} AS CHAR)")
    if t == "bit":
        if column.precision in (None, 1):
            return _plan(column, f"({q} = 1)", pa.bool_(), "bool")
        return _plan(column, f"CAST({q} AS UNSIGNED)", pa.uint64(), "int")
    if t == "year":
        return _plan(column, q, pa.int16(), "int")
    if t in _MYSQL_TEXT:
        return _plan(column, q, pa.string(), "string")
    if t in _MYSQL_BINARY:
        return _plan(column, q, pa.binary(), "binary")
    if t == "date":
        return _plan(column, q, pa.date32(), "date")
    if t == "datetime":
        return _plan(column, q, pa.timestamp("us"), "timestamp")
    if t == "timestamp":
        # Read in a UTC session (SqlSource sets it), so the values are the stored UTC instants.
        return _plan(column, q, pa.timestamp("us", tz="UTC"), "timestamp")
    if t == "time":
        # MySQL TIME is a signed duration up to 838 hours, not a time of day.
        return _plan(column, q, pa.duration("us"), "duration")
    return None


_ORACLE_TEXT = {"varchar2", "nvarchar2", "char", "nchar", "clob", "nclob", "long"}


def _oracle(column: SourceColumn, q: str) -> ColumnPlan | None:
    import pyarrow as pa

    t = column.type
    if t == "number":
        if column.precision is not None and (column.scale or 0) == 0 and column.precision <= 18:
            return _plan(column, q, pa.int64(), "int")
        if column.precision is None and column.scale == 0:  # INTEGER: NUMBER(*, 0), up to 38 digits
            return _plan(column, q, pa.decimal128(38, 0), "decimal")
        return _decimal(column, q, f"TO_CHAR({q}, 'TM9')")
    if t in ("float", "binary_double"):
        return _plan(column, q, pa.float64(), "float")
    if t == "binary_float":
        return _plan(column, q, pa.float32(), "float")
    if t in _ORACLE_TEXT:
        return _plan(column, q, pa.string(), "string")
    if t in ("raw", "blob", "long raw"):
        return _plan(column, q, pa.binary(), "binary")
    if t == "date":  # an Oracle DATE holds a time of day
        return _plan(column, q, pa.timestamp("us"), "timestamp")
    if t.startswith("timestamp") and "time zone" in t:
        return _plan(column, f"SYS_EXTRACT_UTC({q})", pa.timestamp("us", tz="UTC"), "timestamp")
    if t.startswith("timestamp"):
        return _plan(column, q, pa.timestamp("us"), "timestamp")
    if t.startswith("interval day"):
        return _plan(column, q, pa.duration("us"), "duration")
    if t in ("rowid", "urowid"):
        return _plan(column, f"ROWIDTOCHAR({q})", pa.string(), "string")
    return None


_CASTS = {
    # read_as -> (Arrow type name, kind, SQL target type per dialect: postgresql, mysql, oracle)
    "string": ("string", "string", ("text", "CHAR", "VARCHAR2(4000)")),
    "int64": ("int64", "int", ("bigint", "SIGNED", "NUMBER(19)")),
    "float64": ("float64", "float", ("double precision", "DOUBLE", "BINARY_DOUBLE")),
    "bool": ("bool_", "bool", ("boolean", "UNSIGNED", "NUMBER(1)")),
    "date": ("date32", "date", ("date", "DATE", "DATE")),
    "timestamp": ("timestamp", "timestamp", ("timestamp", "DATETIME(6)", "TIMESTAMP")),
    "timestamptz": ("timestamp", "timestamp", ("timestamptz", "DATETIME(6)", "TIMESTAMP WITH TIME ZONE")),
    "binary": ("binary", "binary", ("bytea", "BINARY", "RAW(2000)")),
}


def _override(dialect: str, column: SourceColumn, q: str, read_as: str) -> ColumnPlan:
    """A registry `read_as`: the column is CAST in the source's SQL to the named type."""
    import pyarrow as pa

    which = {"postgresql": 0, "mysql": 1, "mariadb": 1, "oracle": 2}[dialect]
    decimal = _DECIMAL.match(read_as)
    if decimal:
        p, s = int(decimal.group(1)), int(decimal.group(2))
        return _plan(column, f"CAST({q} AS DECIMAL({p},{s}))", pa.decimal128(p, s), "decimal")
    arrow_name, kind, targets = _CASTS[read_as]
    if arrow_name == "timestamp":
        arrow = pa.timestamp("us", tz="UTC" if read_as == "timestamptz" else None)
    else:
        arrow = getattr(pa, arrow_name)()
    return _plan(column, f"CAST({q} AS {targets[which]})", arrow, kind)
