"""Rendering reports against a real DuckDB warehouse whose tables the domains' own code made.

Each shipped report runs on tables written the way its domain writes them:
  telemetry    curated hourly-summary Parquet in a local lake (the schema telemetry declares) and
               the warehouse views of telemetry/sql_tables (create_duckdb_views)
  store_sales  window rows built by windows.finish_row, written with the asset's replace_where
  cdc          DMS change files in the lake applied by the CDC loader (apply_pending), which
               writes cdc_state.files, .quarantine and .blocks
  migration    load-status rows through assets.shared.load_status.record_status, the function
               the migration assets record every load with
Expected figures are computed here from the inputs the test generates (relative to today).
"""

from __future__ import annotations

import csv
import io
import random
import struct
import zlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from assets.cdc.dms import CHANGE_SEQ_COLUMN, OP_COLUMN, TIMESTAMP_COLUMN, cdc_file_name, change_seq
from assets.cdc.mapping import CdcTable, ClusterSpec, TableSpec
from resources.lake import LakePartition, LocalLake, Tier
from resources.lake.paths import dms_object_key
from resources.warehouse import DuckDBWarehouse
from services.snapshots.catalog import bind_sql, load_reports, validate_params
from services.snapshots.render import (
    PNG_SIGNATURE,
    BlankRenderError,
    EmptyReportError,
    ReportQueryError,
    render,
    render_to,
)

REPORTS = load_reports()


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "warehouse.duckdb"), lock_timeout=10)


# --- checks of the files ---------------------------------------------------------------------
def png_colours(data: bytes) -> int:
    """Distinct pixel values of an 8-bit RGBA PNG, decoded here independently of the renderer's check
    (numpy for the None, Sub and Up filters; Average and Paeth byte by byte)."""
    import numpy as np

    assert data.startswith(PNG_SIGNATURE)
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, *_ = header
    assert (depth, colour) == (8, 6), "vl-convert writes 8-bit RGBA"
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width * 4 + 1)
    image = np.zeros((height, width, 4), np.uint8)
    prior = np.zeros((width, 4), np.uint8)
    for y in range(height):
        f, line = raw[y, 0], raw[y, 1:].reshape(width, 4)
        if f == 0:
            row = line.copy()
        elif f == 1:
            row = (np.cumsum(line, axis=0, dtype=np.uint64) % 256).astype(np.uint8)
        elif f == 2:
            row = line + prior  # uint8 arithmetic wraps, as the filter does
        else:
            row = np.zeros((width, 4), np.uint8)
            for x in range(width):
                for ch in range(4):
                    a = int(row[x - 1, ch]) if x else 0
                    b, c = int(prior[x, ch]), int(prior[x - 1, ch]) if x else 0
                    if f == 3:
                        pred = (a + b) // 2
                    else:
                        p = a + b - c
                        pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                        pred = a if pa_ <= pb and pa_ <= pc else b if pb <= pc else c
                    row[x, ch] = (int(line[x, ch]) + pred) % 256
        image[y] = row
        prior = row
    return len(np.unique(image.reshape(-1, 4), axis=0))


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return rows[0], rows[1:]


