"""The report catalog: the shipped reports load, broken files say what is wrong (all of them),
request parameters are typed and checked, and parameter values can only ever be values in SQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from resources.warehouse import DuckDBWarehouse
from resources.warehouse.sql import to_dialect
from services.snapshots.catalog import (
    Report,
    ReportCatalogError,
    ReportRequestError,
    bind_sql,
    get_report,
    load_reports,
    resolve_reads,
    sql_literal,
    sql_parameters,
    validate_params,
)

SHIPPED = {"fleet_anomalies_daily", "store_sales_windows", "cdc_table_status", "migration_load_summary"}
GOOD = """\
id: __ID__
title: A test report
description: for the tests
reads: [telemetry/hourly_summary]
parameters:
  day: {type: date, required: true, min: 2020-01-01, description: the day}
  limit: {type: int, default: 10, min: 1, max: 100}
  ratio: {type: float, min: 0, max: 1}
  kind: {type: enum, choices: [a, b], default: a}
  name: {type: string}
  since: {type: timestamp}
sql: |
  SELECT $day AS day, $limit AS lim, $ratio AS ratio, $kind AS kind, $name AS name, $since AS since
  -- a comment with $not_a_parameter and a string: '$neither'
chart: {mark: bar, encoding: {x: {field: day, type: temporal}}}
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def report(tmp_path: Path) -> Report:
    write(tmp_path / "r", "sample", GOOD.replace("__ID__", "sample"))
    return load_reports(tmp_path / "r")["sample"]


# --- the shipped reports ---------------------------------------------------------------------
def test_every_shipped_report_loads_and_its_chart_compiles() -> None:
    import vl_convert

    reports = load_reports()
    assert set(reports) == SHIPPED
    for report in reports.values():
        assert report.source is not None and report.source.name == f"{report.id}.yaml"
        assert report.formats == ["png", "pdf", "csv"] and report.reads
        spec = {**report.chart, "data": {"values": []}}
        assert "marks" in vl_convert.vegalite_to_vega(spec), report.id


def test_shipped_reads_are_real_asset_keys() -> None:
    """Every `reads` pattern matches assets of the code location (data versions read them)."""
    import importlib.util

    from dagster import Definitions

    from resources.settings import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location(
        "platform_definitions", PROJECT_ROOT / "platform/definitions.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs: Definitions = module.defs
    keys = [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()]
    resolved = {r.id: resolve_reads(r, keys) for r in load_reports().values()}
    assert resolved["fleet_anomalies_daily"] == ["telemetry/hourly_summary"]
    assert resolved["store_sales_windows"] == ["store_sales_30min"]
    assert "cdc/main/shop_orders/current" in resolved["cdc_table_status"]
    assert all(k.startswith("cdc/") for k in resolved["cdc_table_status"])
    assert "migration/card_db/raw/customers" in resolved["migration_load_summary"]
    assert "migration/card_db/cleansed/customers" in resolved["migration_load_summary"]


def test_resolve_reads_refuses_a_pattern_matching_nothing(report: Report) -> None:
    assert resolve_reads(report, ["telemetry/hourly_summary", "x/y"]) == ["telemetry/hourly_summary"]
    with pytest.raises(ReportRequestError, match="'telemetry/hourly_summary', which matches no asset"):
        resolve_reads(report, ["telemetry/raw_readings"])


def test_get_report_names_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path / "r", "sample", GOOD.replace("__ID__", "sample"))
    assert get_report("sample", tmp_path / "r").title == "A test report"
    with pytest.raises(ReportRequestError, match=r"unknown report 'nope'; known reports: \['sample'\]"):
        get_report("nope", tmp_path / "r")


def test_the_fingerprint_follows_the_definition_not_its_layout(tmp_path: Path) -> None:
    base = load_reports(write(tmp_path / "a", "sample", GOOD.replace("__ID__", "sample")).parent)["sample"]
    # The same definition written differently: keys reordered, flow style turned to block style.
    relaid = GOOD.replace("__ID__", "sample").replace(
        "chart: {mark: bar, encoding: {x: {field: day, type: temporal}}}",
        "chart:\n  encoding:\n    x: {type: temporal, field: day}\n  mark: bar",
    )
    assert (
        load_reports(write(tmp_path / "b", "sample", relaid).parent)["sample"].fingerprint == base.fingerprint
    )
    edits = {
        "sql": GOOD.replace("AS lim,", "AS row_limit,"),
        "chart": GOOD.replace("mark: bar", "mark: line"),
        "parameter": GOOD.replace("default: 10", "default: 20"),
        "formats": GOOD + "formats: [png]\n",
    }
    for name, text in edits.items():
        edited = load_reports(write(tmp_path / name, "sample", text.replace("__ID__", "sample")).parent)[
            "sample"
        ]
        assert edited.fingerprint != base.fingerprint, name


