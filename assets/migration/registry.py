"""The migration table registry: one YAML file per source system under platform/catalogs/migration/.

Each file declares the source (its SQLAlchemy URL for local use, and the
environment variable that holds it in production) and, per table, how it is
loaded, partitioned, kept, cleansed and protected. Adding a table is a YAML
edit: the asset factory builds everything else from these models. Files are
loaded by the generic catalog loader (assets.shared.catalog); partition grains
are the lake's (resources.lake.datasets.Grain).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from assets.shared.catalog import CatalogError, load_catalog_dir, load_yaml_model
from resources.lake.datasets import Grain
from resources.settings import PROJECT_ROOT
from resources.sql_columns import READ_AS

CATALOG_DIR = PROJECT_ROOT / "platform" / "catalogs" / "migration"
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_DECIMAL = re.compile(r"^decimal\((\d|[12]\d|3[0-8]),\s*(\d|[12]\d|3[0-8])\)$")


# A registry file that does not validate; the message names file, table and field.
RegistryError = CatalogError


class Kind(StrEnum):
    SOURCE = "source"  # typed table of the operational system
    MART = "mart"  # already copied by Sqoop: every column arrives as a string


class LoadMode(StrEnum):
    OVERWRITE = "overwrite"  # replace the partition (or the table) atomically
    APPEND = "append"  # add rows past the watermark; a re-run adds nothing
    UPSERT = "upsert"  # merge by primary key, deletes included


class ChangeDetection(StrEnum):
    """How an upsert table finds its changed rows."""

    WATERMARK = "watermark"  # rows whose watermark_column moved past the last load
    ROW_HASH = "row_hash"  # compare key and row hash with the lake, key range by key range


class PiiAction(StrEnum):
    ENCRYPT = "encrypt"  # deterministic and reversible with PLATFORM_PII_KEY: joins still work
    HASH = "hash"  # keyed one-way hash
    PURGE = "purge"  # absent from the cleansed tier


ColumnType = Literal["string", "int", "decimal", "date", "timestamp", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StringRules(_Strict):
    """Rules for every string column (the pipeline's type-based cleansing)."""

    trim: bool = True
    empty_to_null: bool = True
    null_tokens: list[str] = Field(default_factory=lambda: ["N/A", "NULL", "-"])
    case: Literal["upper", "lower"] | None = None


class ColumnRule(_Strict):
    """Per-column override; for mart tables `type` restores the column's type."""

    type: ColumnType | None = None
    formats: list[str] = Field(default_factory=list)  # strptime formats for date/timestamp
    scale: int = Field(default=2, ge=0, le=18)  # decimal places (decimal128(18, scale))
    case: Literal["upper", "lower"] | None = None
    true_values: list[str] = Field(default_factory=lambda: ["Y", "1", "true", "T"])
    false_values: list[str] = Field(default_factory=lambda: ["N", "0", "false", "F"])
    # Source tables: read the column as this type (a CAST in the SELECT), e.g. for a type
    # without a mapping: string, int64, float64, bool, date, timestamp, timestamptz, binary, decimal(p,s).
    read_as: str | None = None

    @field_validator("read_as")
    @classmethod
    def _read_as(cls, value: str | None) -> str | None:
        if value is None or value in READ_AS or _DECIMAL.match(value):
            return value
        raise ValueError(f"read_as {value!r} is not one of {', '.join(READ_AS)} or decimal(p,s)")


class ErasureLink(_Strict):
    """How a table's rows belong to a data subject (a customer), for erasure requests."""

    column: str  # rows whose column holds one of the subject's ids are erased
    lookup_table: str | None = None  # ids found in this table's rows of the subject (e.g. cards)
    lookup_column: str | None = None  # ... in this column of it

    @model_validator(mode="after")
    def _pair(self) -> ErasureLink:
        if (self.lookup_table is None) != (self.lookup_column is None):
            raise ValueError("lookup_table and lookup_column go together")
        return self


class TableSpec(_Strict):
    name: str
    description: str
    source_table: str
    kind: Kind = Kind.SOURCE
    load_mode: LoadMode
    # The table's key; for a source table without one, the key declared here.
    primary_key: list[str] = Field(default_factory=list)
    watermark_column: str | None = None
    # Rows whose watermark is within this lag of the last load are read again (and
    # de-duplicated) by the next one: a transaction committed late is not lost.
    watermark_lag: timedelta = timedelta(minutes=10)
    # upsert: watermark (the default with a watermark_column) or row_hash
    change_detection: ChangeDetection | None = None
    # Every load re-checks this many earlier partitions against the source (count and checksum).
    recheck_partitions: int = Field(default=7, ge=0)
    select_columns: list[str] = Field(default_factory=list)  # read only these (default: all)
    exclude_columns: list[str] = Field(default_factory=list)  # never read these
    partition_column: str | None = None
    partition_grain: Grain = Grain.NONE
    partition_start: date | None = None
    retention_days: int | None = Field(default=None, gt=0)
    fetch_size: int = Field(default=50_000, gt=0)
    parallel_reads: int = Field(default=1, ge=1, le=16)
    string_rules: StringRules = Field(default_factory=StringRules)
    columns: dict[str, ColumnRule] = Field(default_factory=dict)
    pii: dict[str, PiiAction] = Field(default_factory=dict)
    join_keys: list[str] = Field(default_factory=list)
    erasure: ErasureLink | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError("must be lower-case letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TableSpec:
        if self.load_mode == LoadMode.UPSERT and not self.primary_key:
            raise ValueError("load_mode upsert needs primary_key")
        if self.load_mode == LoadMode.APPEND and not self.watermark_column:
            raise ValueError("load_mode append needs watermark_column")
        if self.change_detection and self.load_mode != LoadMode.UPSERT:
            raise ValueError("change_detection is for load_mode upsert")
        if self.detection == ChangeDetection.WATERMARK and not self.watermark_column:
            raise ValueError(
                "change_detection watermark needs watermark_column; a table without one uses row_hash"
            )
        if self.select_columns and self.exclude_columns:
            raise ValueError("select_columns and exclude_columns exclude each other: give one")
        read = set(self.select_columns) or None
        needed = [*self.primary_key, self.watermark_column, self.partition_column]
        for column in filter(None, needed):
            if column in self.exclude_columns or (read is not None and column not in read):
                raise ValueError(
                    f"column {column!r} is a key, watermark or partition column: it must be read"
                )
        if (self.partition_grain == Grain.NONE) != (self.partition_column is None):
            raise ValueError("partition_column and partition_grain (day or month) go together")
        if self.partition_grain != Grain.NONE and self.partition_start is None:
            raise ValueError("a partitioned table needs partition_start")
        if self.retention_days and self.partition_grain == Grain.NONE:
            raise ValueError("retention_days needs a partitioned table")
        if self.kind == Kind.SOURCE:
            typed = sorted(c for c, rule in self.columns.items() if rule.type is not None)
            if typed:
                raise ValueError(f"columns {typed}: a type is only restored for mart tables (kind: mart)")
        if self.kind == Kind.MART:
            overridden = sorted(c for c, rule in self.columns.items() if rule.read_as is not None)
            if overridden:
                raise ValueError(
                    f"columns {overridden}: read_as is for source tables (mart columns are strings)"
                )
        if self.kind == Kind.MART and not self.columns:
            raise ValueError("a mart table needs columns with their types (they arrive as strings)")
        if self.parallel_reads > 1 and not self.primary_key:
            raise ValueError("parallel_reads needs a primary_key to split ranges on")
        return self

    @property
    def partitioned(self) -> bool:
        return self.partition_grain != Grain.NONE

    @property
    def detection(self) -> ChangeDetection | None:
        """An upsert table's change detection: as declared, else watermark when it has one."""
        if self.load_mode != LoadMode.UPSERT:
            return None
        if self.change_detection:
            return self.change_detection
        return ChangeDetection.WATERMARK if self.watermark_column else ChangeDetection.ROW_HASH


class ViewSpec(_Strict):
    name: str
    description: str
    tables: list[str]  # cleansed tables the SQL reads, as {table} placeholders
    sql: str


class SourceSystem(_Strict):
    name: str
    description: str
    url_env: str  # environment variable with the production URL (secret)
    local_url: str  # the embedded default on this machine
    subject_column: str | None = None  # the data subject's id column (erasure requests)
    tables: list[TableSpec]
    views: list[ViewSpec] = Field(default_factory=list)
    _file: str = PrivateAttr(default="the migration registry")

    @property
    def file(self) -> str:
        """The registry file that declared this source (named in preflight errors)."""
        return self._file

    @model_validator(mode="after")
    def _references(self) -> SourceSystem:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate table names: {sorted({n for n in names if names.count(n) > 1})}")
        for table in self.tables:
            link = table.erasure
            if link and link.lookup_table:
                if link.lookup_table not in names:
                    raise ValueError(
                        f"table {table.name!r}: erasure lookup_table {link.lookup_table!r} is unknown"
                    )
                target = self.table(link.lookup_table).erasure
                if not target or target.lookup_table:
                    raise ValueError(
                        f"table {table.name!r}: erasure lookup_table {link.lookup_table!r} must itself"
                        " hold the subject column directly"
                    )
            if link and not self.subject_column:
                raise ValueError(
                    f"table {table.name!r} declares erasure but the source has no subject_column"
                )
        for view in self.views:
            missing = set(view.tables) - set(names)
            if missing:
                raise ValueError(f"view {view.name!r} reads unknown tables {sorted(missing)}")
        return self

    def table(self, name: str) -> TableSpec:
        return next(t for t in self.tables if t.name == name)


def load_source(path: Path) -> SourceSystem:
    """One source system's file; RegistryError names file, table and field of a mistake."""
    return _located(load_yaml_model(path, SourceSystem), path)


def _located(source: SourceSystem, path: Path) -> SourceSystem:
    source._file = str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)
    return source


def load_registry(directory: Path = CATALOG_DIR) -> list[SourceSystem]:
    """Every source system of the registry; two files may not declare the same source name."""
    paths = sorted(Path(directory).glob("*.yaml"))
    return [_located(s, p) for s, p in zip(load_catalog_dir(directory, SourceSystem), paths, strict=True)]
