"""EDA profile of a warehouse table: per column null rate, distinct count, min, max, top values,
and a histogram image of each numeric column (Vega-Lite rendered to PNG, no browser)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from resources.warehouse import Warehouse
from resources.warehouse.sql import quote_identifier, quote_table

TOP_VALUES = 5
BINS = 20


@dataclass
class ColumnProfile:
    name: str
    type: str
    null_rate: float
    distinct: int
    min: Any
    max: Any
    top_values: list[tuple[Any, int]] = field(default_factory=list)


def profile_table(
    warehouse: Warehouse, table: str, withhold: set[str] | frozenset[str] = frozenset()
) -> tuple[int, list[ColumnProfile]]:
    """Column statistics; `withhold` columns (keys, PII) get counts only, so no identifier
    ends up in Dagster's event log, from which an erasure could not remove it."""
    import pyarrow as pa

    table = quote_table(table)
    sample = warehouse.query(f"SELECT * FROM {table} LIMIT 0")
    selects = ["count(*) AS n"]
    for i, f in enumerate(sample.schema):
        c = quote_identifier(f.name)
        selects += [f"count({c}) AS nn_{i}", f"count(DISTINCT {c}) AS d_{i}"]
        if f.name not in withhold and not (pa.types.is_boolean(f.type) or pa.types.is_binary(f.type)):
            selects += [f"min({c}) AS mn_{i}", f"max({c}) AS mx_{i}"]
    stats = warehouse.query(f"SELECT {', '.join(selects)} FROM {table}").to_pylist()[0]
    total = int(stats["n"])
    profiles = []
    for i, f in enumerate(sample.schema):
        top = (
            []
            if f.name in withhold
            else warehouse.query(
                f"SELECT {quote_identifier(f.name)} AS v, count(*) AS c FROM {table}"
                f" WHERE {quote_identifier(f.name)} IS NOT NULL "
                f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_VALUES}"
            ).to_pylist()
        )
        profiles.append(
            ColumnProfile(
                name=f.name,
                type=str(f.type),
                null_rate=round(1 - stats[f"nn_{i}"] / total, 4) if total else 0.0,
                distinct=int(stats[f"d_{i}"]),
                min=stats.get(f"mn_{i}"),
                max=stats.get(f"mx_{i}"),
                top_values=[(r["v"], int(r["c"])) for r in top],
            )
        )
    return total, profiles


def numeric_columns(profiles: list[ColumnProfile]) -> list[str]:
    """Numeric columns with a range to draw (withheld columns have none)."""
    numeric = ("int", "decimal", "double", "float")
    return [p.name for p in profiles if p.type.startswith(numeric) and p.min is not None and p.min != p.max]


def histogram_png(warehouse: Warehouse, table: str, column: str, low: Any, high: Any) -> bytes:
    """Equal-width histogram of a numeric column, computed in the warehouse, rendered to PNG."""
    import vl_convert

    low_f, high_f = float(low), float(high)
    width = (high_f - low_f) / BINS or 1.0
    c = quote_identifier(column)
    rows = warehouse.query(
        f"SELECT least(CAST(floor((CAST({c} AS DOUBLE) - {low_f}) / {width}) AS BIGINT), {BINS - 1})"
        f" AS bucket, count(*) AS n FROM {quote_table(table)} WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    values = [{"from": round(low_f + r["bucket"] * width, 4), "rows": r["n"]} for r in rows]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": f"{table}.{column}",
        "width": 360,
        "height": 160,
        "data": {"values": values},
        "mark": "bar",
        "encoding": {
            "x": {"field": "from", "type": "ordinal", "title": column, "axis": {"labelAngle": -45}},
            "y": {"field": "rows", "type": "quantitative"},
        },
    }
    return vl_convert.vegalite_to_png(spec)


def markdown(total: int, profiles: list[ColumnProfile], images: dict[str, bytes]) -> str:
    lines = [
        f"**{total} rows**",
        "",
        "| column | type | null rate | distinct | min | max | top values |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for p in profiles:
        top = ", ".join(f"{v} ({n})" for v, n in p.top_values)
        lines.append(
            f"| {p.name} | {p.type} | {p.null_rate:.2%} | {p.distinct} | {p.min} | {p.max} | {top} |"
        )
    for name, png in images.items():
        lines += ["", f"![{name}](data:image/png;base64,{base64.b64encode(png).decode()})"]
    return "\n".join(lines)
