"""`dp`: the platform's command line (local stack, generators, tools)."""

from __future__ import annotations

import argparse
import sys

from resources.settings import DEFAULT_MOTO_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp", description="Data platform command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="start moto, Dagster (UI + daemon) and the demo feed")
    p_up.add_argument("--lake", choices=["dir", "s3"], default="dir", help="lake in var/lake or in moto S3")
    p_up.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    p_up.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT)
    p_up.add_argument("--demo-interval", type=float, default=30.0, help="seconds between demo files")

    sub.add_parser("down", help="stop the stack started by `dp up`")
    sub.add_parser("status", help="is the stack running?")

    p_feed = sub.add_parser("demo-feed", help="write demo files into the landing tier")
    p_feed.add_argument("--interval", type=float, default=30.0)
    p_feed.add_argument("--count", type=int, default=None, help="stop after this many files")

    p_card = sub.add_parser("gen-card-db", help="generate the sample card-company source database")
    p_card.add_argument(
        "--url",
        default=None,
        help="SQLAlchemy URL (default: the registry's url_env, $ONPREM_CARD_DB_URL, or its local_url)",
    )
    p_card.add_argument("--scale", type=int, default=100_000, help="card transactions to generate")
    p_card.add_argument("--days", type=int, default=30, help="days of transactions")
    p_card.add_argument(
        "--end-date", default=None, help="last day of transactions, YYYY-MM-DD (default: yesterday)"
    )
    p_card.add_argument("--seed", type=int, default=42)
    p_card.add_argument(
        "--day2", action="store_true", help="apply the next day's changes to an existing database"
    )
    p_card.add_argument(
        "--share", type=float, default=0.05, help="with --day2: share of customers added/updated"
    )

    p_erase = sub.add_parser("erase-customer", help="erase one customer from every tier and view of a source")
    p_erase.add_argument("--source", required=True, help="source system name in the migration registry")
    p_erase.add_argument("--id", required=True, help="the customer's id (the source's subject_column)")
    p_erase.add_argument("--requested-by", required=True, help="who asked, for the audit log")

    args = parser.parse_args(argv)
    if args.command == "up":
        from services.stack import up

        return up(
            lake_in_s3=args.lake == "s3",
            ui_port=args.port,
            moto_port=args.moto_port,
            demo_interval=args.demo_interval,
        )
    if args.command == "down":
        from services.stack import down

        return down()
    if args.command == "status":
        from services.stack import running_pid

        pid = running_pid()
        print(f"running (pid {pid})" if pid else "not running")
        return 0 if pid else 1
    if args.command == "demo-feed":
        from resources.profiles import build_resources
        from services.demo_feed import run

        run(build_resources()["lake"], args.interval, args.count)
        return 0
    if args.command == "gen-card-db":
        import json
        import logging
        from datetime import date

        from services.demo_sources import source_location, source_url
        from services.generators.card_db import apply_day2, generate

        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
        # The catalog file names the source's URL variable and its local default.
        url = args.url or source_url(source_location())
        if args.day2:
            result: dict = apply_day2(url, seed=args.seed, share=args.share, progress=True)
        else:
            end = date.fromisoformat(args.end_date) if args.end_date else None
            result = generate(url, args.scale, days=args.days, end_date=end, seed=args.seed, progress=True)
        print(json.dumps(result, indent=2))
        return 0
    if args.command == "erase-customer":
        return _erase_customer(args.source, args.id, args.requested_by)
    parser.error(f"unknown command {args.command}")
    return 2


def _erase_customer(source_name: str, subject: str, requested_by: str) -> int:
    import pyarrow as pa

    from assets.migration.erasure import erase_subject
    from assets.migration.pii import hash_array
    from assets.migration.registry import load_registry
    from resources.profiles import build_resources

    sources = {s.name: s for s in load_registry()}
    if source_name not in sources:
        print(f"dp: no source {source_name!r} in the registry; known: {sorted(sources)}", file=sys.stderr)
        return 2
    resources = build_resources()
    subject_hash = hash_array(pa.array([str(subject)]))[0].as_py()
    removals = erase_subject(
        resources["lake"], resources["warehouse"], sources[source_name], subject, requested_by, subject_hash
    )
    for r in removals:
        print(f"removed {r.rows} rows of {r.table} from {r.location}")
    print(f"erased customer (hash {subject_hash[:12]}...) from {len(removals)} locations; audit recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
