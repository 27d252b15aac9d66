"""Report definitions: one YAML file per report under platform/reports/, validated when loaded.

A report is a query over the warehouse with typed parameters, a Vega-Lite chart of its rows and
the formats it is rendered to:

    id: fleet_anomalies_daily           # lowercase, key-safe; the file is <id>.yaml
    title: Fleet anomalies per day
    description: ...
    reads: [telemetry/hourly_summary]   # the upstream asset keys: the snapshot's data version
    parameters:
      start: {type: date, required: true, description: first day}
    sql: SELECT ... WHERE day >= $start
    chart: {mark: bar, encoding: {...}}  # no `data`: the query's rows are inlined at render time
    formats: [png, pdf, csv]            # the default

Parameters appear in the SQL as `$name`. Values are never formatted into SQL as text: each type
has one function producing its SQL literal (bind_sql), strings are quoted with their quotes
doubled, so a value can only ever be a value. An asset key in `reads` may hold `*` for one
segment (`cdc/*/*/current`) where a domain's catalog decides its assets (resolve_reads).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from assets.shared.catalog import CatalogError, load_yaml_model

FORMATS = ("png", "pdf", "csv")
Format = Literal["png", "pdf", "csv"]
ParamType = Literal["date", "timestamp", "int", "float", "string", "enum"]
_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9_-]+|\*")
_ORDERED = ("date", "timestamp", "int", "float")  # the types min and max apply to
# A chart's data comes from the query; these would replace or hide it.
_CHART_DATA_KEYS = ("data", "datasets")
_CHART_VIEWS = ("mark", "layer", "concat", "hconcat", "vconcat", "facet", "repeat")


def reports_dir() -> Path:
    """platform/reports/ of this checkout, or PLATFORM_REPORTS_DIR (resolved at call time)."""
    from resources import settings

    return settings.reports_dir()


def _all_formats() -> list[Format]:
    return ["png", "pdf", "csv"]


class ReportCatalogError(CatalogError):
    """Report files that do not load; `errors` holds one line per problem, each naming file and field."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class ReportRequestError(ValueError):
    """A request the catalog refuses: unknown report or parameter, missing, mistyped or out-of-range value."""


# --- parameter values ------------------------------------------------------------------------
def _coerce(kind: str, value: Any, choices: list[str] | None = None) -> Any:
    """value as the parameter type's Python value; ValueError says why not."""
    if kind == "date":
        if isinstance(value, datetime):
            raise ValueError(f"expected a date (YYYY-MM-DD), got a timestamp {value.isoformat()}")
        if isinstance(value, date):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a date (YYYY-MM-DD), got {value!r}")
    if kind == "timestamp":
        parsed = value
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"expected an ISO 8601 timestamp with a UTC offset, got {value!r}") from None
        if not isinstance(parsed, datetime):
            raise ValueError(f"expected an ISO 8601 timestamp with a UTC offset, got {value!r}")
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError(f"timestamp {value!r} has no UTC offset (add Z or +00:00)")
        return parsed.astimezone(UTC)
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        whole = value if isinstance(value, int) else None
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
            whole = int(value)
        if whole is None:
            raise ValueError(f"expected an integer, got {value!r}")
        if not -(2**63) <= whole < 2**63:  # the warehouses' BIGINT / INT64
            raise ValueError(f"{value!r} is outside the 64-bit integer range")
        return whole
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        number: float | None = None
        try:
            if isinstance(value, int | float | Decimal):
                number = float(value)
            elif isinstance(value, str):
                number = float(Decimal(value.strip()))
        except (InvalidOperation, ValueError, OverflowError):  # 10**400 overflows float()
            number = None
        if number is None or not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if kind in ("string", "enum"):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
        if "\x00" in value:
            raise ValueError("a string may not contain NUL characters")
        if kind == "enum" and value not in (choices or []):
            raise ValueError(f"{value!r} is not one of {choices}")
        return value
    raise ValueError(f"unknown parameter type {kind!r}")


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    required: bool = False
    default: Any = None
    choices: list[str] | None = None
    min: Any = None
    max: Any = None
    description: str = ""

    @model_validator(mode="after")
    def _typed(self) -> Parameter:
        # The YAML's default, min and max become values of the parameter's type here, so a
        # request's value and the bounds compare as equals.
        if self.type == "enum":
            if not self.choices:
                raise ValueError("an enum parameter needs a non-empty `choices` list")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices repeat a value: {self.choices}")
        elif self.choices is not None:
            raise ValueError(f"`choices` only applies to enum parameters, not {self.type}")
        for bound in ("min", "max"):
            raw = getattr(self, bound)
            if raw is None:
                continue
            if self.type not in _ORDERED:
                raise ValueError(f"`{bound}` applies to {', '.join(_ORDERED)} parameters, not {self.type}")
            object.__setattr__(self, bound, _coerce(self.type, raw))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.default is not None:
            if self.required:
                raise ValueError("a required parameter cannot have a default")
            default = _coerce(self.type, self.default, self.choices)
            object.__setattr__(self, "default", default)
            self.check_range(default)
        return self

    def check_range(self, value: Any) -> None:
        if self.min is not None and value < self.min:
            raise ValueError(f"{_show(value)} is below the minimum {_show(self.min)}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{_show(value)} is above the maximum {_show(self.max)}")


