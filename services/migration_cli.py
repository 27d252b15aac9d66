"""`dp migration ...`: operating the registered tables of the migration domain.

    preflight  every registry entry (or the named ones) checked against its live source schema
    reset      forget a table: its lake objects in both tiers (load state included) and its
               warehouse table; the next load starts from scratch
    resync     reload a partition range (or the whole table): its raw files deleted, its watermarks
               and blocks forgotten, then raw and cleansed materialized as `dp materialize` does
    status     blocked partitions (check, reason, figures, since) and the latest load_status rows

Each returns the command's exit code: 0 done, 1 failed (or refused), 2 a usage mistake.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assets.migration import DOMAIN
from assets.migration.factory import partitions_def, status_dataset, table_key
from assets.migration.loads import dataset_name
from assets.migration.publish import warehouse_table
from assets.migration.registry import CATALOG_DIR, RegistryError, SourceSystem, TableSpec, load_registry
from resources import settings
from resources.lake import LakePartition, Tier
from resources.lake.datasets import LoadState
from resources.lake.paths import dataset_prefix, partition_prefix

if TYPE_CHECKING:
    from resources.lake import LakeStorage
    from resources.lake.storage import LakeObject
    from resources.sql_source import SqlSource
    from resources.warehouse import Warehouse

REGISTRY_DIR: Path = CATALOG_DIR  # the registry the code location loads
STATE_FILE = "_state.json"  # LoadState's object beside a dataset's data (hidden from listings)
TIERS = (Tier.RAW, Tier.PROCESSED)  # the migration domain's tiers: raw, and cleansed ("processed")
ERROR_CHARS = 500  # of a load_status error, in `status`


class UsageError(Exception):
    """A name or range the registry does not have; the message says what it does have."""


def _err(message: str) -> None:
    print(f"dp: {message}", file=sys.stderr)


def _sources(directory: str | Path | None = None) -> list[SourceSystem]:
    return load_registry(Path(directory) if directory else REGISTRY_DIR)


def find_table(sources: list[SourceSystem], name: str) -> tuple[SourceSystem, TableSpec]:
    """The source and table of 'source.table'."""
    source_name, dot, table_name = name.partition(".")
    by_name = {s.name: s for s in sources}
    if not dot or source_name not in by_name:
        known = sorted(f"{s.name}.{t.name}" for s in sources for t in s.tables)
        raise UsageError(f"no table {name!r} in the registry; give SOURCE.TABLE, one of {known}")
    source = by_name[source_name]
    tables = {t.name: t for t in source.tables}
    if table_name not in tables:
        raise UsageError(
            f"source {source_name!r} ({source.file}) has no table {table_name!r}; it has {sorted(tables)}"
        )
    return source, tables[table_name]


def source_db(source: SourceSystem) -> SqlSource:
    """The source's database as the code location reaches it (resources.profiles.sql_source): its
    local_url on this machine, the URL in its url_env variable on the aws profile."""
    import dagster as dg

    from resources.profiles import sql_source
    from resources.sql_source import SqlSource

    db = sql_source(source.url_env, source.local_url)
    if isinstance(db.url, dg.EnvVar):  # resolved by Dagster inside a run; here, by hand
        url = settings.env(source.url_env)
        if url is None:
            raise UsageError(f"{source.file}: source {source.name!r}: ${source.url_env} is not set")
        db = SqlSource(url=url)
    return db


def _lake_and_warehouse() -> tuple[LakeStorage, Warehouse]:
    from resources.profiles import build_resources

    resources = build_resources()
    return resources["lake"], resources["warehouse"]


# --- preflight --------------------------------------------------------------------------------


def preflight(source_name: str | None, table_name: str | None, registry_dir: str | None = None) -> int:
    """Plan every (or the named) table against its live source; exit 1 if any entry does not fit."""
    from assets.migration.preflight import PreflightError, plan_table

    try:
        sources = _sources(registry_dir)
    except RegistryError as exc:
        print(f"registry: FAILED: {exc}")
        return 1
    chosen = [
        (source, [t for t in source.tables if table_name in (None, t.name)])
        for source in sources
        if source_name in (None, source.name)
    ]
    chosen = [(source, tables) for source, tables in chosen if tables]
    if not chosen:
        known = sorted(f"{s.name}.{t.name}" for s in sources for t in s.tables)
        _err(f"no registered table matches --source {source_name} --table {table_name}; known: {known}")
        return 2
    failed = 0
    for source, tables in chosen:
        try:
            db = source_db(source)
        except UsageError as exc:
            print(f"{source.name}: FAILED: {exc}")
            failed += len(tables)
            continue
        try:
            with db.engine().connect():
                pass
        except Exception as exc:  # an unusable URL, the server or the database unreachable
            _dispose(db)
            print(f"{source.name}: FAILED: {source.file}: cannot reach the source: {_first_line(exc)}")
            for table in tables:
                print(f"{source.name}.{table.name}: FAILED: its source is not reachable")
            failed += len(tables)
            continue
        try:
            for table in tables:
                label = f"{source.name}.{table.name}"
                try:
                    plan = plan_table(db, table, source.file)
                    quote = db.engine().dialect.identifier_preparer.quote
                except PreflightError as exc:
                    print(f"{label}: FAILED: {exc}")
                    failed += 1
                    continue
                except Exception as exc:  # e.g. no permission on the catalog
                    print(
                        f"{label}: FAILED: {source.file}: table {table.name!r}: cannot read the source"
                        f" catalog of {db.safe_url()}: {_first_line(exc)}"
                    )
                    failed += 1
                    continue
                print(f"{label}: OK, {len(plan.columns)} columns")
                for column in plan.columns:
                    if column.select != quote(column.name):
                        print(
                            f"  {column.name}: {column.source_type} -> {column.arrow},"
                            f" read through a cast: {column.select}"
                        )
        finally:
            _dispose(db)
    total = sum(len(tables) for _, tables in chosen)
    print(f"preflight: {total - failed} of {total} tables OK" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


def _dispose(db: SqlSource) -> None:
    with contextlib.suppress(Exception):  # an unusable URL has no engine to close
        db.engine().dispose()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# --- reset ------------------------------------------------------------------------------------


def _describe(objects: list[LakeObject]) -> str:
    size = sum(o.size for o in objects)
    return f"{len(objects)} object{'s' if len(objects) != 1 else ''} ({size:,} bytes)"


def reset(name: str, yes: bool = False) -> int:
    """Delete the table's lake objects of both tiers (load state included) and its warehouse table."""
    try:
        source, table = find_table(_sources(), name)
    except UsageError as exc:
        _err(str(exc))
        return 2
    lake, warehouse = _lake_and_warehouse()
    dataset = dataset_name(source.name, table.name)
    label = f"{source.name}.{table.name}"
    found: list[tuple[str, list[LakeObject], str | None]] = []  # (prefix, objects, state key)
    for tier in TIERS:
        prefix = dataset_prefix(tier, DOMAIN, dataset)
        state_key = prefix + STATE_FILE
        objects = lake.list_objects(prefix)
        state = state_key if lake.exists(state_key) else None
        if objects or state:
            found.append((prefix, objects, state))
    target = warehouse_table(source.name, table.name)
    has_table = warehouse.table_exists(target)
    if not found and not has_table:
        print(f"{label}: nothing to reset: no lake objects, load state or warehouse table")
        return 0
    lines = [
        f"  {lake.uri(prefix)}: {_describe(objects)}" + (f" and the load state {STATE_FILE}" if state else "")
        for prefix, objects, state in found
    ]
    if has_table:
        lines.append(f"  warehouse table {target}")
    if not yes:
        print(f"{label}: reset would delete:")
        print("\n".join(lines))
        print("nothing deleted; run again with --yes to delete them")
        return 1
    for _, objects, state in found:
        for obj in objects:
            lake.delete(obj.key)
        if state:
            lake.delete(state)
    if has_table:
        from resources.warehouse.sql import quote_table

        warehouse.execute(f"DROP TABLE IF EXISTS {quote_table(target)}")
    print(f"{label}: removed")
    print("\n".join(lines))
    views = [v.name for v in source.views if table.name in v.tables]
    if views and has_table:
        print(f"  views reading it fail until it loads again: {', '.join(views)}")
    print(
        f"the next load reads it from scratch; the instance still has its history, so the automation"
        f" reloads only new partitions; to load all of it now: dp migration resync {label}"
    )
    return 0


