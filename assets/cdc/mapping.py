"""The CDC table mapping: YAML files under platform/catalogs/cdc/.

Each file may declare clusters (MySQL/MariaDB servers the capture reads) and
tables (per table: cluster, database, table, primary key, target name,
column type conversions, history, enabled). Adding a table to a file adds its
capture, its assets and its loads; nothing else is edited. Mistakes are
CatalogErrors naming the file, the table and the field.

An AWS DMS table-mapping JSON (selection rules, '%' wildcards) is brought in
with `dp cdc import-dms`, which expands its rules against the source's
catalog and writes a mapping file: definitions never connect to a source when
they load, so wildcards are resolved once, by a command, not at every load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from assets.shared.catalog import CatalogError, load_yaml_model
from resources.settings import PROJECT_ROOT

CATALOG_DIR = PROJECT_ROOT / "platform" / "catalogs" / "cdc"
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$-]*$")

# Target types a column can be converted to (see assets.cdc.types).
ColumnType = Literal[
    "boolean",
    "integer",
    "decimal",
    "float",
    "string",
    "date",
    "time",
    "datetime",
    "timestamp",
    "json",
    "binary",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnSpec(_Strict):
    """A conversion for one column, overriding the default for its source type."""

    type: ColumnType
    precision: int | None = Field(default=None, ge=1, le=76)
    scale: int | None = Field(default=None, ge=0, le=76)

    @model_validator(mode="after")
    def _decimal_needs_precision(self) -> ColumnSpec:
        if (self.precision is not None or self.scale is not None) and self.type != "decimal":
            raise ValueError("precision and scale apply to type decimal only")
        if self.precision is not None and self.scale is not None and self.scale > self.precision:
            raise ValueError(f"scale {self.scale} is larger than precision {self.precision}")
        return self


class ClusterSpec(_Strict):
    """A MySQL/MariaDB server (an Aurora cluster in production) whose binlog the capture reads."""

    name: str
    description: str = ""
    local_url: str  # mysql+pymysql://user[:password]@host:port (no database)
    url_env: str | None = None  # the variable holding the production URL
    server_id: int = Field(ge=1, lt=2**32)  # the capture's replica id: unique among the server's replicas

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits and underscores")
        return value


class TableSpec(_Strict):
    name: str | None = None  # target name; defaults to the source table's name, lower-cased
    description: str = ""
    cluster: str
    database: str
    table: str
    primary_key: list[str] = Field(min_length=1)
    history: bool | None = None  # keep every change in a history table (default: the file's defaults)
    enabled: bool = True
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)

    @field_validator("database", "table")
    @classmethod
    def _source_name(cls, value: str) -> str:
        if not _SOURCE_NAME.match(value):
            raise ValueError(f"{value!r} is not a MySQL name the lake can hold")
        return value

    @field_validator("name")
    @classmethod
    def _target_name(cls, value: str | None) -> str | None:
        if value is not None and not _IDENT.match(value):
            raise ValueError(f"{value!r} must be lower-case letters, digits and underscores")
        return value

    @property
    def target_name(self) -> str:
        return self.name or self.table.lower()


class Defaults(_Strict):
    history: bool = True
    flush_seconds: float = Field(default=2.0, gt=0)  # a table's buffer is written at least this often
    flush_rows: int = Field(default=50_000, ge=1)  # ... or when it holds this many changes
    flush_bytes: int = Field(default=64 * 2**20, ge=1024)  # ... or about this many bytes


class MappingFile(_Strict):
    description: str = ""
    defaults: Defaults | None = None
    clusters: list[ClusterSpec] = Field(default_factory=list)
    tables: list[TableSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class CdcTable:
    """A mapped table, resolved: its cluster, names and settings."""

    cluster: ClusterSpec
    spec: TableSpec
    history: bool
    source_file: Path

    @property
    def name(self) -> str:
        return self.spec.target_name

    @property
    def database(self) -> str:
        return self.spec.database

    @property
    def table(self) -> str:
        return self.spec.table

    @property
    def primary_key(self) -> list[str]:
        return list(self.spec.primary_key)

    @property
    def asset_prefix(self) -> list[str]:
        return ["cdc", self.cluster.name, self.name]

    @property
    def target(self) -> str:
        """The ledger target: the current-state asset's key as a string, 'cdc/<cluster>/<name>/current'.

        The sensors claim files under the same name, so a load releases its claims.
        """
        return "/".join([*self.asset_prefix, "current"])

    @property
    def current_table(self) -> str:
        return f"cdc_{self.cluster.name}.{self.name}"

    @property
    def history_table(self) -> str:
        return f"cdc_{self.cluster.name}.{self.name}__history"


@dataclass(frozen=True)
class CdcMapping:
    clusters: dict[str, ClusterSpec]
    tables: list[CdcTable]  # enabled and disabled, in file order
    defaults: Defaults

    @property
    def enabled(self) -> list[CdcTable]:
        return [t for t in self.tables if t.spec.enabled]

    def for_cluster(self, cluster: str) -> list[CdcTable]:
        return [t for t in self.enabled if t.cluster.name == cluster]

    def by_source(self, cluster: str, database: str, table: str) -> CdcTable | None:
        """The enabled mapping of a source table (MySQL names compare case-insensitively)."""
        for t in self.for_cluster(cluster):
            if t.database.lower() == database.lower() and t.table.lower() == table.lower():
                return t
        return None

    def by_target(self, target: str) -> CdcTable:
        """A table by 'cluster.name', by its target ('cdc/cluster/name/current'), or by a bare name
        mapped on one cluster only."""
        found = [
            t
            for t in self.tables
            if target in (t.target, f"{t.cluster.name}.{t.name}", "/".join(t.asset_prefix))
        ]
        if not found:
            found = [t for t in self.tables if t.name == target]
        if len(found) == 1:
            return found[0]
        known = sorted(f"{t.cluster.name}.{t.name}" for t in self.tables)
        if not found:
            raise KeyError(f"no CDC table {target!r}; mapped: {known}")
        names = [f"{t.cluster.name}.{t.name}" for t in found]
        raise KeyError(f"{target!r} is mapped on several clusters; say which: {names}")


def load_mapping(directory: Path | None = None) -> CdcMapping:
    """Every *.yaml of the mapping directory, validated together; CatalogError names file, table, field."""
    from resources import settings

    directory = Path(directory or settings.cdc_mapping_dir())
    paths = sorted(directory.glob("*.yaml"))
    files = [(p, load_yaml_model(p, MappingFile, item_lists=("tables", "clusters"))) for p in paths]
    clusters: dict[str, ClusterSpec] = {}
    cluster_file: dict[str, Path] = {}
    defaults: Defaults | None = None
    for path, f in files:
        for c in f.clusters:
            if c.name in clusters:
                raise CatalogError(f"{path}: cluster {c.name!r}: already declared in {cluster_file[c.name]}")
            clusters[c.name], cluster_file[c.name] = c, path
        if f.defaults is not None:
            if defaults is not None:
                raise CatalogError(f"{path}: field defaults: declared in more than one mapping file")
            defaults = f.defaults
    defaults = defaults or Defaults()
    server_ids: dict[int, str] = {}
    for c in clusters.values():
        if c.server_id in server_ids:
            raise CatalogError(
                f"{cluster_file[c.name]}: cluster {c.name!r}: field server_id: {c.server_id} is also"
                f" cluster {server_ids[c.server_id]!r}'s"
            )
        server_ids[c.server_id] = c.name

    tables: list[CdcTable] = []
    seen: dict[str, Path] = {}
    sources: dict[tuple[str, str, str], str] = {}
    for path, f in files:
        for spec in f.tables:
            where = f"{path}: table {spec.target_name!r}"
            if spec.cluster not in clusters:
                raise CatalogError(
                    f"{where}: field cluster: {spec.cluster!r} is not declared (known: {sorted(clusters)})"
                )
            if len(set(spec.primary_key)) != len(spec.primary_key):
                raise CatalogError(f"{where}: field primary_key: a column is named twice")
            target = f"{spec.cluster}.{spec.target_name}"
            if target in seen:
                raise CatalogError(f"{where}: field name: {target!r} is already mapped in {seen[target]}")
            source = (spec.cluster, spec.database.lower(), spec.table.lower())
            if spec.enabled and source in sources:
                raise CatalogError(
                    f"{where}: field table: {spec.database}.{spec.table} on {spec.cluster} is already"
                    f" mapped as {sources[source]!r}"
                )
            seen[target] = path
            if spec.enabled:
                sources[source] = spec.target_name
            history = defaults.history if spec.history is None else spec.history
            tables.append(CdcTable(clusters[spec.cluster], spec, history, path))
    return CdcMapping(clusters, tables, defaults)


# --- AWS DMS table mappings --------------------------------------------------
@dataclass(frozen=True)
class SelectionRule:
    rule_id: str
    schema: str  # DMS pattern: '%' any run of characters, '_' one character
    table: str
    include: bool  # rule-action include (True) or exclude (False)


def parse_dms_mapping(text: str, origin: str = "DMS table mapping") -> list[SelectionRule]:
    """The selection rules of an AWS DMS table-mapping document; ValueError names what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin}: not JSON: {exc}") from None
    rules = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(rules, list):
        raise ValueError(f"{origin}: expected an object with a 'rules' list")
    selection: list[SelectionRule] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ValueError(f"{origin}: rule #{i + 1} is not an object")
        if rule.get("rule-type") != "selection":
            continue  # transformation rules rename or add columns: not applied here
        rule_id = str(rule.get("rule-id", i + 1))
        locator = rule.get("object-locator")
        action = rule.get("rule-action")
        if not isinstance(locator, dict) or not isinstance(locator.get("schema-name"), str):
            raise ValueError(f"{origin}: selection rule {rule_id}: object-locator.schema-name is missing")
        if action not in ("include", "exclude", "explicit"):
            raise ValueError(
                f"{origin}: selection rule {rule_id}: rule-action {action!r} is not include/exclude"
            )
        table = locator.get("table-name", "%")
        if not isinstance(table, str):
            raise ValueError(f"{origin}: selection rule {rule_id}: object-locator.table-name is not a string")
        selection.append(SelectionRule(rule_id, locator["schema-name"], table, action != "exclude"))
    if not any(r.include for r in selection):
        raise ValueError(f"{origin}: no selection rule includes a table")
    return selection


def _dms_like(pattern: str, value: str) -> bool:
    # DMS patterns: '%' matches any run of characters, '_' one; compared case-insensitively, as MySQL names.
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.IGNORECASE | re.DOTALL) is not None


def select_tables(rules: list[SelectionRule], available: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (schema, table) pairs of `available` that the rules include and no rule excludes."""
    chosen = []
    for schema, table in available:
        matching = [r for r in rules if _dms_like(r.schema, schema) and _dms_like(r.table, table)]
        if any(r.include for r in matching) and not any(not r.include for r in matching):
            chosen.append((schema, table))
    return chosen


def cluster_url(cluster: ClusterSpec) -> str:
    """The cluster's SQLAlchemy URL (no database): its `url_env` variable on the aws profile (or
    whenever that variable is set), its `local_url` otherwise. Read at use time."""
    from resources import settings

    url = settings.env(cluster.url_env) if cluster.url_env else None
    if url:
        return url
    if settings.profile_name() == "aws":
        raise ValueError(f"cluster {cluster.name!r}: set {cluster.url_env or 'its url_env'} to its URL")
    return cluster.local_url
