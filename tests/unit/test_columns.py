"""Column type mapping (assets/migration/columns.py): every PostgreSQL, MariaDB/MySQL and Oracle type
either lands as its documented Arrow type, read by the documented SQL, or is refused naming the column
and the type; a registry `read_as` reads any column through a CAST instead.

Oracle cannot run here, so its columns are built from rows as ALL_TAB_COLUMNS gives them
(DATA_TYPE, DATA_PRECISION, DATA_SCALE) by the same function `describe` uses.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from resources.sql_columns import (
    READ_AS,
    SourceColumn,
    UnsupportedColumn,
    _mysql_column,
    _oracle_column,
    _pg_column,
    plan_column,
)


def col(name: str, type_: str, full_type: str = "", **kwargs) -> SourceColumn:
    return SourceColumn(name, type_, full_type, **kwargs)


# --- PostgreSQL -----------------------------------------------------------------------------

Q = '"c"'


@pytest.mark.parametrize(
    ("column", "arrow", "kind", "select"),
    [
        (col("c", "smallint"), pa.int16(), "int", Q),
        (col("c", "integer"), pa.int32(), "int", Q),
        (col("c", "bigint"), pa.int64(), "int", Q),
        (col("c", "real"), pa.float32(), "float", Q),
        (col("c", "double precision"), pa.float64(), "float", Q),
        (col("c", "numeric", "numeric(12,2)", precision=12, scale=2), pa.decimal128(12, 2), "decimal", Q),
        (col("c", "numeric", "numeric(38,0)", precision=38, scale=0), pa.decimal128(38, 0), "decimal", Q),
        # Wider than decimal128, or unconstrained: the exact text, never a rounded number.
        (col("c", "numeric", "numeric(40,2)", precision=40, scale=2), pa.string(), "string", f"{Q}::text"),
        (col("c", "numeric"), pa.string(), "string", f"{Q}::text"),
        (col("c", "money"), pa.decimal128(19, 2), "decimal", f"{Q}::numeric(19,2)"),
        (col("c", "boolean"), pa.bool_(), "bool", Q),
        (col("c", "bit", "bit(1)", precision=1), pa.bool_(), "bool", f"({Q} = B'1')"),
        (col("c", "bit", "bit(8)", precision=8), pa.string(), "string", f"{Q}::text"),
        (col("c", "bit varying", "bit varying(8)", precision=8), pa.string(), "string", f"{Q}::text"),
        # character(n) is read as the server prints it, padding kept; other text types are cast.
        (col("c", "character", "character(3)", precision=3), pa.string(), "string", Q),
        (col("c", "character varying", "character varying(20)"), pa.string(), "string", Q),
        (col("c", "text"), pa.string(), "string", Q),
        (col("c", "uuid"), pa.string(), "string", f"{Q}::text"),
        (col("c", "jsonb"), pa.string(), "string", f"{Q}::text"),
        (col("c", "json"), pa.string(), "string", f"{Q}::text"),
        (col("c", "inet"), pa.string(), "string", f"{Q}::text"),
        (col("c", "time with time zone"), pa.string(), "string", f"{Q}::text"),
        (col("c", "mood", "mood", enum=True), pa.string(), "string", f"{Q}::text"),
        (col("c", "bytea"), pa.binary(), "binary", Q),
        (col("c", "date"), pa.date32(), "date", Q),
        (col("c", "time without time zone"), pa.time64("us"), "time", Q),
        (col("c", "timestamp without time zone"), pa.timestamp("us"), "timestamp", Q),
        (col("c", "timestamp with time zone"), pa.timestamp("us", tz="UTC"), "timestamp", Q),
        (
            col("c", "interval"),
            pa.duration("us"),
            "duration",
            f"(extract(epoch from {Q}) * 1000000)::bigint",
        ),
        (col("c", "array", "integer[]", element="int4"), pa.list_(pa.int32()), "list", Q),
        (col("c", "array", "bigint[]", element="int8"), pa.list_(pa.int64()), "list", Q),
        (col("c", "array", "text[]", element="text"), pa.list_(pa.string()), "list", Q),
        # Other arrays travel as their elements' PostgreSQL text.
        (col("c", "array", "numeric[]", element="numeric"), pa.list_(pa.string()), "list", f"{Q}::text[]"),
        (
            col("c", "array", "timestamp with time zone[]", element="timestamptz"),
            pa.list_(pa.string()),
            "list",
            f"{Q}::text[]",
        ),
    ],
    ids=lambda v: v.shown if isinstance(v, SourceColumn) else None,
)
def test_postgres_types(column, arrow, kind, select):
    plan = plan_column("postgresql", column, Q)
    assert (plan.arrow, plan.kind, plan.select) == (arrow, kind, select)
    assert plan.name == "c" and plan.source_type == column.shown


@pytest.mark.parametrize("type_", ["point", "int4range", "oid", "tsquery", "box"])
def test_postgres_types_without_mapping_are_refused_naming_column_and_type(type_):
    with pytest.raises(UnsupportedColumn) as exc:
        plan_column("postgresql", col("location", type_), '"location"')
    message = str(exc.value)
    assert f"column 'location' has type '{type_}'" in message
    assert "read_as" in message and "exclude_columns" in message


def test_postgres_catalog_rows_become_source_columns():
    # (attname, format_type, base typname, typtype, array element typname) as describe() reads them
    amount = _pg_column("amount", "numeric(12,2)", "numeric", "b", None)
    assert (amount.type, amount.precision, amount.scale) == ("numeric", 12, 2)
    at = _pg_column("at", "timestamp(3) with time zone", "timestamptz", "b", None)
    assert at.type == "timestamp with time zone" and at.shown == "timestamp(3) with time zone"
    tags = _pg_column("tags", "integer[]", "_int4", "b", "int4")
    assert (tags.type, tags.element) == ("array", "int4")
    assert plan_column("postgresql", tags, '"tags"').arrow == pa.list_(pa.int32())
    flag = _pg_column("flag", "bit(1)", "bit", "b", None)
    assert plan_column("postgresql", flag, '"flag"').arrow == pa.bool_()
    mood = _pg_column("mood", "mood", "mood", "e", None)
    assert mood.enum and plan_column("postgresql", mood, '"mood"').arrow == pa.string()


# --- MariaDB / MySQL ------------------------------------------------------------------------

M = "`c`"


def mysql(data_type: str, column_type: str, precision=None, scale=None) -> SourceColumn:
    """A column as information_schema.COLUMNS describes it."""
    return _mysql_column("c", data_type, column_type, precision, scale)


@pytest.mark.parametrize(
    ("column", "arrow", "kind", "select"),
    [
        (mysql("TINYINT", "tinyint(4)", 3, 0), pa.int8(), "int", M),
        (mysql("tinyint", "tinyint(1)", 3, 0), pa.int8(), "int", M),  # not a bool: it holds -128..127
        (mysql("tinyint", "tinyint(3) unsigned", 3, 0), pa.uint8(), "int", M),
        (mysql("smallint", "smallint(6)", 5, 0), pa.int16(), "int", M),
        (mysql("mediumint", "mediumint(8) unsigned", 7, 0), pa.uint32(), "int", M),
        (mysql("int", "int(11)", 10, 0), pa.int32(), "int", M),
        (mysql("bigint", "bigint(20) unsigned", 20, 0), pa.uint64(), "int", M),
        # Read as a DOUBLE: the text protocol would round a FLOAT to 6 significant digits.
        (mysql("float", "float", 12, None), pa.float32(), "float", f"CAST({M} AS DOUBLE)"),
        (mysql("double", "double", 22, None), pa.float64(), "float", M),
        (mysql("decimal", "decimal(12,2)", 12, 2), pa.decimal128(12, 2), "decimal", M),
        (mysql("decimal", "decimal(65,10)", 65, 10), pa.string(), "string", f"CAST({M} AS CHAR)"),
        (mysql("bit", "bit(1)", 1, None), pa.bool_(), "bool", f"({M} = 1)"),
        (mysql("bit", "bit(12)", 12, None), pa.uint64(), "int", f"CAST({M} AS UNSIGNED)"),
        (mysql("year", "year(4)"), pa.int16(), "int", M),
        (mysql("char", "char(2)"), pa.string(), "string", M),
        (mysql("varchar", "varchar(255)"), pa.string(), "string", M),
        (mysql("longtext", "longtext"), pa.string(), "string", M),  # MariaDB's JSON
        (mysql("json", "json"), pa.string(), "string", M),
        (mysql("enum", "enum('a','b')"), pa.string(), "string", M),
        (mysql("set", "set('x','y')"), pa.string(), "string", M),
        (mysql("varbinary", "varbinary(16)"), pa.binary(), "binary", M),
        (mysql("blob", "blob"), pa.binary(), "binary", M),
        (mysql("date", "date"), pa.date32(), "date", M),
        (mysql("datetime", "datetime(6)"), pa.timestamp("us"), "timestamp", M),
        # TIMESTAMP is read in a UTC session: the stored instants.
        (mysql("timestamp", "timestamp"), pa.timestamp("us", tz="UTC"), "timestamp", M),
        # TIME is a signed duration of up to 838 hours, not a time of day.
        (mysql("time", "time"), pa.duration("us"), "duration", M),
    ],
    ids=lambda v: v.shown if isinstance(v, SourceColumn) else None,
)
@pytest.mark.parametrize("dialect", ["mysql", "mariadb"])
def test_mysql_types(dialect, column, arrow, kind, select):
    plan = plan_column(dialect, column, M)
    assert (plan.arrow, plan.kind, plan.select) == (arrow, kind, select)


@pytest.mark.parametrize(("data_type", "column_type"), [("geometry", "geometry"), ("point", "point")])
def test_mysql_types_without_mapping_are_refused(data_type, column_type):
    with pytest.raises(UnsupportedColumn, match=f"column 'c' has type '{column_type}'"):
        plan_column("mysql", mysql(data_type, column_type), M)


# --- Oracle ---------------------------------------------------------------------------------

ORA = '"C"'


def oracle(data_type: str, precision: int | None = None, scale: int | None = None) -> SourceColumn:
    """A column as ALL_TAB_COLUMNS describes it (COLUMN_NAME, DATA_TYPE, DATA_PRECISION, DATA_SCALE)."""
    return _oracle_column("C", data_type, precision, scale)


@pytest.mark.parametrize(
    ("column", "arrow", "kind", "select"),
    [
        # NUMBER without precision holds up to 38 digits at any scale: its exact text.
        (oracle("NUMBER"), pa.string(), "string", f"TO_CHAR({ORA}, 'TM9')"),
        (oracle("NUMBER", None, 0), pa.decimal128(38, 0), "decimal", ORA),  # INTEGER
        (oracle("NUMBER", 10, 0), pa.int64(), "int", ORA),
        (oracle("NUMBER", 18, 0), pa.int64(), "int", ORA),
        (oracle("NUMBER", 19, 0), pa.decimal128(19, 0), "decimal", ORA),
        (oracle("NUMBER", 12, 2), pa.decimal128(12, 2), "decimal", ORA),
        (oracle("NUMBER", 38, 10), pa.decimal128(38, 10), "decimal", ORA),
        (oracle("FLOAT", 126), pa.float64(), "float", ORA),
        (oracle("BINARY_DOUBLE"), pa.float64(), "float", ORA),
        (oracle("BINARY_FLOAT"), pa.float32(), "float", ORA),
        (oracle("VARCHAR2"), pa.string(), "string", ORA),
        (oracle("NVARCHAR2"), pa.string(), "string", ORA),
        (oracle("CHAR"), pa.string(), "string", ORA),
        (oracle("CLOB"), pa.string(), "string", ORA),
        (oracle("NCLOB"), pa.string(), "string", ORA),
        # An Oracle DATE has a time of day.
        (oracle("DATE"), pa.timestamp("us"), "timestamp", ORA),
        (oracle("TIMESTAMP(6)", None, 6), pa.timestamp("us"), "timestamp", ORA),
        (
            oracle("TIMESTAMP(6) WITH TIME ZONE", None, 6),
            pa.timestamp("us", tz="UTC"),
            "timestamp",
            f"SYS_EXTRACT_UTC({ORA})",
        ),
        (
            oracle("TIMESTAMP(6) WITH LOCAL TIME ZONE", None, 6),
            pa.timestamp("us", tz="UTC"),
            "timestamp",
            f"SYS_EXTRACT_UTC({ORA})",
        ),
        (oracle("INTERVAL DAY(2) TO SECOND(6)", 2, 6), pa.duration("us"), "duration", ORA),
        (oracle("RAW"), pa.binary(), "binary", ORA),
        (oracle("BLOB"), pa.binary(), "binary", ORA),
        (oracle("LONG RAW"), pa.binary(), "binary", ORA),
        (oracle("ROWID"), pa.string(), "string", f"ROWIDTOCHAR({ORA})"),
    ],
    ids=lambda v: v.shown if isinstance(v, SourceColumn) else None,
)
def test_oracle_types(column, arrow, kind, select):
    plan = plan_column("oracle", column, ORA)
    assert (plan.arrow, plan.kind, plan.select) == (arrow, kind, select)


@pytest.mark.parametrize("data_type", ["XMLTYPE", "INTERVAL YEAR(2) TO MONTH", "BFILE", "SDO_GEOMETRY"])
def test_oracle_types_without_mapping_are_refused_naming_column_and_type(data_type):
    with pytest.raises(UnsupportedColumn) as exc:
        plan_column("oracle", oracle(data_type), ORA)
    assert f"column 'c' has type '{data_type.lower()}'" in str(exc.value)


def test_oracle_catalog_rows_become_source_columns():
    # Unquoted names are folded to upper case by Oracle; the lake uses lower case.
    assert _oracle_column("CUSTOMER_ID", "NUMBER", 10, 0).name == "customer_id"
    assert _oracle_column("MixedCase", "VARCHAR2", None, None).name == "MixedCase"
    ts = oracle("TIMESTAMP(6) WITH TIME ZONE", None, 6)
    assert (ts.type, ts.shown) == ("timestamp with time zone", "timestamp(6) with time zone")
    interval = oracle("INTERVAL DAY(2) TO SECOND(6)", 2, 6)
    assert interval.type == "interval day to second"
    assert (interval.precision, interval.scale) == (2, 6)


def test_unknown_dialect_is_refused():
    with pytest.raises(UnsupportedColumn, match="column 'c' has type 'integer'"):
        plan_column("sqlite", col("c", "integer"), Q)


# --- read_as overrides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "quoted", "read_as", "arrow", "kind", "select"),
    [
        ("postgresql", Q, "string", pa.string(), "string", f"CAST({Q} AS text)"),
        ("postgresql", Q, "int64", pa.int64(), "int", f"CAST({Q} AS bigint)"),
        ("postgresql", Q, "float64", pa.float64(), "float", f"CAST({Q} AS double precision)"),
        ("postgresql", Q, "bool", pa.bool_(), "bool", f"CAST({Q} AS boolean)"),
        ("postgresql", Q, "date", pa.date32(), "date", f"CAST({Q} AS date)"),
        ("postgresql", Q, "timestamp", pa.timestamp("us"), "timestamp", f"CAST({Q} AS timestamp)"),
        (
            "postgresql",
            Q,
            "timestamptz",
            pa.timestamp("us", tz="UTC"),
            "timestamp",
            f"CAST({Q} AS timestamptz)",
        ),
        ("postgresql", Q, "binary", pa.binary(), "binary", f"CAST({Q} AS bytea)"),
        ("postgresql", Q, "decimal(20,4)", pa.decimal128(20, 4), "decimal", f"CAST({Q} AS DECIMAL(20,4))"),
        ("mysql", M, "string", pa.string(), "string", f"CAST({M} AS CHAR)"),
        ("mariadb", M, "int64", pa.int64(), "int", f"CAST({M} AS SIGNED)"),
        ("mysql", M, "timestamp", pa.timestamp("us"), "timestamp", f"CAST({M} AS DATETIME(6))"),
        ("oracle", ORA, "string", pa.string(), "string", f"CAST({ORA} AS VARCHAR2(4000))"),
        ("oracle", ORA, "int64", pa.int64(), "int", f"CAST({ORA} AS NUMBER(19))"),
        ("oracle", ORA, "float64", pa.float64(), "float", f"CAST({ORA} AS BINARY_DOUBLE)"),
        (
            "oracle",
            ORA,
            "timestamptz",
            pa.timestamp("us", tz="UTC"),
            "timestamp",
            f"CAST({ORA} AS TIMESTAMP WITH TIME ZONE)",
        ),
        ("oracle", ORA, "decimal(38, 0)", pa.decimal128(38, 0), "decimal", f"CAST({ORA} AS DECIMAL(38,0))"),
    ],
)
def test_read_as_casts_in_the_source_dialect(dialect, quoted, read_as, arrow, kind, select):
    plan = plan_column(dialect, col("c", "whatever"), quoted, read_as)
    assert (plan.arrow, plan.kind, plan.select) == (arrow, kind, select)


def test_read_as_reads_a_refused_type_and_overrides_a_mapped_one():
    point = col("location", "point")
    with pytest.raises(UnsupportedColumn):
        plan_column("postgresql", point, '"location"')
    plan = plan_column("postgresql", point, '"location"', "string")
    assert (plan.arrow, plan.select, plan.source_type) == (pa.string(), 'CAST("location" AS text)', "point")
    xml = oracle("XMLTYPE")
    assert plan_column("oracle", xml, ORA, "string").arrow == pa.string()
    # A mapped type read as another one: unconstrained numeric as a decimal instead of its text.
    wide = plan_column("postgresql", col("c", "numeric"), Q, "decimal(38,9)")
    assert wide.arrow == pa.decimal128(38, 9)


def test_every_read_as_name_has_a_cast_in_every_dialect():
    for read_as in READ_AS:
        for dialect, quoted in (("postgresql", Q), ("mysql", M), ("mariadb", M), ("oracle", ORA)):
            plan = plan_column(dialect, col("c", "whatever"), quoted, read_as)
            assert plan.select.startswith(f"CAST({quoted} AS ")