# --- resync -----------------------------------------------------------------------------------


def _delete(lake: LakeStorage, prefixes: Iterable[str]) -> int:
    deleted = 0
    for prefix in prefixes:
        for obj in lake.list_objects(prefix):
            lake.delete(obj.key)
            deleted += 1
    return deleted


def resync(name: str, first: str | None = None, last: str | None = None, run: bool = True) -> int:
    """Reload a partition range (or the whole table) from the source: delete its raw files, forget
    its watermarks and blocks, then materialize raw and cleansed for it through `dp materialize`."""
    try:
        source, table = find_table(_sources(), name)
        keys = _resync_range(table, first, last)
    except UsageError as exc:
        _err(str(exc))
        return 2
    if run and settings.profile_name() == "aws":
        _err(
            "resync materializes through the local stack (dp materialize); on the aws profile give"
            " --no-run and launch the range from the UI"
        )
        return 2
    label = f"{source.name}.{table.name}"
    lake, _ = _lake_and_warehouse()
    dataset = dataset_name(source.name, table.name)
    state = LoadState(lake, DOMAIN, dataset)
    whole = keys is None or first is None
    if whole:
        deleted = _delete(lake, [dataset_prefix(Tier.RAW, DOMAIN, dataset)])
        state.forget(None)
        what = "the whole table"
    else:
        assert keys is not None
        parts = partitions_def(table)
        partitions: list[LakePartition | None] = [LakePartition.from_key(k, parts) for k in keys]
        deleted = _delete(
            lake, [partition_prefix(Tier.RAW, DOMAIN, dataset, p) for p in partitions if p is not None]
        )
        state.forget(partitions)
        what = f"{keys[0]}...{keys[-1]} ({len(keys)} partition{'s' if len(keys) != 1 else ''})"
    state.save()
    print(f"{label} {what}: deleted {deleted} raw file(s); forgot its watermarks and blocks")
    select = ",".join(table_key(source, table, tier).to_user_string() for tier in ("raw", "cleansed"))
    span = (keys[0], keys[-1]) if keys else (None, None)
    if not run:
        command = f"dp materialize --select {select}"
        if keys:
            command += f" --from {span[0]} --to {span[1]}"
        print(f"not materialized (--no-run); load it with: {command}")
        return 0
    from urllib.parse import urlparse

    from services.cli import _materialize

    lake_mode = "s3" if settings.profile_name() == "local-s3" else "dir"
    moto_port = urlparse(settings.local_aws_endpoint()).port or settings.DEFAULT_MOTO_PORT
    print(f"materializing {select}" + (f" for {span[0]}...{span[1]}" if keys else ""), flush=True)
    code = _materialize(select, None, span[0], span[1], lake_mode, moto_port)
    if code == 0:
        print(f"{label} {what}: resynced")
    else:
        print(f"{label} {what}: resync FAILED (exit {code}); the runs above say why")
    return code


