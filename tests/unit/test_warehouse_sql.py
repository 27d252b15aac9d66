"""Warehouse SQL: the canonical MERGE, DuckDB-to-BigQuery transpiling, identifier checks."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

from resources.warehouse import merge_sql, to_dialect
from resources.warehouse.base import merge_batch


def _bigquery(sql: str) -> str:
    """Transpile to BigQuery and prove BigQuery's parser accepts the result."""
    out = to_dialect(sql, "bigquery")
    sqlglot.parse_one(out, read="bigquery")
    return out


# --- merge_sql ---------------------------------------------------------------
def test_merge_sql_parses_in_both_dialects_with_delete_clauses() -> None:
    sql = merge_sql("cdc.orders", "cdc.orders__staging", ["id"], ["id", "status", "amount"], "_deleted")

    for dialect, text in (("duckdb", sql), ("bigquery", _bigquery(sql))):
        tree = sqlglot.parse_one(text, read=dialect)
        assert isinstance(tree, exp.Merge), dialect
        whens = [w.sql(dialect=dialect) for w in tree.find_all(exp.When)]
        assert len(whens) == 3, (dialect, whens)
        assert "DELETE" in whens[0] and "_deleted" in whens[0]
        assert "UPDATE SET" in whens[1] and "_deleted" not in whens[1]
        assert "INSERT" in whens[2] and "NOT s." in whens[2]

    bq = _bigquery(sql)
    assert bq.startswith("MERGE INTO `cdc`.`orders` AS t USING `cdc`.`orders__staging` AS s")
    assert "ON t.`id` = s.`id`" in bq
    assert "WHEN MATCHED AND s.`_deleted` THEN DELETE" in bq
    # keys are inserted but never updated; the delete flag is never written
    assert "UPDATE SET `status` = s.`status`, `amount` = s.`amount`" in bq
    assert "INSERT (`id`, `status`, `amount`) VALUES (s.`id`, s.`status`, s.`amount`)" in bq


def test_merge_sql_without_delete_column_has_no_delete_or_condition() -> None:
    sql = merge_sql("orders", "staging", ["store_id", "order_id"], ["store_id", "order_id", "total"])

    assert "DELETE" not in sql
    assert "WHEN NOT MATCHED THEN INSERT" in sql
    assert 't."store_id" = s."store_id" AND t."order_id" = s."order_id"' in sql
    tree = sqlglot.parse_one(_bigquery(sql), read="bigquery")
    assert len(list(tree.find_all(exp.When))) == 2


def test_merge_sql_adds_missing_keys_to_insert_and_skips_update_when_only_keys() -> None:
    only_keys = merge_sql("t", "s", ["id"], ["id"])
    assert "UPDATE" not in only_keys
    assert 'INSERT ("id") VALUES (s."id")' in only_keys

    keys_not_listed = merge_sql("t", "s", ["id"], ["v", "_del"], "_del")
    assert 'INSERT ("id", "v") VALUES (s."id", s."v")' in keys_not_listed
    assert 'UPDATE SET "v" = s."v"' in keys_not_listed


def test_merge_sql_three_part_bigquery_names_keep_hyphenated_project() -> None:
    sql = merge_sql("my-project.cdc.orders", "my-project.cdc.orders__staging_ab12", ["id"], ["id", "v"])
    assert "MERGE INTO `my-project`.`cdc`.`orders` AS t" in _bigquery(sql)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"target": "orders; DROP TABLE x"}, "orders; DROP TABLE x"),
        ({"target": "cdc.or-ders"}, "or-ders"),
        ({"target": "a.b.c.d"}, "a.b.c.d"),
        ({"target": "cdc..orders"}, "cdc..orders"),
        ({"staging": "1staging"}, "1staging"),
        ({"keys": ['id"']}, 'id"'),
        ({"columns": ["id", "my column"]}, "my column"),
        ({"columns": ["id", "v`"]}, "v`"),
        ({"delete_column": "del;"}, "del;"),
        ({"delete_column": ""}, ""),
    ],
)
def test_merge_sql_rejects_bad_identifiers_naming_them(kwargs: dict, bad: str) -> None:
    args = {"target": "cdc.orders", "staging": "stage", "keys": ["id"], "columns": ["id", "v"]} | kwargs
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        merge_sql(**args)


def test_merge_sql_rejects_missing_keys_and_key_as_delete_flag() -> None:
    with pytest.raises(ValueError, match="key"):
        merge_sql("t", "s", [], ["v"])
    with pytest.raises(ValueError, match="'id'"):
        merge_sql("t", "s", ["id"], ["id", "v"], delete_column="id")


