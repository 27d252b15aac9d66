"""`dp cdc ...`: the capture, full loads, replays and the operator's commands of the CDC domain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cdc", help="MySQL CDC: capture, full-load, replay, accept-schema, status, import-dms")
    cdc = p.add_subparsers(dest="cdc_command", required=True)
    cap = cdc.add_parser(
        "capture", help="read the binlog of the mapped clusters into DMS-format change files"
    )
    cap.add_argument("rest", nargs=argparse.REMAINDER, help="--cluster NAME, --mapping DIR, --stop-after S")
    full = cdc.add_parser("full-load", help="write a consistent snapshot of a table as DMS LOAD files")
    full.add_argument("rest", nargs=argparse.REMAINDER, help="TARGET [--mapping DIR] [--rows-per-file N]")
    rep = cdc.add_parser("replay", help="load quarantined change files again (after a fix)")
    rep.add_argument("target", nargs="?", default=None, help="cluster.table (default: every table)")
    rep.add_argument("--file", default=None, help="only this lake key")
    acc = cdc.add_parser(
        "accept-schema", help="take a blocked table's new source schema and resume its loads"
    )
    acc.add_argument("target", help="cluster.table")
    cdc.add_parser("status", help="per table: last change, lag, changes, quarantined files, block")
    imp = cdc.add_parser("import-dms", help="write a mapping file from an AWS DMS table-mapping JSON")
    imp.add_argument("file", help="the DMS table-mapping JSON (selection rules; '%%' wildcards)")
    imp.add_argument("--cluster", required=True, help="the mapped cluster whose catalog expands the rules")
    imp.add_argument(
        "--out", default=None, help="mapping file to write (default: platform/catalogs/cdc/<file>.yaml)"
    )
    imp.add_argument("--no-history", action="store_true", help="history: false for the imported tables")
    demo = cdc.add_parser(
        "demo-traffic", help="gentle inserts/updates/deletes on the demo tables (both clusters)"
    )
    demo.add_argument("--rate", type=float, default=2.0, help="changes per second in all")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    demo.add_argument("--progress", action="store_true")
    for parser in (rep, acc, imp, demo, cdc.choices["status"]):
        parser.add_argument(
            "--mapping", default=None, help="a mapping directory other than platform/catalogs/cdc"
        )


def run(args: argparse.Namespace) -> int:
    command = args.cdc_command
    if command == "capture":
        from services.cdc.capture import main as capture_main

        return capture_main(_rest(args))
    if command == "full-load":
        from services.cdc.full_load import main as full_load_main

        return full_load_main(_rest(args))
    mapping = _mapping(args)
    if command == "replay":
        return _replay(mapping, args.target, args.file)
    if command == "accept-schema":
        from assets.cdc.apply import accept_schema

        table = mapping.by_target(args.target)
        warehouse = _resources()["warehouse"]
        print(accept_schema(warehouse, table))
        return 0
    if command == "status":
        return _status(mapping)
    if command == "import-dms":
        return _import_dms(mapping, Path(args.file), args.cluster, args.out, history=not args.no_history)
    if command == "demo-traffic":
        from assets.cdc.mapping import cluster_url
        from services.generators.cdc_traffic import demo_traffic

        second = mapping.clusters.get("second")
        demo_traffic(
            cluster_url(mapping.clusters["main"]),
            cluster_url(second) if second else None,
            rate=args.rate,
            progress=args.progress,
            seconds=args.seconds,
        )
        return 0
    raise AssertionError(command)


def run_service(command: str, argv: list[str]) -> int:
    """`dp cdc capture ...` and `dp cdc full-load ...`: the service's own parser takes the options."""
    if command == "capture":
        from services.cdc.capture import main as capture_main

        return capture_main(argv)
    from services.cdc.full_load import main as full_load_main

    return full_load_main(argv)


def _rest(args: argparse.Namespace) -> list[str]:
    return [a for a in args.rest if a != "--"]


def _mapping(args: argparse.Namespace) -> Any:
    from assets.cdc.mapping import load_mapping

    return load_mapping(Path(args.mapping) if args.mapping else None)


