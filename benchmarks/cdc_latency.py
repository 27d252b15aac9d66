"""CDC commit-to-current-state latency under sustained load, with the consistency ratio at the end.

Starts the whole local stack (`dp up`, its own var directory and Dagster database; the lake in a
local directory, where the listing sensor drives the loads, or `--lake s3` for moto S3 with S3
events on SQS, where moto itself is the bottleneck at this rate) on a mapping of
`--tables` bench tables, drives `--rate` row changes/s at MariaDB for `--minutes`, and meanwhile
keeps other runs busy on the same DuckDB warehouse (the demo feed's lake_ops runs, plus a process
that appends and reads every 5 s, each on a connection of its own, counting its failures and
lock waits). Then it waits for the loads to catch up and reads, from every history table, each
change's latency: its load time (`_loaded_at`) minus its commit time (`_commit_ts`, one-second
resolution in the binlog, so figures are +-1 s). It prints p50/p95/max, the consistency of every
current-state table with its source (dp's reconciliation), run outcomes, CPU seconds and peak
memory of the stack's processes.

  uv run python benchmarks/cdc_latency.py                      # 1,000 changes/s, 20 tables, 10 min
  uv run python benchmarks/cdc_latency.py --minutes 2 --rate 300   # a quick look

This is a measurement, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from services.generators.cdc_traffic import ensure_bench_schema, run_traffic  # noqa: E402
from services.stack import drop_dagster_db  # noqa: E402

SERVER = "mysql+pymysql://root@127.0.0.1:3306"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeMeter:
    """CPU seconds and peak RSS of a process and all its descendants, sampled every second."""

    def __init__(self, root_pid: int):
        self.root = root_pid
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[tuple[int, float, int]]:
        stats: dict[int, tuple[int, float, int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ppid, cpu, rss = (
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / CLK_TCK,
                int(fields[21]) * PAGE,
            )
            stats[int(entry)] = (ppid, cpu, rss)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree.append((pid, stats[pid][1], stats[pid][2]))
                todo += [p for p, (pp, _, _) in stats.items() if pp == pid]
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = self._tree()
            for pid, cpu, _ in tree:
                self.cpu[pid] = max(cpu, self.cpu.get(pid, 0.0))
            self.peak_rss = max(self.peak_rss, sum(rss for _, _, rss in tree))
            self._stop.wait(1.0)

    def start(self) -> TreeMeter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def _warehouse_neighbours(warehouse_path: Path, stop: threading.Event, stats: dict) -> None:
    """Other runs' share of the warehouse: every few seconds an append and a read, each on a
    connection of its own (DuckDB admits one writing process; the lock is held per connection),
    from a process other than the stack's, counting failures and the slowest wait. One long-lived
    process, so its interpreter start is not charged to the machine every time."""
    code = (
        "import sys, time, pyarrow as pa\n"
        "from resources.warehouse import DuckDBWarehouse\n"
        "w = DuckDBWarehouse(path=sys.argv[1], lock_timeout=120)\n"
        "for line in sys.stdin:\n"
        "    t = time.monotonic()\n"
        "    try:\n"
        "        w.load('bench_other.appends', pa.table({'at': [time.time()], 'n': [1]}), 'append')\n"
        "        w.query('SELECT count(*) FROM bench_other.appends')\n"
        "        print('ok', round(time.monotonic() - t, 3), flush=True)\n"
        "    except Exception as exc:\n"
        "        print('failed', type(exc).__name__, str(exc).replace(chr(10), ' ')[:200], flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(warehouse_path)], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        while not stop.wait(5.0):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().split(" ", 1)
            if answer[0] == "ok":
                stats["ok"] += 1
                stats["max_seconds"] = max(stats["max_seconds"], float(answer[1]))
            else:
                stats["failed"] += 1
                stats["errors"].append(answer[-1].strip())
    finally:
        proc.stdin.close()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="row changes per second")
    parser.add_argument("--tables", type=int, default=20)
    # dir by default: on this machine moto stands in for S3, and one Python process serving every
    # PUT, S3 event and listing of a 1,000 changes/s capture becomes the bottleneck (a real S3 does not).
    parser.add_argument("--lake", choices=["s3", "dir"], default="dir")
    parser.add_argument("--catch-up", type=float, default=300.0, help="seconds to wait for the loads after")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    database, dagster_db = f"bench_cdc_{tag}", f"bench_cdc_dagster_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="cdc-latency-"))
    var, mapping_dir = tmp / "var", tmp / "mapping"
    mapping_dir.mkdir()
    names = ensure_bench_schema(SERVER, database, args.tables)
    (mapping_dir / "bench.yaml").write_text(
        yaml.safe_dump(
            {
                "defaults": {"history": True, "flush_seconds": 2},
                "clusters": [{"name": "main", "local_url": SERVER, "server_id": 7000 + int(tag, 16) % 1000}],
                "tables": [
                    {"cluster": "main", "database": database, "table": n, "primary_key": ["id"]}
                    for n in names
                ],
            }
        )
    )
    env = dict(os.environ)
    env.update(
        PLATFORM_VAR_DIR=str(var),
        PLATFORM_CDC_MAPPING=str(mapping_dir),
        PLATFORM_DEMO_SOURCES="0",
        DAGSTER_PG_DB=dagster_db,
    )
    ui_port, moto_port = 3000 + int(tag, 16) % 500 + 200, 5200 + int(tag, 16) % 500
    stack = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--lake", args.lake, "--port", str(ui_port),
         "--moto-port", str(moto_port), "--demo-interval", "10"],
        cwd=ROOT, env=env, stdout=open(tmp / "stack.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    meter = TreeMeter(stack.pid).start()
    neighbours = {"ok": 0, "failed": 0, "max_seconds": 0.0, "errors": []}
    stop = threading.Event()
    try:
        _wait_up(tmp / "stack.log", stack)
        print(f"stack up (lake {args.lake}, state in {tmp})", flush=True)
        os.environ.update(
            PLATFORM_AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            PLATFORM_VAR_DIR=env["PLATFORM_VAR_DIR"],
            PLATFORM_CDC_MAPPING=env["PLATFORM_CDC_MAPPING"],
        )
        other = threading.Thread(
            target=_warehouse_neighbours, args=(var / "warehouse.duckdb", stop, neighbours), daemon=True
        )
        other.start()
        cpu_before = meter.cpu_seconds
        traffic = run_traffic(
            SERVER, database, names, rate=args.rate, seconds=args.minutes * 60, txn_size=10, seed=1
        )
        print(f"traffic: {traffic}", flush=True)
        caught_up_at = _wait_caught_up(args, env, traffic_changes=traffic)
        stop.set()
        other.join(timeout=60)
        result = _measure(args, moto_port)
        cpu = meter.cpu_seconds - cpu_before
        runs = _runs(var, dagster_db)
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            stack.wait(90)
        meter.stop()
        with contextlib.suppress(Exception):
            drop_dagster_db(dagster_db)
        _drop_source(database)
    r = result
    lines = [
        f"CDC latency: {args.rate:.0f} changes/s asked, {len(names)} tables, {args.minutes} min,"
        f" lake {args.lake}",
        f"  changes made            {r['changes']:,} ({r['achieved_rate']:.0f}/s achieved)",
        f"  commit -> current (s)   p50 {r['p50']:.1f}   p95 {r['p95']:.1f}   max {r['max']:.1f}"
        "   (target: p95 < 30)",
        f"  consistency             {r['consistency']:.3%} ({r['equal']:,} of {r['keys']:,} keys equal;"
        " target 100.000%)",
        f"  caught up               {caught_up_at:.0f} s after the traffic stopped",
        f"  runs                    {runs}",
        f"  other warehouse users   {neighbours['ok']} ok, {neighbours['failed']} failed,"
        f" slowest {neighbours['max_seconds']:.2f} s {neighbours['errors'][:2]}",
        f"  stack CPU seconds       {cpu:.0f} ({cpu / (args.minutes * 60):.2f} cores)"
        f"   peak RSS {meter.peak_rss / 2**20:.0f} MB",
    ]
    print("\n" + "\n".join(lines))
    return 0


def _wait_up(log: Path, stack: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise SystemExit(f"the stack exited ({stack.returncode}):\n{log.read_text()[-3000:]}")
        if "stack: up." in log.read_text():
            time.sleep(10)  # the capture's first checkpoint and the sensors' first ticks
            return
        time.sleep(1)
    raise SystemExit(f"the stack did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _tables() -> list:
    from assets.cdc.mapping import load_mapping

    return load_mapping().enabled


def _wait_caught_up(args: argparse.Namespace, env: dict[str, str], traffic_changes) -> float:
    """Seconds until every history table holds every change made (or the catch-up time is out)."""
    from resources.warehouse import DuckDBWarehouse

    warehouse = DuckDBWarehouse(
        path=str(Path(env["PLATFORM_VAR_DIR"]) / "warehouse.duckdb"), lock_timeout=120
    )
    expected = traffic_changes.changes
    started = time.monotonic()
    while time.monotonic() - started < args.catch_up:
        loaded = 0
        for table in _tables():
            if warehouse.table_exists(table.history_table):
                loaded += warehouse.query(f"SELECT count(*) AS n FROM {table.history_table}")["n"][0].as_py()
        if expected and loaded >= expected:
            break
        time.sleep(5)
    return time.monotonic() - started


def _measure(args: argparse.Namespace, moto_port: int) -> dict:
    from assets.cdc.reconcile import reconcile
    from resources.profiles import build_resources
    from resources.warehouse import DuckDBWarehouse

    os.environ["PLATFORM_PROFILE"] = "local-s3" if args.lake == "s3" else "local"
    lake = build_resources()["lake"]
    warehouse = DuckDBWarehouse(
        path=str(Path(os.environ["PLATFORM_VAR_DIR"]) / "warehouse.duckdb"), lock_timeout=120
    )
    latencies: list[float] = []
    equal = keys = changes = 0
    first = last = None
    for table in _tables():
        rows = warehouse.query(
            f"SELECT epoch_ms(_loaded_at) - epoch_ms(_commit_ts) AS ms, _commit_ts FROM {table.history_table}"
        )
        latencies += [ms / 1000 for ms in rows["ms"].to_pylist()]
        changes += rows.num_rows
        commits = rows["_commit_ts"].to_pylist()
        if commits:
            first = min(commits) if first is None else min(first, min(commits))
            last = max(commits) if last is None else max(last, max(commits))
        check = reconcile(lake, warehouse, table, wait_seconds=30)
        equal += check.matching
        keys += check.matching + check.differing + check.missing + check.extra
    latencies.sort()
    span = (last - first).total_seconds() if first and last and last > first else 1.0
    return {
        "changes": changes,
        "achieved_rate": changes / span,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
        "consistency": equal / keys if keys else 1.0,
        "equal": equal,
        "keys": keys,
    }


def _runs(var: Path, dagster_db: str) -> str:
    """Run outcomes in the stack's instance, per domain tag."""
    import dagster as dg

    from services.stack import dagster_pg_env

    os.environ["DAGSTER_PG_DB"] = dagster_db
    os.environ.update(dagster_pg_env())
    os.environ["DAGSTER_HOME"] = str(var / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        counts: dict[str, int] = {}
        waits, spans, steps = [], [], []
        for r in records:
            key = f"{r.dagster_run.tags.get('domain', 'other')}:{r.dagster_run.status.value}"
            counts[key] = counts.get(key, 0) + 1
            if r.dagster_run.tags.get("domain") != "cdc" or not (r.start_time and r.end_time):
                continue
            waits.append(r.start_time - r.create_timestamp.timestamp())
            spans.append(r.end_time - r.start_time)
            for stat in instance.get_run_step_stats(r.dagster_run.run_id):
                if stat.start_time and stat.end_time:
                    steps.append(stat.end_time - stat.start_time)
    # Where a CDC run's time goes: queued (created -> started), running, and per load step.
    timing = {
        name: f"p50 {statistics.median(v):.1f} max {max(v):.1f} (n={len(v)})"
        for name, v in (("queued_s", waits), ("run_s", spans), ("step_s", steps))
        if v
    }
    return json.dumps(dict(sorted(counts.items()))) + "\n" + " " * 26 + json.dumps(timing)


def _drop_source(database: str) -> None:
    import pymysql

    with (
        contextlib.suppress(Exception),
        pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as con,
    ):
        con.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")


if __name__ == "__main__":
    raise SystemExit(main())