def _show(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else repr(value)


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str = Field(min_length=1)
    description: str = ""
    reads: list[str] = Field(min_length=1)
    sql: str = Field(min_length=1)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    chart: dict[str, Any]
    formats: list[Format] = Field(default_factory=lambda: _all_formats(), min_length=1)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file the report was loaded from."""
        return self._source

    @property
    def fingerprint(self) -> str:
        """A digest of the whole definition (key order and YAML layout aside): part of every
        snapshot id, so a changed report is rendered again rather than answered from before."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a report id: lowercase letters, digits, '_' and '-', starting with a"
                " letter, at most 64 characters"
            )
        return value

    @field_validator("reads")
    @classmethod
    def _reads(cls, value: list[str]) -> list[str]:
        for key in value:
            if not isinstance(key, str) or not all(_KEY_SEGMENT.fullmatch(s) for s in key.split("/")):
                raise ValueError(f"{key!r} is not an asset key like 'telemetry/hourly_summary'")
        if len(set(value)) != len(value):
            raise ValueError(f"asset keys repeat: {value}")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not _PARAM_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a parameter name: lowercase letters, digits and '_'")
        return value

    @field_validator("chart", mode="before")
    @classmethod
    def _chart(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"the chart must be a Vega-Lite spec (a mapping), not {type(value).__name__}")
        inlined = [k for k in _CHART_DATA_KEYS if k in value]
        if inlined:
            raise ValueError(f"remove {inlined}: the chart's data is the query's rows, inlined when rendered")
        if not any(k in value for k in _CHART_VIEWS):
            raise ValueError(f"the chart has none of {list(_CHART_VIEWS)}: nothing would be drawn")
        return value

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"formats repeat: {value}")
        return value

    @model_validator(mode="after")
    def _sql_parameters(self) -> Report:
        used = set(sql_parameters(self.sql))
        declared = set(self.parameters)
        problems = []
        if used - declared:
            problems.append(f"the SQL uses undeclared parameters {sorted(used - declared)}")
        if declared - used:
            problems.append(f"parameters {sorted(declared - used)} are declared but the SQL never uses them")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- loading ---------------------------------------------------------------------------------
def load_report_file(path: Path) -> Report:
    """One report file, validated; ReportCatalogError names the file and each field that is wrong."""
    try:
        report = load_yaml_model(Path(path), Report, item_lists=())
    except CatalogError as exc:
        # One entry per problem: each starts with the file's name; a YAML error's own lines follow it.
        errors: list[str] = []
        for line in str(exc).splitlines():
            if line.startswith(str(path)) or not errors:
                errors.append(line)
            else:
                errors[-1] += "\n" + line
        raise ReportCatalogError(errors) from None
    if report.id != Path(path).stem:
        name = Path(path).name
        raise ReportCatalogError([f"{path}: field id: {report.id!r} must match the file name {name}"])
    report._source = Path(path)
    return report


def load_reports(directory: Path | str | None = None) -> dict[str, Report]:
    """Every report of the directory (default platform/reports/) by id; every broken file is reported."""
    folder = Path(directory) if directory is not None else reports_dir()
    if not folder.is_dir():
        raise ReportCatalogError([f"{folder}: the report directory does not exist"])
    reports: dict[str, Report] = {}
    errors: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            report = load_report_file(path)
        except ReportCatalogError as exc:
            errors.extend(exc.errors)
            continue
        reports[report.id] = report
    if errors:
        raise ReportCatalogError(errors)
    return reports


def get_report(report_id: str, directory: Path | str | None = None) -> Report:
    """The report of that id; ReportRequestError (listing the known ids) if there is none."""
    reports = load_reports(directory)
    if report_id not in reports:
        raise ReportRequestError(f"unknown report {report_id!r}; known reports: {sorted(reports)}")
    return reports[report_id]