# --- to_dialect ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("duckdb_sql", "expected"),
    [
        # DATE_TRUNC takes the value first and an unquoted part in BigQuery
        ("SELECT date_trunc('month', CAST(d AS DATE)) AS m FROM t", ["DATE_TRUNC(CAST(d AS DATE), MONTH)"]),
        (
            "SELECT date_trunc('hour', ts) AS h, count(*) FROM events GROUP BY 1",
            ["TIMESTAMP_TRUNC(ts, HOUR)"],
        ),
        (
            "SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq DESC) AS rn"
            " FROM cdc.changes QUALIFY rn = 1",
            ["ROW_NUMBER() OVER (PARTITION BY id ORDER BY seq DESC)", "QUALIFY rn = 1"],
        ),
        (
            "SELECT sum(amount) OVER (PARTITION BY s ORDER BY ts DESC ROWS 5 PRECEDING) FROM sales",
            ["SUM(amount) OVER (PARTITION BY s ORDER BY ts DESC ROWS BETWEEN 5 PRECEDING AND CURRENT ROW)"],
        ),
        (
            "SELECT CAST(a AS BIGINT), CAST(b AS DOUBLE), CAST(c AS VARCHAR), d::INTEGER,"
            " TRY_CAST(e AS DATE), CAST(f AS BOOLEAN) FROM t",
            [
                "CAST(a AS INT64)",
                "CAST(b AS FLOAT64)",
                "CAST(c AS STRING)",
                "CAST(d AS INT64)",
                "SAFE_CAST(e AS DATE)",
                "CAST(f AS BOOL)",
            ],
        ),
        (
            "SELECT lower(name), upper(name), regexp_matches(name, '^a'), length(name), trim(name) FROM t",
            ["LOWER(name)", "UPPER(name)", "REGEXP_CONTAINS(name, '^a')", "LENGTH(name)", "TRIM(name)"],
        ),
        ("SELECT count(*) FILTER (WHERE anomaly) AS n FROM readings", ["COUNTIF(anomaly)"]),
        (
            "SELECT CAST(ts AS TIMESTAMPTZ), TIMESTAMP '2024-01-01 00:00:00' FROM t",
            ["CAST(ts AS TIMESTAMP)", "CAST('2024-01-01 00:00:00' AS DATETIME)"],
        ),
        ('SELECT "order", "select" FROM "cdc"."orders"', ["`order`", "`select`", "FROM `cdc`.`orders`"]),
    ],
)
def test_to_bigquery_transpiles_to_bigquery_forms(duckdb_sql: str, expected: list[str]) -> None:
    out = _bigquery(duckdb_sql)
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in {out!r}"


def test_to_bigquery_keeps_every_statement() -> None:
    out = to_dialect("CREATE TABLE a.b (x BIGINT); INSERT INTO a.b SELECT x::INTEGER FROM c", "bigquery")
    statements = [s for s in sqlglot.parse(out, read="bigquery") if s is not None]
    assert [type(s) for s in statements] == [exp.Create, exp.Insert]
    assert "x INT64" in out


def test_to_duckdb_is_the_identity_and_unknown_dialects_fail() -> None:
    sql = "SELECT date_trunc('day', ts)   FROM t -- as written"
    assert to_dialect(sql, "duckdb") == sql
    with pytest.raises(ValueError, match="bigqery"):
        to_dialect(sql, "bigqery")


# --- merge_batch: what a merge applies ---------------------------------------------
def test_merge_batch_keeps_last_row_per_key_in_input_order() -> None:
    data = pa.table(
        {
            "k": [1, 2, 1, 3, 2, 1],
            "v": ["a", "b", "c", "d", "e", "f"],
            "gone": [0, 1, None, 0, None, 1],  # integers and nulls: the bit/boolean problem
        }
    )
    batch = merge_batch(data, ["k"], "gone")
    assert batch.to_pylist() == [
        {"k": 3, "v": "d", "gone": False},
        {"k": 2, "v": "e", "gone": False},
        {"k": 1, "v": "f", "gone": True},
    ]
    assert batch.schema.field("gone").type == pa.bool_()


def test_merge_batch_composite_keys_and_refusals() -> None:
    data = pa.table({"a": ["x", "x", "y", "x"], "b": [1, 2, 1, 1], "v": [10, 20, 30, 40]})
    assert merge_batch(data, ["a", "b"]).to_pylist() == [
        {"a": "x", "b": 2, "v": 20},
        {"a": "y", "b": 1, "v": 30},
        {"a": "x", "b": 1, "v": 40},
    ]
    with pytest.raises(ValueError, match="'missing'"):
        merge_batch(data, ["missing"])
    with pytest.raises(ValueError, match=r"'a'.*null"):
        merge_batch(pa.table({"a": ["x", None], "v": [1, 2]}), ["a"])
    with pytest.raises(ValueError, match="'bad name'"):
        merge_batch(pa.table({"bad name": [1]}), ["bad name"])
