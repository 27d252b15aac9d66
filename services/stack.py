"""The local stack: moto, Dagster (webserver + daemon) and the demo feed, as one command.

`dp up` starts every process in its own process group and stops them all on
Ctrl-C or `dp down`. A second `dp up` while one runs reports it and exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from resources import settings
from resources.lake.paths import dms_prefix
from services.moto import start_moto, wait_for_http

PIDFILE = "stack.pid"


def _alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def running_pid() -> int | None:
    pidfile = settings.var_dir() / PIDFILE
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def stack_env(profile: str, moto_port: int) -> dict[str, str]:
    var = settings.var_dir().resolve()
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(var / "dagster_home"),
        PLATFORM_PROFILE=profile,
        PLATFORM_VAR_DIR=str(var),
        PLATFORM_AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}",
        AWS_DEFAULT_REGION=settings.aws_region(),
        # The local stack never holds real AWS credentials: everything goes to moto.
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    env.pop("AWS_SESSION_TOKEN", None)
    env.pop("AWS_PROFILE", None)
    env.setdefault("PLATFORM_PII_KEY", _local_pii_key(var))
    env.setdefault("STORE_API_TOKEN", LOCAL_STORE_API_TOKEN)
    env.update(dagster_pg_env())
    return env


def dagster_pg_env() -> dict[str, str]:
    """The DAGSTER_PG_* variables platform/dagster.yaml reads, with their local defaults."""
    return {
        "DAGSTER_PG_HOST": settings.dagster_pg_host(),
        "DAGSTER_PG_PORT": str(settings.dagster_pg_port()),
        "DAGSTER_PG_USERNAME": settings.dagster_pg_username(),
        "DAGSTER_PG_PASSWORD": settings.dagster_pg_password(),
        "DAGSTER_PG_DB": settings.dagster_pg_db(),
    }


def _pg_admin_connect():
    """An autocommit connection to the server's maintenance database (CREATE/DROP DATABASE)."""
    import psycopg

    return psycopg.connect(
        host=settings.dagster_pg_host(),
        port=settings.dagster_pg_port(),
        user=settings.dagster_pg_username(),
        password=settings.dagster_pg_password() or None,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    )


def ensure_dagster_db(name: str | None = None) -> bool:
    """Create the instance's database if it does not exist; True when it was created."""
    import psycopg
    from psycopg import sql

    name = name or settings.dagster_pg_db()
    with _pg_admin_connect() as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            return False  # created by a concurrent start
    return True


def drop_dagster_db(name: str) -> None:
    """Drop a (test or benchmark) instance database, closing its remaining connections."""
    from psycopg import sql

    with _pg_admin_connect() as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _init_pools(home: Path) -> None:
    """Give the platform's pools their limit rows now: Dagster makes a pool's row (from
    concurrency.pools.default_limit) only on the run queue's first pass that sees a run of it, and
    that pass does not enforce the limit yet, so a first burst of renders would all start at once."""
    from dagster import DagsterInstance

    from assets.reports.partitions import POOL

    os.environ.update(dagster_pg_env())  # what dagster.yaml reads
    with DagsterInstance.from_config(str(home)) as instance:
        if instance.event_log_storage.initialize_concurrency_limit_to_default(POOL):
            limit = instance.event_log_storage.get_concurrency_info(POOL).limit
            print(f"stack: pool {POOL} limited to {limit} runs at once", flush=True)


def _local_pii_key(var: Path) -> str:
    """The local stack's PII key, made once and kept in var/secrets (mode 0600)."""
    from resources.secrets import ensure_local_pii_key

    return ensure_local_pii_key(var / "secrets" / "pii.key")


def _stop_all(procs: list[tuple[str, subprocess.Popen]], grace: float = 20.0) -> None:
    """Stop the services one at a time, the last started first: the CDC capture writes what it
    holds (to the lake, on moto in S3 mode) before moto stops."""
    for name, proc in reversed(procs):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"stack: {name} did not stop in {grace:.0f} s; killing it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group