# --- validation of definitions ---------------------------------------------------------------
BROKEN = {
    "unknown_field": (GOOD + "colour: red\n", "field colour: Extra inputs are not permitted"),
    "bad_type": (
        GOOD.replace("type: date, required", "type: datetime, required"),
        "field parameters.day.type: Input should be 'date', 'timestamp'",
    ),
    "undeclared": (
        GOOD.replace("AS since\n", "AS since, $extra AS e\n"),
        "the SQL uses undeclared parameters ['extra']",
    ),
    "unused": (
        GOOD.replace("$name AS name, ", ""),
        "parameters ['name'] are declared but the SQL never uses them",
    ),
    "chart_list": (
        GOOD.replace("chart: {", "chart: [").replace("}}\n", "}]\n"),
        "field chart: Value error, the chart must be a Vega-Lite spec (a mapping), not list",
    ),
    "chart_data": (
        GOOD.replace("chart: {mark", "chart: {data: {values: []}, mark"),
        "remove ['data']: the chart's data is the query's rows",
    ),
    "bad_format": (GOOD + "formats: [png, gif]\n", "field formats.1: Input should be 'png', 'pdf' or 'csv'"),
    "bad_default": (
        GOOD.replace("default: 10, min: 1", "default: 500, min: 1"),
        "field parameters.limit: Value error, 500 is above the maximum 100",
    ),
    "enum_no_choices": (
        GOOD.replace("choices: [a, b], default: a", "default: a"),
        "an enum parameter needs a non-empty `choices` list",
    ),
    "min_on_string": (
        GOOD.replace("name: {type: string}", "name: {type: string, min: 1}"),
        "`min` applies to date, timestamp, int, float parameters, not string",
    ),
    "no_reads": (GOOD.replace("reads: [telemetry/hourly_summary]", "reads: []"), "field reads:"),
    "bad_read": (GOOD.replace("telemetry/hourly_summary", "telemetry//x y"), "is not an asset key"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_definition_names_file_and_field(tmp_path: Path, case: str) -> None:
    text, message = BROKEN[case]
    path = write(tmp_path / "r", case, text.replace("__ID__", case))
    with pytest.raises(ReportCatalogError) as caught:
        load_reports(tmp_path / "r")
    assert str(path) in str(caught.value)
    assert message in str(caught.value), str(caught.value)


def test_bad_ids_and_a_file_name_that_differs(tmp_path: Path) -> None:
    write(tmp_path / "r", "Bad_Id", GOOD.replace("__ID__", "Bad_Id"))
    write(tmp_path / "r", "other", GOOD.replace("__ID__", "sample"))
    with pytest.raises(ReportCatalogError) as caught:
        load_reports(tmp_path / "r")
    text = str(caught.value)
    assert "Bad_Id.yaml: field id: Value error, 'Bad_Id' is not a report id" in text
    assert "other.yaml: field id: 'sample' must match the file name other.yaml" in text


def test_all_broken_files_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path / "r", "a_ok", GOOD.replace("__ID__", "a_ok"))
    write(tmp_path / "r", "b_yaml", "id: [unclosed\n")
    write(tmp_path / "r", "c_field", GOOD.replace("__ID__", "c_field") + "colour: red\n")
    write(tmp_path / "r", "d_list", "- just a list\n")
    with pytest.raises(ReportCatalogError) as caught:
        load_reports(tmp_path / "r")
    errors = caught.value.errors
    assert [e.split(":")[0].rsplit("/", 1)[-1] for e in errors] == [
        "b_yaml.yaml",
        "c_field.yaml",
        "d_list.yaml",
    ]
    assert "not valid YAML" in errors[0] and "expected a mapping" in errors[2]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportCatalogError, match="does not exist"):
        load_reports(tmp_path / "nowhere")


# --- request parameters ----------------------------------------------------------------------
def test_validate_params_types_and_defaults(report: Report) -> None:
    today = datetime.now(UTC).date()
    got = validate_params(
        report, {"day": today.isoformat(), "ratio": "0.25", "since": "2026-03-01T09:00:00+09:00"}
    )
    assert got == {
        "day": today,
        "limit": 10,
        "ratio": 0.25,
        "kind": "a",
        "name": None,
        "since": datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
    }
    assert got["since"].tzinfo == UTC and list(got) == list(report.parameters)
    # Typed values pass unchanged: validating twice gives the same dict.
    assert validate_params(report, got) == got
    aware = datetime(2026, 3, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert validate_params(report, {"day": today, "since": aware, "limit": "7"})["since"] == datetime(
        2026, 3, 1, 17, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "parameter 'day' is required (date): the day"),
        ({"day": "2026-13-01"}, "parameter 'day': expected a date (YYYY-MM-DD), got '2026-13-01'"),
        ({"day": datetime(2026, 1, 1, tzinfo=UTC)}, "parameter 'day': expected a date"),
        ({"day": "2019-12-31"}, "parameter 'day': 2019-12-31 is below the minimum 2020-01-01"),
        ({"day": "2026-01-01", "limit": 0}, "parameter 'limit': 0 is below the minimum 1"),
        ({"day": "2026-01-01", "limit": 101}, "parameter 'limit': 101 is above the maximum 100"),
        ({"day": "2026-01-01", "limit": 1.5}, "parameter 'limit': expected an integer, got 1.5"),
        ({"day": "2026-01-01", "limit": True}, "parameter 'limit': expected an integer, got True"),
        ({"day": "2026-01-01", "ratio": "nan"}, "parameter 'ratio': expected a finite number"),
        ({"day": "2026-01-01", "ratio": 1.5}, "parameter 'ratio': 1.5 is above the maximum 1.0"),
        ({"day": "2026-01-01", "kind": "c"}, "parameter 'kind': 'c' is not one of ['a', 'b']"),
        ({"day": "2026-01-01", "name": 5}, "parameter 'name': expected a string, got int 5"),
        ({"day": "2026-01-01", "since": "2026-03-01T09:00:00"}, "parameter 'since': timestamp"),
        ({"day": "2026-01-01", "colour": "red"}, "unknown parameter(s) ['colour']"),
    ],
)
def test_validate_params_refuses_with_a_reason(report: Report, raw: dict, message: str) -> None:
    with pytest.raises(ReportRequestError) as caught:
        validate_params(report, raw)
    assert isinstance(caught.value, ValueError)
    assert "report 'sample'" in str(caught.value) and message in str(caught.value), str(caught.value)


