"""Connections to a CDC cluster and the column conversions of its mapped tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from assets.cdc.mapping import ClusterSpec, cluster_url
from assets.cdc.types import ColumnConversion, SourceColumn, conversions, read_source_columns

if TYPE_CHECKING:
    from assets.cdc.mapping import CdcTable


class CdcSourceError(RuntimeError):
    """A cluster that cannot be read as the capture needs (unreachable, binlog off or not ROW/FULL)."""


def connection_settings(cluster: ClusterSpec) -> dict[str, Any]:
    """pymysql keyword arguments for the cluster (its url_env URL on aws, its local_url here)."""
    from sqlalchemy.engine import make_url

    url = make_url(cluster_url(cluster))
    if url.get_backend_name() not in ("mysql", "mariadb"):
        raise CdcSourceError(f"cluster {cluster.name!r}: {url.render_as_string()} is not a MySQL/MariaDB URL")
    return {
        "host": url.host or "127.0.0.1",
        "port": int(url.port or 3306),
        "user": url.username or "root",
        "passwd": url.password or "",
        "charset": "utf8mb4",
    }


def connect(cluster: ClusterSpec, **extra: Any) -> Any:
    import pymysql

    settings = connection_settings(cluster)
    extra.setdefault("autocommit", True)
    try:
        return pymysql.connect(
            host=settings["host"],
            port=settings["port"],
            user=settings["user"],
            password=settings["passwd"],
            charset="utf8mb4",
            **extra,
        )
    except pymysql.err.OperationalError as exc:
        raise CdcSourceError(
            f"cluster {cluster.name!r}: cannot connect to {settings['host']}:{settings['port']}: {exc}"
        ) from None


def table_conversions(
    table: CdcTable, connection: Any, binlog_columns: list[Any] | None = None, *, strict: bool = True
) -> tuple[list[str], list[ColumnConversion]]:
    """The column names and conversions of a mapped table.

    Types come from information_schema. With `binlog_columns` (a TableMapEvent's
    columns, names from binlog_row_metadata=FULL) the result follows the
    binlog's column list: a column information_schema no longer has (dropped
    since the event was written) takes its type from the binlog's metadata.
    `strict`: an override naming no column is an error (at start; after a
    column was dropped the override is ignored).
    """
    where = f"{table.cluster.name}.{table.database}.{table.table}"
    catalog = read_source_columns(connection, table.database, table.table)
    if binlog_columns is None:
        if not catalog:
            return [], []
        columns = catalog
    else:
        by_name = {c.name.lower(): c for c in catalog}
        columns = []
        for col in binlog_columns:
            found = by_name.get(str(col.name).lower())
            columns.append(found if found is not None else _from_binlog(col, where))
    overrides = dict(table.spec.columns)
    if not strict:
        present = {c.name.lower() for c in columns}
        overrides = {k: v for k, v in overrides.items() if k.lower() in present}
    return [c.name for c in columns], conversions(columns, overrides, where=where)


def _from_binlog(col: Any, where: str) -> SourceColumn:
    """A column's type from a TableMapEvent's metadata (when information_schema no longer has it)."""
    from pymysqlreplication.constants import FIELD_TYPE as F

    t = col.type
    unsigned = " unsigned" if getattr(col, "unsigned", False) else ""
    ints = {F.TINY: "tinyint", F.SHORT: "smallint", F.INT24: "mediumint", F.LONG: "int", F.LONGLONG: "bigint"}
    if t in ints:
        return SourceColumn(col.name, ints[t], ints[t] + unsigned)
    if t == F.NEWDECIMAL:
        return SourceColumn(
            col.name,
            "decimal",
            f"decimal({col.precision},{col.decimals})",
            numeric_precision=col.precision,
            numeric_scale=col.decimals,
        )
    simple = {
        F.FLOAT: "float",
        F.DOUBLE: "double",
        F.DATE: "date",
        F.NEWDATE: "date",
        F.TIME: "time",
        F.TIME2: "time",
        F.DATETIME: "datetime",
        F.DATETIME2: "datetime",
        F.TIMESTAMP: "timestamp",
        F.TIMESTAMP2: "timestamp",
        F.YEAR: "year",
        F.JSON: "json",
        F.ENUM: "enum",
    }
    if t in simple:
        return SourceColumn(col.name, simple[t], simple[t])
    if t == F.SET:
        members = ",".join("'" + m.replace("'", "''") + "'" for m in (col.set_values or []))
        return SourceColumn(col.name, "set", f"set({members})")
    if t == F.BIT:
        return SourceColumn(col.name, "bit", f"bit({col.bits})", numeric_precision=col.bits)
    if t in (F.VARCHAR, F.VAR_STRING, F.STRING, F.BLOB):
        text = getattr(col, "character_set_name", None) not in (None, "binary")
        return SourceColumn(col.name, "text" if text else "blob", "text" if text else "blob")
    return SourceColumn(col.name, f"binlog type {t}", f"binlog type {t}")
