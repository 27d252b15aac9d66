"""SqlSource against the PostgreSQL and MariaDB servers of this machine: same code, both dialects."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from resources.settings import PROJECT_ROOT
from resources.sql_source import SqlSource, SqlSourceError

ROWS = 3_500
BATCH = 1_000
COLUMNS = ["id", "big", "amount", "name", "day", "ts", "flag", "payload", "ratio", "note"]
SECRET = "s3cret-Pa55"

DDL = {
    "postgresql": """
        CREATE TABLE mixed (
            id integer PRIMARY KEY, big bigint, amount numeric(14, 2), name varchar(100),
            day date, ts timestamp, flag boolean, payload bytea, ratio double precision, note text
        )""",
    # DATETIME(6): plain DATETIME drops the microseconds; utf8mb4 for Hangul and emoji.
    "mysql": """
        CREATE TABLE mixed (
            id INT PRIMARY KEY, big BIGINT, amount DECIMAL(14, 2), name VARCHAR(100),
            day DATE, ts DATETIME(6), flag BOOLEAN, payload VARBINARY(64), ratio DOUBLE, note TEXT
        ) DEFAULT CHARSET = utf8mb4""",
}
SELECT_ALL = f"SELECT {', '.join(COLUMNS)} FROM mixed ORDER BY id"


def _rows(n: int) -> list[dict[str, Any]]:
    """Deterministic rows of mixed types, each nullable column NULL on its own rhythm."""
    rng = random.Random(20240601)
    rows = []
    for i in range(n):
        hangul = "".join(chr(rng.randrange(0xAC00, 0xD7A4)) for _ in range(rng.randrange(1, 12)))
        row = {
            "id": i,
            "big": rng.randrange(-(2**62), 2**62),
            "amount": Decimal(rng.randrange(-(10**12), 10**12)).scaleb(-2),
            "name": f"고객 {hangul} 🙂" if i % 11 else f"강남점 {i}",
            "day": date(1990, 1, 1) + timedelta(days=rng.randrange(20_000)),
            "ts": datetime(2015, 1, 1) + timedelta(microseconds=rng.randrange(10**15)),
            "flag": i % 3 == 0,
            "payload": rng.randbytes(rng.randrange(0, 32)),  # b"" included: empty is not NULL
            "ratio": rng.random() * 1e6,
            # A whole batch (ids 1000-1999) of NULL notes: the column must keep its type.
            "note": None if BATCH <= i < 2 * BATCH else f"비고 {i}",
        }
        for k, column in enumerate(["big", "amount", "name", "day", "ts", "flag", "payload", "ratio"]):
            if i % (5 + k) == 0:
                row[column] = None
        rows.append(row)
    return rows


def _expected(rows: list[dict[str, Any]], dialect: str) -> dict[str, list[Any]]:
    columns = {c: [r[c] for r in rows] for c in COLUMNS}
    if dialect == "mysql":
        # MySQL has no boolean type: BOOLEAN is TINYINT(1) and comes back as 0/1.
        columns["flag"] = [None if v is None else int(v) for v in columns["flag"]]
    return columns


@pytest.fixture(params=["postgresql", "mariadb"])
def source(request: pytest.FixtureRequest) -> Iterator[SqlSource]:
    url = request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[request.param])
    src = SqlSource(url=url)
    try:
        yield src
    finally:
        src.engine().dispose()


@pytest.fixture
def loaded(source: SqlSource) -> list[dict[str, Any]]:
    """The `mixed` table filled with ROWS generated rows; returns those rows."""
    rows = _rows(ROWS)
    placeholders = ", ".join(f":{c}" for c in COLUMNS)
    with source.engine().begin() as conn:
        conn.execute(text(DDL[source.dialect_name]))
        conn.execute(text(f"INSERT INTO mixed ({', '.join(COLUMNS)}) VALUES ({placeholders})"), rows)
    return rows


def test_dialect_names(source: SqlSource) -> None:
    assert source.dialect_name in {"postgresql", "mysql"}
    assert source.dialect_name == make_url(source.url).get_dialect().name


def test_stream_batches_bounded_and_exact(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    batches = list(source.stream_batches(SELECT_ALL, batch_rows=BATCH))

    assert len(batches) == -(-ROWS // BATCH) > 1
    assert all(0 < b.num_rows <= BATCH for b in batches)
    assert sum(b.num_rows for b in batches) == ROWS
    # One schema for every batch, including the batch whose notes are all NULL.
    assert all(b.schema == batches[0].schema for b in batches)
    assert batches[1].column("note").null_count == BATCH
    assert batches[0].schema.names == COLUMNS

    table = pa.Table.from_batches(batches)
    expected = _expected(loaded, source.dialect_name)
    for column in COLUMNS:
        assert table.column(column).to_pylist() == expected[column], column
        assert table.column(column).null_count == expected[column].count(None), column


def test_arrow_types(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    schema = source.read_arrow(SELECT_ALL).schema
    flag = pa.bool_() if source.dialect_name == "postgresql" else pa.int64()
    assert [schema.field(c).type for c in COLUMNS] == [
        pa.int64(),
        pa.int64(),
        pa.decimal128(38, 2),
        pa.string(),
        pa.date32(),
        pa.timestamp("us"),
        flag,
        pa.binary(),
        pa.float64(),
        pa.string(),
    ]


def test_read_arrow_with_params(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    sql = f"SELECT {', '.join(COLUMNS)} FROM mixed WHERE id >= :lo AND id < :hi ORDER BY id"
    table = source.read_arrow(sql, {"lo": 900, "hi": 2_100})

    assert table.num_rows == 1_200
    assert table.column_names == COLUMNS
    expected = _expected(loaded[900:2_100], source.dialect_name)
    assert {c: table.column(c).to_pylist() for c in COLUMNS} == expected


def test_empty_result(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    sql = "SELECT id, name, amount FROM mixed WHERE id < 0"

    table = source.read_arrow(sql)
    assert table.num_rows == 0
    assert table.column_names == ["id", "name", "amount"]
    assert all(pa.types.is_null(t) for t in table.schema.types)
    assert list(source.stream_batches(sql, batch_rows=10)) == []


def test_scalar(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    assert source.scalar("SELECT COUNT(*) FROM mixed WHERE id < :n", {"n": 123}) == 123
    assert source.scalar("SELECT name FROM mixed WHERE id = :i", {"i": 22}) == "강남점 22"
    assert source.scalar("SELECT id FROM mixed WHERE id < 0") is None


def test_table_row_count_quotes_names(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    assert source.table_row_count("mixed") == ROWS
    current = "SELECT current_schema()" if source.dialect_name == "postgresql" else "SELECT DATABASE()"
    assert source.table_row_count("mixed", schema=source.scalar(current)) == ROWS

    # A reserved word and a name with a space and capitals only work when quoted.
    q = '"' if source.dialect_name == "postgresql" else "`"
    with source.engine().begin() as conn:
        for name, n in [("order", 3), ("Sales Daily", 5)]:
            conn.execute(text(f"CREATE TABLE {q}{name}{q} (x integer)"))
            conn.execute(text(f"INSERT INTO {q}{name}{q} (x) VALUES (:x)"), [{"x": i} for i in range(n)])
    assert source.table_row_count("order") == 3
    assert source.table_row_count("Sales Daily") == 5

    with pytest.raises(SqlSourceError, match="no_such_table"):
        source.table_row_count("no_such_table")


def test_query_error_names_the_sql_and_masks_the_password(source: SqlSource) -> None:
    sql = "SELECT no_such_column FROM no_such_table"
    if source.dialect_name == "postgresql":
        # Trust auth here ignores the password, so the query itself is what fails.
        src = SqlSource(url=make_url(source.url).set(password=SECRET).render_as_string(hide_password=False))
        with pytest.raises(SqlSourceError) as info:
            src.read_arrow(sql)
        src.engine().dispose()
        assert "query failed on" in str(info.value)
        assert sql in str(info.value)
    else:
        # MariaDB rejects a wrong password for root: the connection is what fails.
        src = SqlSource(url=make_url(source.url).set(password=SECRET).render_as_string(hide_password=False))
        with pytest.raises(SqlSourceError) as info:
            src.read_arrow(sql)
        assert "cannot connect to" in str(info.value)
        assert "Access denied" in str(info.value)
    assert src.safe_url() in str(info.value)
    assert ":***@" in src.safe_url()
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_streaming_query_error_names_the_sql(source: SqlSource, loaded: list[dict[str, Any]]) -> None:
    sql = "SELECT id FROM mixed WHERE no_such_column = 1"
    with pytest.raises(SqlSourceError) as info:
        list(source.stream_batches(sql, batch_rows=100))
    assert sql in str(info.value)
    assert source.safe_url() in str(info.value)
    assert "no_such_column" in str(info.value).split("\nSQL:")[0]  # the driver's reason, too


def test_connection_refused_masks_the_password() -> None:
    src = SqlSource(url=f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/nowhere")
    with pytest.raises(SqlSourceError) as info:
        src.scalar("SELECT 1")
    assert str(info.value).startswith(
        "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere"
    )
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_safe_url() -> None:
    oracle = SqlSource(url="oracle+oracledb://scott:p%40ss%3Aw%2Frd@db.example:1521/?service_name=ORCL")
    assert oracle.safe_url() == "oracle+oracledb://scott:***@db.example:1521/?service_name=ORCL"
    assert oracle.dialect_name == "oracle"  # the engine is built without connecting
    assert SqlSource(url="mysql+pymysql://root@127.0.0.1:3306/db").safe_url() == (
        "mysql+pymysql://root@127.0.0.1:3306/db"
    )
    garbled = SqlSource(url=f"not a url with {SECRET}")
    assert SECRET not in garbled.safe_url()
    with pytest.raises(SqlSourceError) as info:
        garbled.engine()
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_abandoned_stream_stops_at_once(source: SqlSource) -> None:
    """Stopping after one batch must not read the rest of a large result (PyMySQL would)."""
    huge = {
        "postgresql": "SELECT g, repeat('x', 100) FROM generate_series(1, 10000000) g",
        "mysql": "SELECT seq, REPEAT('x', 100) FROM seq_1_to_10000000",
    }[source.dialect_name]
    batches = source.stream_batches(huge, batch_rows=1_000)
    assert next(batches).num_rows == 1_000
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 2.0  # reading the other 9,999,000 rows takes far longer
    assert source.scalar("SELECT 1") == 1  # and the source is usable afterwards


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    import pyarrow
    from resources.sql_source import SqlSource
    src = SqlSource(url=sys.argv[1])
    src.scalar("SELECT 1")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = sum(b.num_rows for b in src.stream_batches(sys.argv[2], batch_rows=10_000))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(rows, grown // 1024)
    """
)


def test_streaming_memory_is_bounded(source: SqlSource) -> None:
    """500k rows of 1 kB (~550 MB if the driver buffered the result) stream in far less."""
    sql = {
        "postgresql": "SELECT g, repeat('x', 1000) FROM generate_series(1, 500000) g",
        "mysql": "SELECT seq, REPEAT('x', 1000) FROM seq_1_to_500000",
    }[source.dialect_name]
    # A fresh process, so the peak RSS it reports is this read's alone.
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, source.url, sql],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows, grown_mb = map(int, probe.stdout.split())
    assert rows == 500_000
    assert grown_mb < 250, f"peak RSS grew {grown_mb} MB while streaming"