def same_cell(cell: str, value: Any) -> bool:
    """Whether a CSV cell holds the query's value (parsed back, not re-formatted the same way)."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value).lower()
    if isinstance(value, Decimal):
        return Decimal(cell) == value
    if isinstance(value, float):
        return float(cell) == value
    if isinstance(value, int):
        return int(cell) == value
    if isinstance(value, datetime):
        return datetime.fromisoformat(cell) == value
    if isinstance(value, date):
        return date.fromisoformat(cell) == value
    return cell == value


def assert_files(result: Any, warehouse: DuckDBWarehouse, report_id: str, params: dict) -> list[dict]:
    """PNG real and not blank, PDF real, CSV equal to the query's rows; returns the rows."""
    report = REPORTS[report_id]
    png = result.files["png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and png_colours(png) > 2
    assert result.files["pdf"].read_bytes().startswith(b"%PDF-")
    rows = warehouse.query(bind_sql(report, validate_params(report, params))).to_pylist()
    header, cells = read_csv(result.files["csv"])
    assert header == result.columns == list(rows[0])
    assert len(cells) == len(rows) == result.rows
    for line, row in zip(cells, rows, strict=True):
        assert all(same_cell(c, row[k]) for c, k in zip(line, header, strict=True)), (line, row)
    assert {p.name for p in result.files.values()} == {f"{report_id}.{f}" for f in ("png", "pdf", "csv")}
    assert result.query_seconds >= 0 and result.render_seconds > 0 and len(result.checksum) == 64
    return rows


# --- telemetry: fleet anomalies per day ------------------------------------------------------
def write_summary(lake: LocalLake, day: date, hour: int, rows: list[tuple[str, int, int, float]]) -> None:
    from assets.telemetry.sql_catalog import summary_schema

    start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    table = pa.Table.from_pylist(
        [
            {
                "device_id": device,
                "hour": start,
                "record_count": count,
                "avg_temperature": 21.0,
                "min_temperature": 18.5,
                "max_temperature": 26.0,
                "temp_stddev": 1.5,
                "anomaly_count": anomalies,
                "data_quality_score": quality,
                "late_count": 0,
                "duplicate_count": 0,
            }
            for device, count, anomalies, quality in rows
        ],
        schema=summary_schema(),
    )
    lake.write_parquet(table, Tier.CURATED, "telemetry", "hourly_summary", LakePartition(day, hour))


def test_fleet_anomalies_daily(local_lake: LocalLake, warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    from assets.telemetry.sql_catalog import create_duckdb_views

    create_duckdb_views(local_lake, warehouse)
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=d) for d in (3, 2, 1)]
    rng = random.Random(11)
    anomalies: dict[date, int] = {}
    readings: dict[date, int] = {}
    flagged: dict[date, set[str]] = {}
    for day in days:
        for hour in (0, 13, 23):  # the day's first and last hours stay on their UTC day
            rows = [(f"dev-{i}", 60, rng.choice([0, 0, 1, 3]), rng.choice([0.5, 0.99])) for i in range(4)]
            write_summary(local_lake, day, hour, rows)
            kept = [r for r in rows if r[3] >= 0.9]  # min_quality below
            anomalies[day] = anomalies.get(day, 0) + sum(r[2] for r in kept)
            readings[day] = readings.get(day, 0) + sum(r[1] for r in kept)
            flagged.setdefault(day, set()).update(r[0] for r in kept if r[2] > 0)
    # The day before the range is not in the report.
    write_summary(local_lake, days[0] - timedelta(days=1), 23, [("dev-0", 60, 9, 1.0)])

    params = {"start": days[0].isoformat(), "end": days[-1].isoformat(), "min_quality": 0.9}
    result = render(REPORTS["fleet_anomalies_daily"], params, warehouse, tmp_path / "out")
    rows = assert_files(result, warehouse, "fleet_anomalies_daily", params)
    got = {r["day"]: (r["anomalies"], r["readings"], r["devices_with_anomalies"]) for r in rows}
    assert got == {d: (anomalies[d], readings[d], len(flagged[d])) for d in days if readings[d]}

    # No summary in the range: an empty report is an error naming the report and its parameters.
    long_ago = {"start": "2001-01-01", "end": "2001-01-31"}
    with pytest.raises(EmptyReportError, match=r"fleet_anomalies_daily.*start=2001-01-01"):
        render(REPORTS["fleet_anomalies_daily"], long_ago, warehouse, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


# --- store sales per window ------------------------------------------------------------------
def write_windows(
    warehouse: DuckDBWarehouse, start: datetime, figures: dict[int, tuple[str, str, int]]
) -> None:
    """One window's rows the way store_sales_30min writes them (finish_row, replace_where)."""
    from assets.store_sales.windows import TABLE, finish_row, rows_table, window_predicate

    rows = [
        finish_row(
            {
                "store_id": store,
                "gross_sales": Decimal(gross),
                "refund_amount": Decimal(refund),
                "refund_count": 1 if Decimal(refund) else 0,
                "order_count": orders,
                "product_count": orders * 2,
                "late_changes": 0,
            },
            start,
            start + timedelta(minutes=31),
        )
        for store, (gross, refund, orders) in figures.items()
    ]
    warehouse.replace_where(TABLE, rows_table(rows), window_predicate(start))


def test_store_sales_windows_and_checksum(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    report = REPORTS["store_sales_windows"]
    day = datetime.now(UTC).date() - timedelta(days=1)
    w0 = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)
    w1 = w0 + timedelta(minutes=30)
    write_windows(warehouse, w0, {1: ("120.55", "0", 3), 2: ("80.10", "10.05", 2)})
    write_windows(warehouse, w1, {1: ("33.33", "3.33", 1)})
    write_windows(warehouse, w0 - timedelta(days=1), {1: ("999.99", "0", 9)})  # another day

    first = render(report, {"day": day}, warehouse, tmp_path / "a")
    rows = assert_files(first, warehouse, "store_sales_windows", {"day": day})
    assert [(r["window_start"], r["store_id"], r["net_sales"]) for r in rows] == [
        (w0, 1, Decimal("120.55")),
        (w0, 2, Decimal("70.05")),
        (w1, 1, Decimal("30.00")),
    ]
    one_store = render(report, {"day": day, "store_id": 2}, warehouse, tmp_path / "b")
    assert one_store.rows == 1

    # The checksum follows the data: PNG and CSV are byte-stable for the same rows (vl-convert's
    # PDF is not), and a late refund re-aggregating a window changes both.
    stable = ["png", "csv"]
    again = render(report, {"day": day}, warehouse, tmp_path / "c", formats=stable)
    same = render(report, {"day": day}, warehouse, tmp_path / "d", formats=stable)
    assert again.checksum == same.checksum and set(again.files) == {"png", "csv"}
    write_windows(warehouse, w1, {1: ("33.33", "13.33", 1)})
    changed = render(report, {"day": day}, warehouse, tmp_path / "e", formats=stable)
    assert changed.checksum != again.checksum
    assert changed.file_sha256["csv"] != again.file_sha256["csv"]
    assert changed.file_sha256["png"] != again.file_sha256["png"]


# --- CDC table status ------------------------------------------------------------------------
def cdc_table(name: str) -> CdcTable:
    cluster = ClusterSpec(name="main", local_url="mysql+pymysql://root@127.0.0.1:3306", server_id=7)
    spec = TableSpec(cluster="main", database="shop", table=name, primary_key=["id"])
    return CdcTable(cluster, spec, True, Path("tests/reports.yaml"))


def write_changes(lake: LocalLake, table: CdcTable, changes: list[tuple[str, int, int, datetime]]) -> None:
    """A CDC file as the capture writes it: (op, seq, id, commit time) per change."""
    import pyarrow.parquet as pq

    data = pa.table(
        {
            OP_COLUMN: pa.array([c[0] for c in changes], pa.string()),
            TIMESTAMP_COLUMN: pa.array([c[3] for c in changes], pa.timestamp("us", tz="UTC")),
            CHANGE_SEQ_COLUMN: pa.array([change_seq(1, c[1], 0) for c in changes], pa.string()),
            "id": pa.array([c[2] for c in changes], pa.int64()),
            "name": pa.array([f"n{c[2]}" for c in changes], pa.string()),
        }
    )
    at = max(c[3] for c in changes)
    buffer = io.BytesIO()
    pq.write_table(data, buffer)
    key = dms_object_key("main", table.database, table.table, at.date(), cdc_file_name(at))
    lake.put_bytes(key, buffer.getvalue())


def test_cdc_table_status(local_lake: LocalLake, warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    from assets.cdc.apply import apply_pending

    now = datetime.now(UTC).replace(microsecond=0)
    orders, stock = cdc_table("orders"), cdc_table("stock")
    old = now - timedelta(hours=6)
    write_changes(local_lake, orders, [("I", 1, 1, old), ("I", 2, 2, old)])
    recent = now - timedelta(minutes=10)
    write_changes(local_lake, orders, [("U", 3, 1, recent), ("D", 4, 2, recent), ("I", 5, 3, recent)])
    write_changes(local_lake, stock, [("I", 6, 1, recent)])
    local_lake.put_bytes(  # a file the loader cannot read: quarantined
        dms_object_key("main", "shop", "stock", now.date(), cdc_file_name(now)), b"not parquet"
    )
    for table in (orders, stock):
        apply_pending(local_lake, warehouse, table, run_id="report-test")

    since = (now - timedelta(hours=1)).isoformat()
    result = render(REPORTS["cdc_table_status"], {"since": since}, warehouse, tmp_path / "out")
    rows = assert_files(result, warehouse, "cdc_table_status", {"since": since})
    got = {r["target"]: (r["inserts"], r["updates"], r["deletes"], r["quarantined"]) for r in rows}
    assert got == {orders.target: (1, 1, 1, 0), stock.target: (1, 0, 0, 1)}
    assert rows[0]["last_change"] == recent.replace(tzinfo=None)  # cdc_state keeps naive UTC
    everything = render(
        REPORTS["cdc_table_status"], {"since": old - timedelta(seconds=1)}, warehouse, tmp_path / "all"
    )
    assert everything.rows == 2
    header, cells = read_csv(everything.files["csv"])
    assert cells[0][header.index("inserts")] == "3"


# --- on-prem load summary --------------------------------------------------------------------
def test_migration_load_summary(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    from assets.shared.load_status import record_status

    loads = [
        ("card_db.customers", "raw", "2026-03-01", "loaded", 1200, None),
        ("card_db.customers", "raw", "2026-03-02", "loaded", 800, None),
        ("card_db.customers", "cleansed", "2026-03-01", "loaded", 1190, None),
        ("card_db.accounts", "raw", "all", "failed", 0, RuntimeError("ORA-01555: snapshot too old")),
        ("card_db.accounts", "cleansed", "all", "loaded", 450, None),
    ]
    for dataset, stage, partition, outcome, rows, error in loads:
        record_status(
            warehouse,
            domain="migration",
            dataset=dataset,
            stage=stage,
            partition=partition,
            outcome=outcome,
            rows=rows,
            duration_s=1.25,
            error=error,
        )
    record_status(  # another domain's row is not in the report
        warehouse,
        domain="cdc",
        dataset="main.orders",
        stage="load",
        partition="all",
        outcome="loaded",
        rows=5,
        duration_s=0.1,
    )
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    result = render(REPORTS["migration_load_summary"], {"since": since}, warehouse, tmp_path / "out")
    rows = assert_files(result, warehouse, "migration_load_summary", {"since": since})
    got = {(r["dataset"], r["stage"]): (r["loads"], r["not_loaded"], r["rows"]) for r in rows}
    assert got == {
        ("card_db.accounts", "cleansed"): (1, 0, 450),
        ("card_db.accounts", "raw"): (1, 1, 0),
        ("card_db.customers", "cleansed"): (1, 0, 1190),
        ("card_db.customers", "raw"): (2, 0, 2000),
    }
    failed = next(r for r in rows if r["dataset"] == "card_db.accounts" and r["stage"] == "raw")
    assert "ORA-01555" in failed["last_error"]
    raw_only = render(
        REPORTS["migration_load_summary"], {"since": since, "stage": "raw"}, warehouse, tmp_path / "raw"
    )
    assert raw_only.rows == 2
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    with pytest.raises(EmptyReportError, match="migration_load_summary"):
        render(REPORTS["migration_load_summary"], {"since": later}, warehouse, tmp_path / "none")


# --- failures and odd values -----------------------------------------------------------------
def write_report(directory: Path, report_id: str, sql: str, chart: str, parameters: str = "{}") -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{report_id}.yaml").write_text(
        f"id: {report_id}\ntitle: Test {report_id}\nreads: [test/asset]\n"
        f"parameters: {parameters}\nsql: |\n  {sql}\nchart: {chart}\n",
        encoding="utf-8",
    )


BAR = "{mark: bar, encoding: {x: {field: label, type: nominal}, y: {field: amount, type: quantitative}}}"


def test_broken_query_raises_query_error_naming_the_report(
    warehouse: DuckDBWarehouse, tmp_path: Path
) -> None:
    folder = tmp_path / "reports"
    write_report(folder, "missing_table", "SELECT label, amount FROM no_such_table", BAR)
    write_report(folder, "bad_sql", "SELEC label FROM", BAR)
    reports = load_reports(folder)
    with pytest.raises(ReportQueryError, match=r"missing_table.*no_such_table") as caught:
        render(reports["missing_table"], {}, warehouse, tmp_path / "out")
    assert caught.value.report_id == "missing_table"
    with pytest.raises(ReportQueryError, match=r"'bad_sql'.*(?i:syntax)"):
        render(reports["bad_sql"], {}, warehouse, tmp_path / "out")


def test_blank_charts_are_failures(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    # Rows, but every encoded value is NULL: Vega drops them and draws no mark.
    write_report(folder, "all_null", "SELECT 'a' AS label, CAST(NULL AS DOUBLE) AS amount", BAR)
    # Marks, drawn white on white with no axes or title: the image is one colour.
    white = (
        "{title: '', mark: {type: bar, color: white}, encoding: {x: {field: label, type: nominal, axis: null},"
        " y: {field: amount, type: quantitative, axis: null}}, config: {view: {stroke: null}}}"
    )
    write_report(folder, "white_on_white", "SELECT 'a' AS label, 5 AS amount", white)
    reports = load_reports(folder)
    with pytest.raises(BlankRenderError, match=r"all_null.*no marks"):
        render(reports["all_null"], {}, warehouse, tmp_path / "a")
    with pytest.raises(BlankRenderError, match=r"white_on_white.*single colour"):
        render(reports["white_on_white"], {}, warehouse, tmp_path / "b")
    # Without the PNG, the same report has no pixels to check: CSV alone renders.
    assert render(reports["white_on_white"], {}, warehouse, tmp_path / "c", formats=["csv"]).rows == 1


def test_odd_value_types_render_and_export(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    sql = (
        "SELECT * FROM (VALUES"
        " ('Zürich ☕ 東京', CAST(12.345 AS DECIMAL(18, 3)), DATE '2026-01-31',"
        "  TIMESTAMPTZ '2026-01-31 23:30:00+00', NULL::VARCHAR, true, $tag),"
        " ('naïve, \"quoted\"', CAST(-0.5 AS DECIMAL(18, 3)), DATE '2026-02-01',"
        "  TIMESTAMPTZ '2026-02-01 00:15:00+00', 'x', false, $tag)"
        ") AS t(label, amount, day, at_time, note, flag, tag)"
    )
    chart = (
        "{mark: {type: bar, tooltip: true}, encoding: {x: {field: label, type: nominal},"
        " y: {field: amount, type: quantitative}, color: {field: at_time, type: temporal}}}"
    )
    write_report(folder, "odd_types", sql, chart, "{tag: {type: string, default: 'd''or ✓'}}")
    report = load_reports(folder)["odd_types"]
    result = render(report, {}, warehouse, tmp_path / "out")
    header, cells = read_csv(result.files["csv"])
    assert header == ["label", "amount", "day", "at_time", "note", "flag", "tag"]
    assert cells[0][0] == "Zürich ☕ 東京" and cells[1][0] == 'naïve, "quoted"'
    assert Decimal(cells[0][1]) == Decimal("12.345") and Decimal(cells[1][1]) == Decimal("-0.500")
    assert date.fromisoformat(cells[0][2]) == date(2026, 1, 31)
    assert datetime.fromisoformat(cells[0][3]) == datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    assert (cells[0][4], cells[1][4], cells[0][5], cells[0][6]) == ("", "x", "true", "d'or ✓")
    png = result.files["png"].read_bytes()
    assert png_colours(png) > 2
    assert result.files["pdf"].read_bytes().startswith(b"%PDF-")


def test_render_to_writes_one_file(warehouse: DuckDBWarehouse, tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    write_report(folder, "small", "SELECT 'a' AS label, 3 AS amount UNION ALL SELECT 'b', 5", BAR)
    out = tmp_path / "docs" / "report-small.png"
    result = render_to("small", {}, out, warehouse=warehouse, reports_directory=folder)
    assert result.files == {"png": out} and out.read_bytes().startswith(PNG_SIGNATURE)
    assert list(out.parent.iterdir()) == [out]
    csv_out = tmp_path / "docs" / "small.csv"
    render_to("small", {}, csv_out, warehouse=warehouse, reports_directory=folder)
    assert read_csv(csv_out) == (["label", "amount"], [["a", "3"], ["b", "5"]])