def _resync_range(table: TableSpec, first: str | None, last: str | None) -> list[str] | None:
    """The partition keys to resync (every one without --from/--to); None for an unpartitioned table."""
    parts = partitions_def(table)
    if parts is None:
        if first is not None:
            raise UsageError(
                f"table {table.name!r} is not partitioned: resync reloads all of it (no --from/--to)"
            )
        return None
    all_keys = list(parts.get_partition_keys())
    if not all_keys:
        raise UsageError(f"table {table.name!r} has no partitions yet (they start {table.partition_start})")
    if first is None or last is None:
        return all_keys
    if first not in all_keys or last not in all_keys or all_keys.index(first) > all_keys.index(last):
        raise UsageError(
            f"{first}...{last} is not a range of the partitions of table {table.name!r}"
            f" ({all_keys[0]} to {all_keys[-1]})"
        )
    return all_keys[all_keys.index(first) : all_keys.index(last) + 1]


# --- status -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True) if not isinstance(value, str) else value


def status(name: str | None = None, limit: int = 10) -> int:
    """Per table: the blocked partitions with their check, reason, figures and since when, and the
    latest rows of platform_status.load_status."""
    try:
        sources = _sources()
        chosen = [find_table(sources, name)] if name else [(s, t) for s in sources for t in s.tables]
    except UsageError as exc:
        _err(str(exc))
        return 2
    lake, warehouse = _lake_and_warehouse()
    loads = _latest_loads(warehouse, [status_dataset(s, t) for s, t in chosen], limit)
    held: list[tuple[str, str]] = []
    for source, table in chosen:
        label = f"{source.name}.{table.name}"
        blocks = LoadState(lake, DOMAIN, dataset_name(source.name, table.name)).blocks()
        print(f"{label}: " + (f"{len(blocks)} blocked partition(s)" if blocks else "nothing blocked"))
        for key, block in sorted(blocks.items()):
            held.append((label, key))
            print(
                f"  blocked {key} since {block.get('since')}: check {block.get('check')} failed:"
                f" {block.get('reason')}"
            )
            for figure, value in (block.get("figures") or {}).items():
                print(f"    {figure}: {_text(value)}")
        rows = loads.get(status_dataset(source, table), [])
        if rows:
            print("  latest loads:")
        for row in rows:
            print(
                f"    {row['updated_at']:%Y-%m-%d %H:%M:%S} {row['stage']:<8} {row['partition']}"
                f" {row['outcome']} rows={row['rows']} {row['duration_s']}s run {row['run_id'] or '-'}"
            )
            if row["error"]:
                error = " ".join(str(row["error"]).split())
                print(f"      {error[:ERROR_CHARS]}{' ...' if len(error) > ERROR_CHARS else ''}")
    if held:
        label, key = held[0]
        range_ = "" if key == "all" else f" --from {key} --to {key}"
        print(
            "a blocked partition stays out of the cleansed tier and the warehouse until its raw load"
            " passes its checks again: fix the source or the registry, then e.g."
            f" dp migration resync {label}{range_}"
        )
    return 0


def _latest_loads(warehouse: Warehouse, datasets: list[str], limit: int) -> dict[str, list[dict]]:
    """The latest `limit` load_status rows of each dataset of the migration domain."""
    from assets.shared.load_status import STATUS_TABLE

    if not datasets or not warehouse.table_exists(STATUS_TABLE):
        return {}
    names = ", ".join("'" + d.replace("'", "''") + "'" for d in datasets)
    rows = warehouse.query(
        f"""SELECT dataset, stage, "partition", outcome, rows, duration_s, error, run_id, updated_at
        FROM {STATUS_TABLE}
        WHERE domain = '{DOMAIN}' AND dataset IN ({names})
        QUALIFY row_number() OVER (PARTITION BY dataset ORDER BY updated_at DESC) <= {int(limit)}
        ORDER BY dataset, updated_at DESC"""
    ).to_pylist()
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["dataset"], []).append(row)
    return found