# --- SQL binding -----------------------------------------------------------------------------
def test_sql_parameters_skip_strings_identifiers_and_comments() -> None:
    sql = """SELECT '$a' AS "$b", $c -- $d\n /* $e */ FROM t WHERE x = $c AND y = 'it''s $f' AND z = $g"""
    assert sql_parameters(sql) == ["c", "g"]


def test_literals_per_type() -> None:
    assert sql_literal("date", date(2026, 3, 1)) == "DATE '2026-03-01'"
    assert sql_literal("timestamp", datetime(2026, 3, 1, 9, tzinfo=UTC)) == (
        "CAST('2026-03-01 09:00:00+00:00' AS TIMESTAMPTZ)"
    )
    assert sql_literal("int", -5) == "(-5)" and sql_literal("float", 0.25) == "0.25"
    assert sql_literal("string", "it's") == "'it''s'"
    assert sql_literal("date", None) == "CAST(NULL AS DATE)"
    for kind, bad in [
        ("date", "2026-03-01"),
        ("int", "1; DROP TABLE t"),
        ("string", 5),
        ("float", float("inf")),
    ]:
        with pytest.raises(TypeError):
            sql_literal(kind, bad)


INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE secrets; --",
    "x\\'; DROP TABLE secrets; --",
    "$kind",
    "*/ OR 1=1 /*",
    "東京 ☕ \n -- newline",
]


LOOKUP = """\
id: lookup
title: Lookup
reads: [x/y]
parameters:
  name: {type: string, required: true}
sql: SELECT name, secret FROM secrets WHERE name = $name
chart: {mark: bar}
"""


@pytest.mark.parametrize("attempt", INJECTIONS)
def test_a_string_parameter_is_inert_in_duckdb(tmp_path: Path, attempt: str) -> None:
    warehouse = DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))
    warehouse.execute("CREATE TABLE secrets (name VARCHAR, secret VARCHAR)")
    warehouse.execute("INSERT INTO secrets VALUES ('alice', 's1'), ('bob', 's2')")
    write(tmp_path / "r", "lookup", LOOKUP)
    report = load_reports(tmp_path / "r")["lookup"]
    params = validate_params(report, {"name": attempt})
    rows = warehouse.query(bind_sql(report, params)).to_pylist()
    assert rows == []  # no name matches: the value was compared, never run
    assert warehouse.query("SELECT count(*) AS n FROM secrets").to_pylist() == [{"n": 2}]
    # The same value matches itself when stored: it reached the engine intact.
    warehouse.execute(f"INSERT INTO secrets VALUES ({sql_literal('string', attempt)}, 's3')")
    assert warehouse.query(bind_sql(report, params)).to_pylist() == [{"name": attempt, "secret": "s3"}]


def test_a_string_parameter_stays_a_string_for_bigquery(report: Report) -> None:
    params = validate_params(report, {"day": "2026-01-01", "name": "x\\'; DROP TABLE t; --"})
    bigquery = to_dialect(bind_sql(report, params), "bigquery")
    assert "'x\\\\\\'; DROP TABLE t; --' AS name" in bigquery


def test_nul_characters_are_refused(report: Report) -> None:
    with pytest.raises(ReportRequestError, match="NUL"):
        validate_params(report, {"day": "2026-01-01", "name": "a\x00b"})


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("int", 2**70, "outside the 64-bit integer range"),
        ("int", "9223372036854775808", "outside the 64-bit integer range"),
        ("float", 10**400, "expected a finite number"),
        ("float", "1e400", "expected a finite number"),
    ],
)
def test_numbers_too_big_for_the_warehouse_are_refused(kind: str, value: object, message: str) -> None:
    from services.snapshots.catalog import _coerce

    with pytest.raises(ValueError, match=message):
        _coerce(kind, value)
    assert _coerce("int", -(2**63)) == -(2**63)
