"""Render a report: run its query on the warehouse, draw its chart with vl-convert, write the files.

    render(report, params, warehouse, out_dir) -> RenderResult

writes `<report id>.png`, `.pdf` and `.csv` (the report's formats) into out_dir, each through a
temporary name then renamed, so a file that exists is complete. An empty or blank render is an
error, never a result: no rows raise EmptyReportError; a chart that draws no mark, or a PNG whose
pixels are all one colour, raises BlankRenderError. A failing query raises ReportQueryError with
the warehouse's message.

The checksum is a SHA-256 over the files in format order. PNG and CSV bytes depend only on the
rows; vl-convert's PDF output is not byte-stable (its font objects come in varying order), so a
PDF makes the checksum differ between two renders of the same rows.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import math
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.snapshots.catalog import Report, bind_sql, get_report, validate_params

if TYPE_CHECKING:
    from resources.warehouse import Warehouse

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SCALE = 2.0  # twice the spec's pixel size: legible in docs and on screens


class RenderError(Exception):
    """A report that could not be rendered; `report_id` names it."""

    def __init__(self, report_id: str, message: str):
        self.report_id = report_id
        super().__init__(message)


class ReportQueryError(RenderError):
    """The warehouse refused the report's query (bad SQL, a missing table, ...)."""


class EmptyReportError(RenderError):
    """The query returned no rows: there is nothing to render."""


class BlankRenderError(RenderError):
    """The chart drew nothing: no marks, or an image of a single colour."""


@dataclass(frozen=True)
class RenderResult:
    report_id: str
    params: dict[str, Any]
    files: dict[str, Path]  # format -> path
    rows: int
    columns: list[str]
    checksum: str  # sha256 hex over the files, in format order
    file_sha256: dict[str, str]
    query_seconds: float
    render_seconds: float
    sql: str = field(repr=False, default="")

    @property
    def timings(self) -> dict[str, float]:
        return {"query_seconds": self.query_seconds, "render_seconds": self.render_seconds}


def render(
    report: Report,
    params: Mapping[str, Any],
    warehouse: Warehouse,
    out_dir: Path | str,
    formats: Sequence[str] | None = None,
) -> RenderResult:
    """Query, draw and write the report's files (`formats`: a subset of the report's; default all)."""
    typed = validate_params(report, params)  # typed values pass through unchanged
    wanted = list(formats) if formats is not None else list(report.formats)
    unknown = [f for f in wanted if f not in report.formats]
    if unknown or not wanted:
        raise ValueError(f"report {report.id!r} renders {report.formats}, not {wanted}")
    ordered: list[str] = [f for f in report.formats if f in wanted]

    sql = bind_sql(report, typed)
    started = time.perf_counter()
    try:
        table = warehouse.query(sql)
    except Exception as exc:  # each engine raises its own classes; the message is what matters
        raise ReportQueryError(
            report.id, f"report {report.id!r}: the query failed: {type(exc).__name__}: {exc}"
        ) from exc
    query_seconds = time.perf_counter() - started
    if table.num_rows == 0:
        raise EmptyReportError(
            report.id, f"report {report.id!r} has no rows for {_describe(typed)}: nothing to render"
        )

    started = time.perf_counter()
    columns = list(table.column_names)
    rows = table.to_pylist()
    outputs: dict[str, bytes] = {}
    if "png" in ordered or "pdf" in ordered:
        spec = chart_spec(report, typed, rows)
        _check_marks(report, spec)
        if "png" in ordered:
            png = _vegalite("png", spec)
            if png_is_blank(png):
                raise BlankRenderError(report.id, f"report {report.id!r}: the PNG is a single colour")
            outputs["png"] = png
        if "pdf" in ordered:
            pdf = _vegalite("pdf", spec)
            if not pdf.startswith(b"%PDF-"):
                raise BlankRenderError(report.id, f"report {report.id!r}: vl-convert returned no PDF")
            outputs["pdf"] = pdf
    if "csv" in ordered:
        outputs["csv"] = rows_csv(columns, rows)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, digests = {}, {}
    total = hashlib.sha256()
    for fmt in ordered:
        data = outputs[fmt]
        path = out / f"{report.id}.{fmt}"
        _write_atomic(path, data)
        files[fmt] = path
        digests[fmt] = hashlib.sha256(data).hexdigest()
        total.update(f"{fmt}:{len(data)}:".encode())
        total.update(data)
    render_seconds = time.perf_counter() - started
    return RenderResult(
        report_id=report.id,
        params=typed,
        files=files,
        rows=len(rows),
        columns=columns,
        checksum=total.hexdigest(),
        file_sha256=digests,
        query_seconds=round(query_seconds, 4),
        render_seconds=round(render_seconds, 4),
        sql=sql,
    )


def render_to(
    report_id: str,
    params: Mapping[str, Any],
    out_path: Path | str,
    warehouse: Warehouse | None = None,
    reports_directory: Path | str | None = None,
) -> RenderResult:
    """Render one report into out_path (its suffix picks the format: .png, .pdf or .csv).

    For scripts, e.g. docs/report-<id>.png from the live warehouse: the warehouse defaults to the
    local DuckDB file (settings.warehouse_path()).
    """
    target = Path(out_path)
    fmt = target.suffix.lstrip(".").lower()
    report = get_report(report_id, reports_directory)
    if warehouse is None:
        from resources.warehouse import DuckDBWarehouse

        warehouse = DuckDBWarehouse()
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        result = render(report, params, warehouse, Path(tmp), formats=[fmt])
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, result.files[fmt].read_bytes())
    return RenderResult(**{**result.__dict__, "files": {fmt: target}})


