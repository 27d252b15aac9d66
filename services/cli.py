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
    p_up.add_argument("--store-api-port", type=int, default=8600, help="the stores' read API (dp store-api)")

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
    p_card.add_argument(
        "--days",
        type=int,
        default=None,
        help="days of transactions (default: from the registry's partition_start to the end date)",
    )
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

    p_mat = sub.add_parser(
        "materialize",
        help="materialize assets (a partition, or a range as a backfill) into the local stack's instance",
    )
    p_mat.add_argument(
        "--select",
        required=True,
        help="asset keys or a selection, comma-separated, e.g. migration/card_db/raw/customers",
    )
    one = p_mat.add_mutually_exclusive_group()
    one.add_argument("--partition", default=None, help="one partition key")
    one.add_argument("--from", dest="first", default=None, help="first partition key of a range")
    p_mat.add_argument("--to", dest="last", default=None, help="last partition key of a range (with --from)")
    p_mat.add_argument("--lake", choices=["dir", "s3"], default="dir", help="as for `dp up`")
    p_mat.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT)
    # The runs themselves, executed inside the stack's environment (dp materialize calls this).
    p_runs = sub.add_parser("_materialize-runs")
    p_runs.add_argument("--select", required=True)
    p_runs.add_argument("--definitions", required=True)
    p_runs.add_argument("--partition", default=None)
    p_runs.add_argument("--from", dest="first", default=None)
    p_runs.add_argument("--to", dest="last", default=None)

    from services.cdc.cli import add_parser as add_cdc_parser

    add_cdc_parser(sub)
    from services.shop.cli import add_parser as add_shop_parser

    add_shop_parser(sub)
    from services.store_api.cli import add_parser as add_store_api_parser

    add_store_api_parser(sub)
    from services.spark_cluster import add_parser as add_spark_cluster_parser

    add_spark_cluster_parser(sub)
    from services.telemetry_sim.cli import add_parser as add_telemetry_sim_parser

    add_telemetry_sim_parser(sub)
    from services.telemetry_api.cli import add_parser as add_telemetry_api_parser

    add_telemetry_api_parser(sub)
    from services.snapshots.cli import add_parser as add_snapshot_parser

    add_snapshot_parser(sub)

    p_mig = sub.add_parser("migration", help="registered tables: preflight, reset, resync, status")
    mig = p_mig.add_subparsers(dest="migration_command", required=True)
    p_pre = mig.add_parser(
        "preflight", help="check every (or the named) registry entry against its live source schema"
    )
    p_pre.add_argument("--source", default=None, help="only this source system")
    p_pre.add_argument("--table", default=None, help="only this table (of every source, or of --source)")
    p_pre.add_argument(
        "--registry", default=None, help="a registry directory other than platform/catalogs/migration"
    )
    p_reset = mig.add_parser(
        "reset", help="forget a table: its raw and cleansed lake objects, load state and warehouse table"
    )
    p_reset.add_argument("table", metavar="SOURCE.TABLE")
    p_reset.add_argument("--yes", action="store_true", help="do it (without: say what would be deleted)")
    p_resync = mig.add_parser(
        "resync", help="reload a table's partition range (or the whole table) from its source"
    )
    p_resync.add_argument("table", metavar="SOURCE.TABLE")
    p_resync.add_argument("--from", dest="first", default=None, help="first partition key")
    p_resync.add_argument("--to", dest="last", default=None, help="last partition key")
    p_resync.add_argument(
        "--no-run",
        action="store_true",
        help="only delete and forget; materialize later (e.g. a backfill launched from the UI)",
    )
    p_mstatus = mig.add_parser("status", help="blocked partitions and the latest loads, per table")
    p_mstatus.add_argument("table", metavar="SOURCE.TABLE", nargs="?", default=None)
    p_mstatus.add_argument("--limit", type=int, default=10, help="latest load_status rows per table")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] in (["cdc", "capture"], ["cdc", "full-load"]):
        # These two pass their own options through to the service's parser.
        from services.cdc.cli import run_service

        return run_service(argv[1], argv[2:])
    args = parser.parse_args(argv)
    if args.command == "up":
        from services.stack import up

        return up(
            lake_in_s3=args.lake == "s3",
            ui_port=args.port,
            moto_port=args.moto_port,
            demo_interval=args.demo_interval,
            store_api_port=args.store_api_port,
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
            days = args.days
            if days is None:  # the registry's window: partition_start (within retention) to yesterday
                from services.demo_sources import demo_window

                first, last = demo_window(source_location())
                end = end or last
                days = max(1, (end - first).days + 1)
            result = generate(url, args.scale, days=days, end_date=end, seed=args.seed, progress=True)
        print(json.dumps(result, indent=2))
        return 0
    if args.command == "erase-customer":
        return _erase_customer(args.source, args.id, args.requested_by)
    if args.command == "materialize":
        if (args.first is None) != (args.last is None):
            parser.error("--from and --to go together")
        return _materialize(args.select, args.partition, args.first, args.last, args.lake, args.moto_port)
    if args.command == "_materialize-runs":
        return _materialize_runs(args.select, args.definitions, args.partition, args.first, args.last)
    if args.command == "migration":
        return _migration(parser, args)
    if args.command == "cdc":
        from services.cdc.cli import run as run_cdc

        return run_cdc(args)
    if args.command == "store-api":
        from services.store_api.cli import run as run_store_api

        return run_store_api(args)
    if args.command == "spark-cluster":
        from services.spark_cluster import run as run_spark_cluster

        return run_spark_cluster(args)
    if args.command == "shop-traffic":
        from services.shop.cli import run as run_shop

        return run_shop(args)
    if args.command == "telemetry-sim":
        from services.telemetry_sim.cli import run as run_telemetry_sim

        return run_telemetry_sim(args)
    if args.command == "telemetry-api":
        from services.telemetry_api.cli import run as run_telemetry_api

        return run_telemetry_api(args)
    if args.command == "telemetry-consumer":
        from services.telemetry_api.cli import run_consumer as run_telemetry_consumer

        return run_telemetry_consumer(args)
    if args.command in ("snapshot", "snapshot-api"):
        from services.snapshots.cli import run as run_snapshot

        return run_snapshot(args)
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
    if not removals:
        # Exit 1: nothing was erased, most likely a wrong id (or a customer not loaded yet); a
        # script must not take that for an erasure. The request itself is still in the audit log.
        print(
            f"dp: customer {subject!r} not found: no row of it in any lake tier or warehouse table of "
            f"{source_name}; nothing erased; the request is recorded in the audit log "
            f"(hash {subject_hash[:12]}...)",
            file=sys.stderr,
        )
        return 1
    print(f"erased customer (hash {subject_hash[:12]}...) from {len(removals)} locations; audit recorded")
    return 0


DEFINITIONS_FILE = "platform/definitions.py"


def _materialize(
    select: str,
    partition: str | None,
    first: str | None,
    last: str | None,
    lake: str,
    moto_port: int,
    definitions: str | None = None,
) -> int:
    """Run the selection (one partition, a range, or unpartitioned assets) with the local stack's
    environment, so the runs land in the stack's instance (var/dagster_home) and show in its UI.
    Prints one line per run, and for a failure each failed check's figures and the error."""
    import shutil
    import subprocess
    from pathlib import Path

    from resources import settings
    from services.stack import ensure_dagster_db, stack_env

    env = stack_env("local-s3" if lake == "s3" else "local", moto_port)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():  # as `dp up` makes it; a running stack's copy stays
        shutil.copyfile(settings.PROJECT_ROOT / "platform" / "dagster.yaml", home / "dagster.yaml")
    ensure_dagster_db(env["DAGSTER_PG_DB"])
    cmd = [str(Path(sys.executable).parent / "python"), "-m", "services.cli", "_materialize-runs"]
    cmd += ["--select", select, "--definitions", definitions or DEFINITIONS_FILE]
    if first is not None and last is not None:
        cmd += ["--from", first, "--to", last]
    elif partition:
        cmd += ["--partition", partition]
    return subprocess.run(cmd, cwd=settings.PROJECT_ROOT, env=env, check=False).returncode


def _materialize_runs(
    select: str, definitions: str, partition: str | None, first: str | None, last: str | None
) -> int:
    """The selection's runs, in this process's instance; exit 1 when a run or a check failed.

    One partition or an unpartitioned selection is one run, as `dagster asset materialize` makes
    it. A range runs in as few runs as the selected assets' BackfillPolicy allows:
    `dagster asset materialize --partition-range` takes only single-run assets, and the raw and
    cleansed tiers have BackfillPolicy.multi_run(31), so this does what that command does, one run
    per chunk of the range, each tagged with its range like a backfill's runs.
    """
    import dagster as dg
    from dagster._cli.workspace.cli_target import (
        PythonPointerOpts,
        get_repository_python_origin_from_cli_opts,
    )
    from dagster._core.definitions.backfill_policy import BackfillPolicyType
    from dagster._core.origin import JobPythonOrigin
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from dagster._utils.hosted_user_process import recon_job_from_origin, recon_repository_from_origin

    origin = get_repository_python_origin_from_cli_opts(PythonPointerOpts(python_file=definitions))
    repo = recon_repository_from_origin(origin).get_definition()
    keys = dg.AssetSelection.from_coercible(select.split(",")).resolve(repo.asset_graph)
    job = repo.get_implicit_job_def_for_assets(keys)
    if job is None:
        print("dp: the selected assets must share one PartitionsDefinition", file=sys.stderr)
        return 2
    nodes = [repo.asset_graph.get(k) for k in keys]
    partitions_def = next((n.partitions_def for n in nodes if n.partitions_def), None)
    runs: list[tuple[str, dict[str, str]]] = []  # (what the run covers, its tags)
    if partitions_def is None and (partition or first):
        print("dp: --partition and --from/--to need partitioned assets", file=sys.stderr)
        return 2
    if partitions_def is not None and not (partition or first):
        print("dp: the selected assets are partitioned: give --partition or --from/--to", file=sys.stderr)
        return 2
    all_keys = partitions_def.get_partition_keys() if partitions_def else []
    if partition:
        if partition not in all_keys:
            print(f"dp: {partition} is not a partition of the selected assets", file=sys.stderr)
            return 2
        runs = [(partition, dict(job.get_tags_for_partition_key(partition, selected_asset_keys=keys)))]
    elif first is not None and last is not None:
        if first not in all_keys or last not in all_keys or all_keys.index(first) > all_keys.index(last):
            print(f"dp: {first}...{last} is not a range of the assets' partitions", file=sys.stderr)
            return 2
        wanted = all_keys[all_keys.index(first) : all_keys.index(last) + 1]
        per_run = len(wanted)
        for node in nodes:
            policy = node.backfill_policy
            if policy is None:
                per_run = 1  # without a policy an asset runs one partition at a time
            elif policy.policy_type == BackfillPolicyType.MULTI_RUN and policy.max_partitions_per_run:
                per_run = min(per_run, policy.max_partitions_per_run)
        for at in range(0, len(wanted), per_run):
            chunk = wanted[at : at + per_run]
            tags = {ASSET_PARTITION_RANGE_START_TAG: chunk[0], ASSET_PARTITION_RANGE_END_TAG: chunk[-1]}
            runs.append((f"{chunk[0]}...{chunk[-1]}", tags))
    else:
        runs = [("all", {})]
    recon_job = recon_job_from_origin(JobPythonOrigin(job.name, repository_origin=origin))
    failed = 0
    with dg.DagsterInstance.get() as instance:
        for label, tags in runs:
            with dg.execute_job(recon_job, instance, asset_selection=list(keys), tags=tags) as result:
                failed += not _report_run(result, label)
    return 1 if failed else 0


def _report_run(result, label: str) -> bool:
    """Print the run's outcome; for a failure, each failed check with its metadata figures (source
    and lake counts, mismatches, ...), each failed step's error and the run's failure message.
    True when the run succeeded and no check of severity ERROR failed."""
    import dagster as dg

    failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
    errors = [e for e in failed_checks if e.severity == dg.AssetCheckSeverity.ERROR]
    outcome = "success" if result.success else "failed"
    if result.success and failed_checks:
        outcome += f", but {len(failed_checks)} check(s) failed"
    print(f"run {result.run_id} {label}: {outcome}", flush=True)
    for evaluation in failed_checks:
        blocking = ", blocking" if evaluation.blocking else ""
        severity = evaluation.severity.value
        check = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        print(f"  check {check} failed ({severity}{blocking})")
        if evaluation.description:
            print(f"    {evaluation.description}")
        for name, value in evaluation.metadata.items():
            print(f"    {name}: {_figure(value)}")
    for event in result.get_step_failure_events():
        failure = event.step_failure_data
        print(f"  step {event.step_key} failed: {_error_text(failure.error)}")
        user = failure.user_failure_data
        for name, value in (user.metadata if user else {}).items():
            print(f"    {name}: {_figure(value)}")
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            print(f"  run failure: {event.message}")
    sys.stdout.flush()
    return result.success and not errors


FIGURE_CHARS = 2000  # one metadata value printed; the UI has the whole of it


def _figure(value) -> str:
    """A metadata value as text: numbers as they are, JSON compact."""
    import json

    raw = getattr(value, "value", value)
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str, sort_keys=True)
    return text if len(text) <= FIGURE_CHARS else text[:FIGURE_CHARS] + " ..."


def _error_text(error) -> str:
    """An error's message and its causes' (the user's exception under Dagster's wrapper)."""
    parts = []
    while error is not None:
        message = error.message.strip()
        if message:
            parts.append(message)
        error = error.cause
    return "\n    caused by: ".join(parts) if parts else "(no message)"


def _migration(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from services import migration_cli

    command = args.migration_command
    if command == "preflight":
        return migration_cli.preflight(args.source, args.table, args.registry)
    if command == "reset":
        return migration_cli.reset(args.table, yes=args.yes)
    if command == "resync":
        if (args.first is None) != (args.last is None):
            parser.error("--from and --to go together")
        return migration_cli.resync(args.table, args.first, args.last, run=not args.no_run)
    if command == "status":
        return migration_cli.status(args.table, args.limit)
    parser.error(f"unknown migration command {command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
