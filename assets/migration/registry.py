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
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from assets.shared.catalog import CatalogError, load_catalog_dir, load_yaml_model
from resources.lake.datasets import Grain
from resources.settings import PROJECT_ROOT

CATALOG_DIR = PROJECT_ROOT / "platform" / "catalogs" / "migration"
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


# A registry file that does not validate; the message names file, table and field.
RegistryError = CatalogError


class Kind(StrEnum):
    SOURCE = "source"  # typed table of the operational system
    MART = "mart"  # already copied by Sqoop: every column arrives as a string


class LoadMode(StrEnum):
    OVERWRITE = "overwrite"  # replace the partition (or the table) atomically
    APPEND = "append"  # add rows past the watermark; a re-run adds nothing
    UPSERT = "upsert"  # merge by primary key, deletes included


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
    primary_key: list[str] = Field(default_factory=list)
    watermark_column: str | None = None
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
        if self.load_mode in (LoadMode.UPSERT, LoadMode.APPEND) and not self.watermark_column:
            raise ValueError(f"load_mode {self.load_mode.value} needs watermark_column")
        if (self.partition_grain == Grain.NONE) != (self.partition_column is None):
            raise ValueError("partition_column and partition_grain (day or month) go together")
        if self.partition_grain != Grain.NONE and self.partition_start is None:
            raise ValueError("a partitioned table needs partition_start")
        if self.load_mode == LoadMode.UPSERT and self.partition_grain != Grain.NONE:
            raise ValueError("load_mode upsert merges the whole table: leave it unpartitioned")
        if self.retention_days and self.partition_grain == Grain.NONE:
            raise ValueError("retention_days needs a partitioned table")
        if self.kind == Kind.SOURCE:
            typed = sorted(c for c, rule in self.columns.items() if rule.type is not None)
            if typed:
                raise ValueError(f"columns {typed}: a type is only restored for mart tables (kind: mart)")
        if self.kind == Kind.MART and not self.columns:
            raise ValueError("a mart table needs columns with their types (they arrive as strings)")
        if self.parallel_reads > 1 and not self.primary_key:
            raise ValueError("parallel_reads needs a primary_key to split ranges on")
        return self

    @property
    def partitioned(self) -> bool:
        return self.partition_grain != Grain.NONE


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
    return load_yaml_model(path, SourceSystem)


def load_registry(directory: Path = CATALOG_DIR) -> list[SourceSystem]:
    """Every source system of the registry; two files may not declare the same source name."""
    return load_catalog_dir(directory, SourceSystem)