def _resources() -> dict[str, Any]:
    from resources.profiles import build_resources

    return build_resources()


def _replay(mapping: Any, target: str | None, key: str | None) -> int:
    from assets.cdc.apply import apply_pending, release_quarantined

    resources = _resources()
    lake, warehouse = resources["lake"], resources["warehouse"]
    tables = [mapping.by_target(target)] if target else mapping.enabled
    released = 0
    failed = 0
    for table in tables:
        keys = release_quarantined(warehouse, table, key)
        if not keys:
            continue
        released += len(keys)
        result = apply_pending(lake, warehouse, table)
        still = [q for q in result.quarantined if q[0] in keys]
        failed += len(still)
        print(
            f"{table.target}: released {len(keys)} files; applied {result.files_applied},"
            f" changes {dict(result.changes)}, quarantined again {len(still)}"
            + (f"; blocked: {result.blocked}" if result.blocked else "")
        )
        for q_key, cause, reason in still:
            print(f"  {q_key}: {cause}: {reason}")
    if not released:
        print(
            "no quarantined files"
            + (f" for {target}" if target else "")
            + (f" matching {key}" if key else "")
        )
    return 1 if failed else 0


def _status(mapping: Any) -> int:
    from assets.cdc.apply import table_stats

    warehouse = _resources()["warehouse"]
    for table in mapping.enabled:
        stats = table_stats(warehouse, table)
        print(f"{table.cluster.name}.{table.name}: " + json.dumps(stats, default=str, sort_keys=True))
    return 0


def _import_dms(mapping: Any, path: Path, cluster_name: str, out: str | None, *, history: bool) -> int:
    """Expand a DMS mapping's selection rules against the cluster's catalog into a mapping file."""
    import pymysql
    import yaml
    from sqlalchemy.engine import make_url

    from assets.cdc.mapping import CATALOG_DIR, cluster_url, parse_dms_mapping, select_tables

    if cluster_name not in mapping.clusters:
        print(
            f"cluster {cluster_name!r} is not in the mapping (known: {sorted(mapping.clusters)})",
            file=sys.stderr,
        )
        return 2
    try:
        rules = parse_dms_mapping(path.read_text(), origin=str(path))
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    url = make_url(cluster_url(mapping.clusters[cluster_name]))
    con = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE'"
                " AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"
                " ORDER BY 1, 2"
            )
            available = [(str(s), str(t)) for s, t in cur.fetchall()]
            chosen = select_tables(rules, available)
            keys: dict[tuple[str, str], list[str]] = {}
            for schema, table in chosen:
                cur.execute(
                    "SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = %s"
                    " AND table_name = %s AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
                    (schema, table),
                )
                keys[(schema, table)] = [str(r[0]) for r in cur.fetchall()]
    finally:
        con.close()
    keyless = [f"{s}.{t}" for (s, t), k in keys.items() if not k]
    if keyless:
        print(
            f"skipped (no primary key; a current-state table needs one): {', '.join(keyless)}",
            file=sys.stderr,
        )
    mapped = {(t.cluster.name, t.database.lower(), t.table.lower()) for t in mapping.enabled}
    tables = [
        {"cluster": cluster_name, "database": s, "table": t, "primary_key": k, "history": history}
        for (s, t), k in keys.items()
        if k and (cluster_name, s.lower(), t.lower()) not in mapped
    ]
    if not tables:
        print(f"{path}: the rules select no table that is not mapped already ({len(chosen)} matched)")
        return 1
    target = Path(out) if out else CATALOG_DIR / f"{path.stem.replace('-', '_').lower()}.yaml"
    header = f"# Imported by `dp cdc import-dms {path.name} --cluster {cluster_name}`; edit freely.\n"
    target.write_text(header + yaml.safe_dump({"tables": tables}, sort_keys=False))
    names = ", ".join(f"{t['database']}.{t['table']}" for t in tables)
    print(f"wrote {target}: {len(tables)} tables ({names})")
    return 0