def resolve_reads(report: Report, asset_keys: Iterable[str]) -> list[str]:
    """The report's `reads` against the code location's asset keys ('a/b/c'), `*` matching one
    segment; sorted. A key that matches nothing is an error: the data version would miss it."""
    known = sorted(set(asset_keys))
    found: set[str] = set()
    for pattern in report.reads:
        parts = pattern.split("/")
        matches = [
            k
            for k in known
            if len(k.split("/")) == len(parts)
            and all(p in ("*", s) for p, s in zip(parts, k.split("/"), strict=True))
        ]
        if not matches:
            raise ReportRequestError(f"report {report.id!r} reads {pattern!r}, which matches no asset")
        found.update(matches)
    return sorted(found)


# --- requests --------------------------------------------------------------------------------
def validate_params(report: Report, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The request's parameters typed, defaults applied, in declaration order.

    dates are datetime.date, timestamps tz-aware UTC datetimes, ints int, floats float, strings and
    enums str; an optional parameter without a default and not given is None (SQL NULL).
    """
    if not isinstance(raw, Mapping):
        kind = type(raw).__name__
        raise ReportRequestError(f"report {report.id!r}: parameters must be a mapping, not {kind}")
    unknown = sorted(set(raw) - set(report.parameters), key=str)
    if unknown:
        raise ReportRequestError(
            f"report {report.id!r}: unknown parameter(s) {unknown}; it takes {sorted(report.parameters)}"
        )
    values: dict[str, Any] = {}
    for name, param in report.parameters.items():
        value = raw.get(name)
        if value is None:
            if param.required:
                raise ReportRequestError(
                    f"report {report.id!r}: parameter {name!r} is required ({param.type})"
                    + (f": {param.description}" if param.description else "")
                )
            values[name] = param.default
            continue
        try:
            typed = _coerce(param.type, value, param.choices)
            param.check_range(typed)
        except ValueError as exc:
            raise ReportRequestError(f"report {report.id!r}: parameter {name!r}: {exc}") from None
        values[name] = typed
    return values


# --- SQL binding -----------------------------------------------------------------------------
def _scan(sql: str) -> Iterable[tuple[str, str]]:
    """The SQL as ('text', chunk) and ('param', name) pieces; quotes and comments are text."""
    i, n, start = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c in "'\"":  # a string or quoted identifier; a doubled quote stays inside it
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "$":
            match = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)").match(sql, i)
            if match is None:  # $1 or $$: not a named parameter
                i += 1
                continue
            if i > start:
                yield "text", sql[start:i]
            yield "param", match.group(1)
            i = start = match.end()
        else:
            i += 1
    if start < n:
        yield "text", sql[start:]


def sql_parameters(sql: str) -> list[str]:
    """The `$name` parameters the SQL uses, in order of first use."""
    names: list[str] = []
    for kind, text in _scan(sql):
        if kind == "param" and text not in names:
            names.append(text)
    return names


def _string_literal(value: str) -> str:
    # Standard SQL: the only special character is the quote, doubled. BigQuery's backslash
    # escapes are added by the transpiler (resources.warehouse.sql.to_dialect).
    return "'" + value.replace("'", "''") + "'"


def _number(text: str) -> str:
    return f"({text})" if text.startswith("-") else text  # `a-$n` must not become a `--` comment


_NULL_TYPES = {"date": "DATE", "timestamp": "TIMESTAMPTZ", "int": "BIGINT", "float": "DOUBLE"}


def sql_literal(kind: str, value: Any) -> str:
    """The DuckDB-dialect literal of a validated parameter value (one function per type)."""
    if value is None:
        return f"CAST(NULL AS {_NULL_TYPES.get(kind, 'VARCHAR')})"
    if kind == "date":
        if not isinstance(value, date) or isinstance(value, datetime):
            raise TypeError(f"a date parameter needs a datetime.date, not {value!r}")
        return f"DATE '{value.isoformat()}'"
    if kind == "timestamp":
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError(f"a timestamp parameter needs an aware datetime, not {value!r}")
        return f"CAST('{value.astimezone(UTC).isoformat(sep=' ')}' AS TIMESTAMPTZ)"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"an int parameter needs an int, not {value!r}")
        return _number(str(value))
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError(f"a float parameter needs a finite number, not {value!r}")
        return _number(repr(float(value)))
    if kind in ("string", "enum"):
        if not isinstance(value, str):
            raise TypeError(f"a {kind} parameter needs a str, not {value!r}")
        return _string_literal(value)
    raise TypeError(f"unknown parameter type {kind!r}")


def bind_sql(report: Report, params: Mapping[str, Any]) -> str:
    """The report's SQL with each `$name` replaced by its value's literal (validate_params first)."""
    pieces = []
    for kind, text in _scan(report.sql):
        if kind == "text":
            pieces.append(text)
            continue
        if text not in params:
            raise ReportRequestError(f"report {report.id!r}: parameter {text!r} has no value")
        pieces.append(sql_literal(report.parameters[text].type, params[text]))
    return "".join(pieces)