def up(
    *,
    lake_in_s3: bool,
    ui_port: int,
    moto_port: int,
    demo_interval: float,
    store_api_port: int | None = None,
) -> int:
    store_api_port = store_api_port or STORE_API_PORT
    var = settings.var_dir().resolve()
    pid = running_pid()
    if pid is not None:
        print(
            f"stack: already running (pid {pid}); UI at http://127.0.0.1:{ui_port}. Stop it with `dp down`."
        )
        return 0
    var.mkdir(parents=True, exist_ok=True)
    (var / "logs").mkdir(exist_ok=True)
    home = var / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(settings.PROJECT_ROOT / "platform" / "dagster.yaml", home / "dagster.yaml")
    (var / PIDFILE).write_text(f"{os.getpid()}\n")

    profile = "local-s3" if lake_in_s3 else "local"
    env = stack_env(profile, moto_port)
    os.environ.update(
        {k: env[k] for k in ("PLATFORM_AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    )
    procs: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        print(f"stack: profile {profile}, state in {var}", flush=True)
        procs.append(("moto", start_moto(moto_port, var / "logs" / "moto.log")))
        _bootstrap_aws(lake_in_s3)
        if settings.demo_sources_enabled():
            _ensure_demo_sources()
            _ensure_shop()
        if ensure_dagster_db():
            print(f"stack: created the Dagster instance database {settings.dagster_pg_db()}", flush=True)
        dagster = Path(sys.executable).parent / "dagster"
        procs.append(
            (
                "dagster",
                subprocess.Popen(
                    [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(ui_port)],
                    cwd=settings.PROJECT_ROOT,
                    env=env,
                    start_new_session=True,
                ),
            )
        )
        wait_for_http(f"http://127.0.0.1:{ui_port}/server_info", timeout=180, proc=procs[-1][1])
        _init_pools(home)
        procs.append(
            ("demo-feed", _service("demo-feed", ["demo-feed", "--interval", str(demo_interval)], env, var))
        )
        # CDC: the capture first (it fixes the binlog position it starts from), then a full load of
        # mapped tables the lake has never seen, then the demo traffic on the source tables.
        procs.append(("cdc-capture", _service("cdc-capture", ["cdc", "capture"], env, var)))
        _initial_full_loads(env, var)
        if settings.demo_sources_enabled():
            procs.append(
                ("cdc-traffic", _service("cdc-traffic", ["cdc", "demo-traffic", "--rate", "2"], env, var))
            )
            # A gentle shop (an order every 2 s) whose refunds come 10 minutes to 2 hours after the
            # sale, so closed 30-minute windows take late changes in the demo too.
            shop = ["shop-traffic", "--rate", "0.5", "--refund-delay", "600:7200"]
            procs.append(("shop-traffic", _service("shop-traffic", shop, env, var)))
        api = ["store-api", "--port", str(store_api_port)]
        procs.append(("store-api", _service("store-api", api, env, var)))
        # Fleet telemetry: the ingest API, fed (with the demo sources) by 20 simulated vehicles at
        # 10 readings/s. Its buffers flush every 5 minutes here, so each open hour is processed
        # by Spark every few minutes, not every minute, on a small machine.
        env.setdefault("PLATFORM_TELEMETRY_BUFFER_SECONDS", "300")
        env.setdefault("TELEMETRY_API_TOKEN", LOCAL_TELEMETRY_API_TOKEN)
        telemetry_api = ["telemetry-api", "--port", str(TELEMETRY_API_PORT)]
        procs.append(("telemetry-api", _service("telemetry-api", telemetry_api, env, var)))
        if settings.demo_sources_enabled():
            sim = ["telemetry-sim", "--url", f"http://127.0.0.1:{TELEMETRY_API_PORT}", "--devices", "20"]
            procs.append(("telemetry-sim", _service("telemetry-sim", [*sim, "--rate", "10"], env, var)))
        # Report snapshots: request and poll over HTTP (or send to the SQS queue directly).
        env.setdefault("SNAPSHOT_API_TOKEN", LOCAL_SNAPSHOT_API_TOKEN)
        snapshot_api = ["snapshot-api", "--port", str(SNAPSHOT_API_PORT)]
        procs.append(("snapshot-api", _service("snapshot-api", snapshot_api, env, var)))
        print(
            f"stack: up. Dagster UI at http://127.0.0.1:{ui_port}, store API at"
            f" http://127.0.0.1:{store_api_port}/docs, telemetry API at"
            f" http://127.0.0.1:{TELEMETRY_API_PORT}/docs, snapshot API at"
            f" http://127.0.0.1:{SNAPSHOT_API_PORT}/docs (Ctrl-C or `dp down` stops it)",
            flush=True,
        )
        restarts: dict[str, float] = {}
        while not stopping:
            for i, (name, proc) in enumerate(procs):
                if proc.poll() is None:
                    continue
                if name in RESTARTED:
                    # A source that is down (the second MariaDB, say) must not stop the platform:
                    # the service is started again, at most once a minute, and its log says why.
                    if time.monotonic() - restarts.get(name, 0.0) >= 60:
                        print(
                            f"stack: {name} exited ({proc.returncode}); restarting (logs/{name}.log)",
                            flush=True,
                        )
                        restarts[name] = time.monotonic()
                        procs[i] = (name, _restart(name, proc, env, var))
                    continue
                print(f"stack: {name} exited with code {proc.returncode}; stopping", flush=True)
                stopping = True
            time.sleep(0.5)
    finally:
        print("stack: stopping", flush=True)
        _stop_all(procs)
        (var / PIDFILE).unlink(missing_ok=True)
        print("stack: stopped", flush=True)
    return 0


RESTARTED = {"cdc-capture", "cdc-traffic", "shop-traffic", "telemetry-sim"}
STORE_API_PORT = 8600
TELEMETRY_API_PORT = 8700
LOCAL_TELEMETRY_API_TOKEN = "local-dev-token"  # what `dp telemetry-sim` sends by default
SNAPSHOT_API_PORT = 8710
LOCAL_SNAPSHOT_API_TOKEN = "local-dev-token"
# The local stack's store API token when STORE_API_TOKEN is not set (documented in the README;
# a deployment sets its own from its secret store).
LOCAL_STORE_API_TOKEN = "local-dev-token"

_ARGS: dict[str, list[str]] = {}


def _service(name: str, args: list[str], env: dict[str, str], var: Path) -> subprocess.Popen:
    """A `dp` subcommand as a service of the stack, logging to var/logs/<name>.log."""
    _ARGS[name] = args
    log = open(var / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=settings.PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _restart(name: str, _old: subprocess.Popen, env: dict[str, str], var: Path) -> subprocess.Popen:
    return _service(name, _ARGS[name], env, var)


def _initial_full_loads(env: dict[str, str], var: Path, wait: float = 30.0) -> None:
    """Full-load every mapped table that exists at its source and has no change file yet.

    Waits for the capture's first checkpoints, so the snapshot's position is after the
    capture's start and no change falls between the two.
    """
    from assets.cdc.checkpoint import load_checkpoint
    from assets.cdc.mapping import load_mapping
    from resources.profiles import build_resources
    from services.cdc.full_load import full_load

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        mapping = load_mapping()
        lake = build_resources()["lake"]
        deadline = time.monotonic() + wait
        clusters = sorted({t.cluster.name for t in mapping.enabled})
        while time.monotonic() < deadline and not all(load_checkpoint(lake, c) for c in clusters):
            time.sleep(1)
        for table in mapping.enabled:
            if load_checkpoint(lake, table.cluster.name) is None:
                continue  # its capture is not running (server down): its loads wait for it
            if lake.list_objects(dms_prefix(table.cluster.name, table.database, table.table)):
                continue
            try:
                keys = full_load(mapping, lake, table.target)
                print(f"stack: full load of {table.target}: {len(keys)} files", flush=True)
            except Exception as exc:  # a table that does not exist yet is created (and captured) later
                print(f"stack: no full load of {table.target}: {exc}", flush=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _bootstrap_aws(lake_in_s3: bool) -> None:
    from resources.aws import AwsClients
    from services.aws_bootstrap import ensure_bucket_fanout, ensure_queue, ensure_topic

    aws = AwsClients(use_local_endpoint=True)
    queues = [settings.landing_queue_name(), settings.cdc_queue_name()]
    if lake_in_s3:
        ensure_bucket_fanout(aws, settings.lake_bucket(), settings.lake_events_topic_name(), queues)
    else:
        for name in queues:
            ensure_queue(aws, name)
    ensure_topic(aws, settings.alerts_topic_name())
    # Report snapshot requests (any SQS client sends them) and their state table.
    ensure_queue(aws, settings.snapshot_queue_name())
    from services.snapshots.store import SnapshotStore

    SnapshotStore.from_resources(aws).ensure_table()


DEMO_SCALE = 50_000


def _ensure_shop() -> None:
    """The shop's operational database on the CDC cluster 'main' (created and seeded once)."""
    from assets.cdc.mapping import cluster_url, load_mapping
    from services.shop.schema import ensure_shop_schema

    try:
        ensure_shop_schema(cluster_url(load_mapping().clusters["main"]))
    except Exception as exc:  # the shop traffic service retries; the rest of the stack goes on
        print(f"stack: the shop database is not ready: {exc}", flush=True)


def _ensure_demo_sources() -> None:
    """Give the sample card_db source its database on first start (the source stays as it is after)."""
    import sqlalchemy as sa

    from services.demo_sources import demo_window, source_location
    from services.generators.card_db import generate

    for source in [source_location()]:  # the catalog file of card_db, read as plain data
        try:
            engine = sa.create_engine(source.local_url)
            with engine.connect() as conn:
                if sa.inspect(conn).has_table("customers"):
                    continue
        except sa.exc.OperationalError:
            pass  # the database does not exist yet: generate() creates it
        try:
            # Transactions from the partitioned tables' partition_start to yesterday: every partition fills.
            first, last = demo_window(source)
            print(
                f"stack: generating the sample {source.name} source "
                f"({DEMO_SCALE:,} transactions, {first} to {last})",
                flush=True,
            )
            days = (last - first).days + 1
            generate(source.local_url, DEMO_SCALE, days=days, end_date=last, progress=False)
        except Exception as exc:  # the rest of the platform still runs without it
            print(f"stack: could not generate {source.name}: {exc}", flush=True)


def down(timeout: float = 60.0) -> int:
    pid = running_pid()
    if pid is None:
        print("stack: not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        print(f"stack: pid {pid} still running after {timeout:.0f} s")
        return 1
    print("stack: stopped")
    return 0