# --- the chart -------------------------------------------------------------------------------
def chart_spec(report: Report, params: Mapping[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's Vega-Lite spec with the rows as its data (JSON values) and a default title."""
    spec = copy.deepcopy(report.chart)
    spec.setdefault("$schema", VEGA_LITE_SCHEMA)
    spec["data"] = {"values": [{k: json_value(v) for k, v in row.items()} for row in rows]}
    if "title" not in spec:
        subtitle = _describe(params) if any(v is not None for v in params.values()) else ""
        spec["title"] = {"text": report.title, **({"subtitle": subtitle} if subtitle else {})}
    spec.setdefault("background", "white")
    return spec


def json_value(value: Any) -> Any:
    """A query value as Vega reads it: numbers as numbers, times as ISO 8601 in UTC, NULL as null."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime):
        # A naive warehouse timestamp is UTC by the platform's convention.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()  # Vega parses a bare ISO date as UTC midnight
    if isinstance(value, dt_time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def _vegalite(fmt: str, spec: dict[str, Any]) -> bytes:
    import vl_convert  # lazy: its first import and render take most of a second

    if fmt == "png":
        return bytes(vl_convert.vegalite_to_png(spec, scale=PNG_SCALE))
    return bytes(vl_convert.vegalite_to_pdf(spec))


def count_marks(spec: dict[str, Any]) -> int:
    """The items of the chart's data marks (role 'mark': not axes, legends or titles) in its scenegraph."""
    import vl_convert

    def walk(node: Any) -> int:
        if not isinstance(node, dict):
            return 0
        found = node.get("items")
        items: list[Any] = found if isinstance(found, list) else []
        count = len(items) if node.get("marktype") and node.get("role") == "mark" else 0
        return count + sum(walk(item) for item in items)

    return walk(vl_convert.vegalite_to_scenegraph(spec).get("scenegraph"))


def _check_marks(report: Report, spec: dict[str, Any]) -> None:
    try:
        marks = count_marks(spec)
    except ValueError as exc:  # vl-convert's error for an invalid spec
        raise BlankRenderError(report.id, f"report {report.id!r}: the chart does not compile: {exc}") from exc
    if marks == 0:
        raise BlankRenderError(
            report.id,
            f"report {report.id!r}: the chart draws no marks from its {len(spec['data']['values'])} rows"
            " (are the encoded fields all null?)",
        )


# --- PNG check -------------------------------------------------------------------------------
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_is_blank(data: bytes) -> bool:
    """Whether every pixel of a PNG is the same colour, without decoding it fully.

    The image is compared, row by row and in its filtered form, with what the PNG filters
    (None, Sub, Up, Average, Paeth) make of an image of its first pixel's colour; unfiltering
    is a bijection, so equal filtered rows mean equal pixels. Byte operations only: a large
    PNG is checked in milliseconds. 8- and 16-bit, non-interlaced images (what vl-convert writes).
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    pos, idat = len(PNG_SIGNATURE), []
    header: tuple[int, ...] | None = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError("not a PNG: no IHDR or IDAT chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth not in (8, 16) or colour not in _CHANNELS or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = _CHANNELS[colour] * depth // 8
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("corrupt PNG: the image data has the wrong size")

    first = raw[1 : 1 + bpp]  # every filter predicts 0 for the first pixel of the first row
    rest_zero = bytes(stride - bpp)
    minus_half = bytes((p - p // 2) % 256 for p in first)
    plain = first * width
    expected_first = {
        0: plain,
        1: first + rest_zero,
        2: plain,
        3: first + bytes((p - p // 2) % 256 for p in first) * (width - 1),
        4: first + rest_zero,
    }
    expected_next = {
        0: plain,
        1: first + rest_zero,
        2: bytes(stride),
        3: minus_half + rest_zero,
        4: bytes(stride),
    }
    for y in range(height):
        start = y * (stride + 1)
        filter_type = raw[start]
        expected = (expected_first if y == 0 else expected_next).get(filter_type)
        if expected is None:
            raise ValueError(f"corrupt PNG: unknown filter type {filter_type} in row {y}")
        if raw[start + 1 : start + 1 + stride] != expected:
            return False
    return True


# --- CSV -------------------------------------------------------------------------------------
def csv_value(value: Any) -> str:
    """A query value as CSV text: NULL empty, timestamps ISO 8601 (UTC for naive ones), exact decimals."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date | dt_time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def rows_csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_value(row[c]) for c in columns])
    return buffer.getvalue().encode("utf-8")


# --- helpers ---------------------------------------------------------------------------------
def _describe(params: Mapping[str, Any]) -> str:
    shown = [f"{k}={csv_value(v)}" for k, v in params.items() if v is not None]
    return ", ".join(shown) if shown else "no parameters"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
