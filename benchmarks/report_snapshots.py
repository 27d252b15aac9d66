"""Report snapshots through the real daemon: request to READY for new and for reused snapshots.

A throwaway Dagster instance (its own DAGSTER_HOME with platform/dagster.yaml, its own PostgreSQL
database, created and dropped), a moto server of its own for SQS and DynamoDB, a temp
PLATFORM_VAR_DIR (DuckDB warehouse, local lake) and `dagster-daemon run` on
benchmarks/report_snapshots_location.py: the reports domain alone, so only its two sensors tick.
The warehouse is seeded through the store-sales domain's own code (windows.finish_row,
rows_table, replace_where: what tests/integration/reports/test_render.py::write_windows does)
with a few windows a day for `--stores` stores over one day per round.

Rounds alternate (new, reuse, new, reuse, ...):

  new    K store_sales_windows requests for K distinct snapshots (round r: the day r+1 days ago,
         stores 1..K), sent to the SQS queue at once from K threads; per request, send -> the
         DynamoDB request item READY (swept every --poll s with two BatchGetItem calls, a settled
         request then read as clients read it, SnapshotStore.get_request). This is
         "including run start": the sensor tick records the request and asks for a run (the burst
         is split into runs of up to PLATFORM_SNAPSHOT_BATCH_SIZE), the run queue (pool
         report_render, 2 at run granularity) launches them, each run process renders its batch.
         Each SQS round starts at a random phase of the daemon's 5 s sensor loop.
         Split per request from the items' and runs' timestamps: send -> recorded (request item's
         received_at), recorded -> enqueued (run created after the tick), enqueued -> launched
         (waiting in the run queue for a pool slot), launched -> started (spawning the run process,
         which imports the code location), started -> READY (the snapshots before it in its
         run's batch, then its own claim, query, render, lake writes; split by the run's
         STEP_START and the materialization's query and render seconds),
         READY -> seen (the poll's lag).
  reuse  the same K requests again under new request ids: the sensor answers them by reuse,
         without a run (checked: the instance's run count is unchanged after the next tick). If
         services/snapshots/api.py answers POST /v1/snapshots for a READY snapshot synchronously
         (200, state READY, the new round's snapshot id), K POSTs for the same snapshots are
         timed too (`dp snapshot-api`): K at once, then K one after another.

Printed per round and as medians across rounds: count, p50, p95, max, snapshots per minute
(K / first send -> last READY seen), CPU seconds of the daemon's process tree (daemon, code
server, run processes; from /proc, reaped children included) and of the moto server, and the
largest summed RSS of the daemon's tree (sampled every 0.25 s), and the busy CPU-s of other work on
the machine meanwhile (/proc/stat less the above: the machine is shared); each figure beside the issue's
target (reuse under 1 s; new p95 under 20 s including run start), and why a part is slower.

  uv run python benchmarks/report_snapshots.py --snapshots 30 --rounds 2
  uv run python benchmarks/report_snapshots.py --snapshots 4 --rounds 1      # a quick look

This is a measurement, not a test: nothing here asserts a timing. Everything it starts (daemon,
moto, API server, database, temp directory) is stopped or removed on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assets.reports.runs import snapshot_tag  # noqa: E402
from benchmarks.proc_tree import machine_busy, tree_cpu, tree_memory_mb  # noqa: E402
from services.moto import free_port, start_moto, wait_for_http  # noqa: E402
from services.stack import dagster_pg_env, drop_dagster_db, ensure_dagster_db  # noqa: E402

BIN = Path(sys.executable).parent
REPORT = "store_sales_windows"
SENSORS = ("report_requests", "report_snapshot_sweep")
REUSE_TARGET_S = 1.0
NEW_P95_TARGET_S = 20.0
WINDOWS_A_DAY = 6  # 09:00-12:00 UTC
RUNNING = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
STAGES = (
    "send->recorded",
    "recorded->enqueued",
    "enqueued->launched",
    "launched->started",
    "started->READY",
    "READY->seen",
)
# started->READY split from the run's events and the materialization's metadata.
RENDER_PARTS = ("started->step start", "query", "render", "rest of step")


class Interrupted(Exception):
    pass


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


# --- figures -----------------------------------------------------------------------------------
def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _ts(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Round:
    kind: str  # new | reuse | http
    number: int
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    per_minute: float = 0.0
    wall: float = 0.0  # first send -> everything settled (runs ended, next tick done)
    daemon_cpu: float = 0.0
    moto_cpu: float = 0.0
    bench_cpu: float = 0.0  # this process: sending and polling
    others_cpu: float = 0.0  # the machine's busy CPU-s not counted above: other work on the machine
    load_end: float = 0.0  # 1-min load average when the round ended
    peak_mb: float = 0.0
    api_cpu: float = 0.0  # http rounds: the API server's CPU
    runs_created: int = 0
    poll_sweep: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    batches: dict[str, list[str]] = field(default_factory=dict)  # new rounds: run id -> its snapshots
    note: str = ""

    def line(self) -> str:
        if not self.latencies:
            return f"  {self.kind:<5} round {self.number}: nothing READY ({len(self.failures)} failed)"
        lat = self.latencies
        out = (
            f"  {self.kind:<5} round {self.number}: {len(lat)} READY, p50 {pct(lat, 50):6.2f} s, "
            f"p95 {pct(lat, 95):6.2f} s, max {max(lat):6.2f} s; {self.per_minute:7.1f} snapshots/min"
        )
        if self.kind.startswith("http"):
            out += f"; API server CPU {self.api_cpu:4.1f} s, moto CPU {self.moto_cpu:4.1f} s"
            out += f" over {self.wall:4.1f} s wall"
        else:
            out += (
                f"; runs created {self.runs_created}; wall {self.wall:5.1f} s, daemon tree CPU"
                f" {self.daemon_cpu:6.1f} s, peak {self.peak_mb:5.0f} MB; moto CPU {self.moto_cpu:5.1f} s,"
                f" this process {self.bench_cpu:4.1f} s; other work on the machine {self.others_cpu:5.1f}"
                f" CPU-s, load {self.load_end:.1f} at the end"
            )
        if self.failures:
            out += f"; {len(self.failures)} FAILED: {self.failures[0]}"
        return out


class RssPeak(threading.Thread):
    """The largest summed RSS of a process tree, sampled every 0.25 s."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self._done = root, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.25):
            self.peak = max(self.peak, tree_memory_mb(self.root, "VmRSS"))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the throwaway platform ----------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args, self.stack = args, stack
        self.tag = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix="report_snapshots_"))
        stack.callback(self._remove_tmp)
        self.home = self.tmp / "dagster_home"
        self.daemon: subprocess.Popen | None = None
        self.moto: subprocess.Popen | None = None
        self.api_url: str | None = None
        self.api_token = secrets.token_urlsafe(24)
        self.http_state = "not measured"
        self.api_proc: subprocess.Popen | None = None
        self.snapshot_ids: dict[int, list[str | None]] = {}  # round -> snapshot id per request
        self.phase = random.Random(5)  # when each SQS round starts within the sensor loop

    def _remove_tmp(self) -> None:
        if self.args.keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def setup(self) -> None:
        moto_port = free_port()
        self.moto = start_moto(moto_port, self.tmp / "moto.log")
        self.stack.callback(_stop, "moto", self.moto)
        reports = self.tmp / "reports"
        reports.mkdir()
        shutil.copy(ROOT / "platform" / "reports" / f"{REPORT}.yaml", reports)
        self.home.mkdir()
        shutil.copy(ROOT / "platform" / "dagster.yaml", self.home / "dagster.yaml")
        self.pg_db = f"dagster_bench_snapshots_{self.tag}"
        self.env = {
            **dagster_pg_env(),
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_DB": self.pg_db,
            "PLATFORM_PROFILE": "local",
            "PLATFORM_VAR_DIR": str(self.tmp / "var"),
            "PLATFORM_REPORTS_DIR": str(reports),
            "PLATFORM_AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
            "PLATFORM_SNAPSHOT_QUEUE": f"bench-report-requests-{self.tag}",
            "PLATFORM_SNAPSHOT_TABLE": f"bench-report-snapshots-{self.tag}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # This checkout's code in every child (daemon, code server, runs, API server), also when
            # it is a worktree beside the checkout the venv's editable install points at.
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        }
        for name in ("PLATFORM_LAKE_DIR", "PLATFORM_WAREHOUSE_PATH", "AWS_PROFILE", "AWS_REGION"):
            os.environ.pop(name, None)  # else they would point the throwaway platform elsewhere
        os.environ.update(self.env)
        ensure_dagster_db(self.pg_db)
        self.stack.callback(drop_dagster_db, self.pg_db)

        from resources.aws import AwsClients
        from services.aws_bootstrap import ensure_queue
        from services.snapshots.store import SnapshotStore

        self.aws = AwsClients(use_local_endpoint=True)
        self.queue_url = ensure_queue(self.aws, self.env["PLATFORM_SNAPSHOT_QUEUE"])
        self.store = SnapshotStore.from_resources(self.aws)
        self.store.ensure_table()
        self.seed()

        (self.tmp / "workspace.yaml").write_text(
            "load_from:\n  - python_file:\n"
            f"      relative_path: {ROOT / 'benchmarks' / 'report_snapshots_location.py'}\n"
            f"      working_directory: {ROOT}\n      location_name: report_snapshots_bench\n"
        )
        import dagster as dg

        # The instance (and its tables) exists before the daemon starts, so the two never race.
        self.instance = self.stack.enter_context(dg.DagsterInstance.from_config(str(self.home)))
        # Dagster creates a pool's limit row (from default_limit) on the run queue's first pass
        # that sees a run of the pool, after that pass read the configured pools: on a fresh
        # instance the first burst is not held to the limit. A long-lived instance has the row.
        from assets.reports.partitions import POOL

        self.instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        self.lone_import = self.time_lone_import()

    def time_lone_import(self) -> float:
        """Wall seconds for a fresh interpreter to import dagster and the code location, alone
        (what a run process does before RUN_START, less the run's own setup)."""
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", "import dagster, benchmarks.report_snapshots_location"],
            cwd=ROOT,
            check=True,
        )
        return time.monotonic() - t0

    def seed(self) -> None:
        """Windows for --stores stores, one day per new round, through the domain's own code."""
        from assets.store_sales.windows import TABLE, finish_row, rows_table, window_predicate
        from resources.warehouse import DuckDBWarehouse

        warehouse = DuckDBWarehouse()
        rng = random.Random(11)
        started = time.monotonic()
        for day in self.days():
            for w in range(WINDOWS_A_DAY):
                start = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC) + timedelta(minutes=30 * w)
                rows = []
                for store in range(1, self.args.stores + 1):
                    orders = rng.randint(1, 40)
                    gross = Decimal(rng.randint(500, 40_000)) / 100
                    refund = Decimal(rng.choice([0, 0, 0, rng.randint(100, 2_000)])) / 100
                    raw = {
                        "store_id": store,
                        "gross_sales": gross,
                        "refund_amount": refund,
                        "refund_count": 1 if refund else 0,
                        "order_count": orders,
                        "product_count": orders * 2,
                        "late_changes": 0,
                    }
                    rows.append(finish_row(raw, start, start + timedelta(minutes=31)))
                warehouse.replace_where(TABLE, rows_table(rows), window_predicate(start))
        print(
            f"seeded {TABLE}: {len(self.days())} days x {WINDOWS_A_DAY} windows x {self.args.stores} stores"
            f" in {time.monotonic() - started:.1f} s",
            flush=True,
        )

    def days(self) -> list[date]:
        today = datetime.now(UTC).date()
        return [today - timedelta(days=1 + r) for r in range(self.args.rounds)]

    def params(self, round_index: int) -> list[dict[str, Any]]:
        day = self.days()[round_index].isoformat()
        return [{"day": day, "store_id": store} for store in range(1, self.args.snapshots + 1)]

    # --- the daemon ---
    def start_daemon(self) -> None:
        log = open(self.tmp / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(self.tmp / "workspace.yaml")],
            cwd=ROOT,
            env={**os.environ},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stack.callback(_stop, "dagster-daemon", self.daemon)
        started, t0 = time.time(), time.monotonic()
        self.sensor_ids: dict[str, tuple[str, str]] = {}

        def ticked() -> bool:
            from dagster._core.definitions.run_request import InstigatorType

            for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                if state.instigator_name in SENSORS:
                    self.sensor_ids[state.instigator_name] = (state.instigator_origin_id, state.selector_id)
            return len(self.sensor_ids) == len(SENSORS) and all(
                self.instance.get_ticks(*ids, after=started, limit=1) for ids in self.sensor_ids.values()
            )

        self._wait(ticked, 240, "both report sensors' first ticks")
        print(
            f"daemon up: both sensors ticked {time.monotonic() - t0:.1f} s after start; tree CPU so far"
            f" {tree_cpu(self.daemon.pid):.1f} s",
            flush=True,
        )

    def _wait(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(
                    f"dagster-daemon exited with {self.daemon.returncode} while waiting for {what}"
                    f" (log: {self.tmp / 'daemon.log'}; run with --keep to keep it)"
                )
            if value := predicate():
                return value
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def live_runs(self) -> int:
        import dagster as dg

        statuses = [dg.DagsterRunStatus[s] for s in RUNNING]
        return self.instance.get_runs_count(filters=dg.RunsFilter(statuses=statuses))

    def after_next_tick(self, since: float) -> None:
        """Wait for a report_requests tick that started after `since` to finish (a run asked for by
        the tick that answered the last request exists by then)."""
        ids = self.sensor_ids["report_requests"]

        def done() -> bool:
            ticks = self.instance.get_ticks(*ids, after=since, limit=5)
            return any(t.end_timestamp is not None for t in ticks)

        self._wait(done, 60, "the next report_requests tick")
        time.sleep(1.0)  # the daemon's submit workers create the tick's runs right after it

    # --- the API ---
    def start_api(self) -> None:
        if not (ROOT / "services" / "snapshots" / "api.py").exists():
            self.http_state = "not measured: services/snapshots/api.py does not exist"
            return
        port = free_port()
        log = open(self.tmp / "api.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [str(BIN / "dp"), "snapshot-api", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "SNAPSHOT_API_TOKEN": self.api_token},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stack.callback(_stop, "dp snapshot-api", proc)
        self.api_proc = proc
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = (self.tmp / "api.log").read_text(errors="replace")[-600:]
            self.http_state = f"not measured: `dp snapshot-api` did not come up ({exc}); log tail: {tail!r}"
            return
        self.api_url = f"http://127.0.0.1:{port}"

    def post(self, params: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any], float]:
        body = json.dumps({"report": REPORT, "params": params, "request_id": request_id}).encode()
        request = urllib.request.Request(
            f"{self.api_url}/v1/snapshots",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_token}"},
        )
        t0 = time.time()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        took = time.time() - t0
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"body": raw[:200].decode(errors="replace")}
        return status, answer, took

    # --- the rounds ---
    def send_all(self, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
        from services.snapshots.messages import request_body

        sqs = self.aws.client("sqs")
        sent: dict[str, float] = {}

        def send(item: tuple[str, dict[str, Any]]) -> None:
            request_id, params = item
            body = request_body(REPORT, params, request_id)
            sent[request_id] = time.time()
            sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

        with ThreadPoolExecutor(min(32, len(requests))) as pool:
            list(pool.map(send, requests))
        return sent

    def settled(self, request_ids: set[str]) -> set[str]:
        """The requests whose item says READY or FAILED, read in two BatchGetItem calls (request
        items, then their snapshots) instead of two GetItem calls per request: with K pending,
        K x get_request every 0.1 s would load the moto server the platform itself is using."""
        from services.snapshots.store import FAILED, READY, REQUEST_KEY_PREFIX

        ddb, table = self.store.client, self.store.table_name

        def batch(keys: list[str], fields: str) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for i in range(0, len(keys), 100):
                request = {
                    table: {
                        "Keys": [{"snapshot_id": {"S": k}} for k in keys[i : i + 100]],
                        "ProjectionExpression": fields,
                        "ExpressionAttributeNames": {"#s": "state"},
                    }
                }
                items += ddb.batch_get_item(RequestItems=request)["Responses"].get(table, [])
            return items  # unprocessed keys (throttling) are read again on the next sweep

        requests = batch(
            [REQUEST_KEY_PREFIX + r for r in sorted(request_ids)], "request_id, target_snapshot_id, #s"
        )
        targets = {i["target_snapshot_id"]["S"] for i in requests if "target_snapshot_id" in i}
        states = {
            i["snapshot_id"]["S"]: i["state"]["S"]
            for i in (batch(sorted(targets), "snapshot_id, #s") if targets else [])
        }
        done = set()
        for item in requests:
            target = item.get("target_snapshot_id", {}).get("S")
            state = states.get(target) if target else item.get("state", {}).get("S", FAILED)
            if state in (READY, FAILED):
                done.add(item["request_id"]["S"])
        return done

    def poll(self, sent: dict[str, float], result: Round) -> dict[str, dict[str, Any]]:
        """Every request until READY or FAILED, swept every --poll s; a request the sweep finds
        settled is then read as a client reads it (SnapshotStore.get_request), and its time taken."""
        pending, ready = set(sent), {}
        deadline = time.monotonic() + self.args.timeout
        while pending:
            if time.monotonic() > deadline:  # counted as failures with the state they were in
                states = Counter(
                    (self.store.get_request(r) or {"state": "not recorded"})["state"] for r in pending
                )
                late = f"not READY after {self.args.timeout:.0f} s: {dict(states)}"
                result.failures += [late] * len(pending)
                print(f"  {len(pending)} requests {late}", flush=True)
                break
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {self.daemon.returncode}")
            sweep = time.monotonic()
            for request_id in sorted(self.settled(pending)):
                item = self.store.get_request(request_id)
                if item is None:
                    continue
                if item["state"] == "READY":
                    item["_seen"] = time.time()
                    ready[request_id] = item
                    pending.discard(request_id)
                elif item["state"] == "FAILED":
                    result.failures.append(f"{request_id}: {item.get('error') or item.get('last_error')}")
                    pending.discard(request_id)
            took = time.monotonic() - sweep
            result.poll_sweep.append(took)
            time.sleep(max(0.0, self.args.poll - took))
        return ready

    def sqs_round(self, kind: str, number: int, round_index: int) -> Round:
        import dagster as dg

        result = Round(kind, number)
        params = self.params(round_index)
        requests = [(f"bench-{self.tag}-{kind}{number}-{i:03d}", p) for i, p in enumerate(params)]
        assert self.daemon is not None and self.moto is not None
        runs_before = self.instance.get_runs_count()
        cpu0, moto0, own0 = tree_cpu(self.daemon.pid), tree_cpu(self.moto.pid), _own_cpu()
        # Clients send at any moment: the round starts at a random phase of the daemon's 5 s
        # sensor loop, not always just after the tick the last round waited for.
        time.sleep(self.phase.uniform(0.0, 5.0))
        busy0 = machine_busy()
        sampler = RssPeak(self.daemon.pid)
        sampler.start()
        t0 = time.monotonic()
        try:
            sent = self.send_all(requests)
            ready = self.poll(sent, result)
            last_seen = max((r["_seen"] for r in ready.values()), default=time.time())
            # Settled: this round's runs ended (new) or the tick after the last answer done (reuse).
            if kind == "new":
                self._wait(lambda: self.live_runs() == 0, self.args.timeout, "the round's runs to end")
            else:
                self.after_next_tick(last_seen)
        finally:
            result.peak_mb = sampler.stop()
        result.wall = time.monotonic() - t0
        result.daemon_cpu = tree_cpu(self.daemon.pid) - cpu0
        result.moto_cpu = tree_cpu(self.moto.pid) - moto0
        result.bench_cpu = _own_cpu() - own0
        ours = result.daemon_cpu + result.moto_cpu + result.bench_cpu
        result.others_cpu = max(0.0, machine_busy() - busy0 - ours)
        result.load_end = os.getloadavg()[0]
        result.runs_created = self.instance.get_runs_count() - runs_before
        result.latencies = [ready[r]["_seen"] - sent[r] for r in ready]
        ids = [ready[r]["snapshot_id"] if r in ready else None for r, _ in requests]
        if kind == "reuse":  # reuse means the new round's snapshots, not others
            for (request_id, _), had, got in zip(requests, self.snapshot_ids[round_index], ids, strict=True):
                if got is not None and got != had:
                    result.failures.append(f"{request_id}: snapshot {got}, not the new round's {had}")
        self.snapshot_ids[round_index] = ids
        if ready:
            result.per_minute = 60 * len(ready) / (last_seen - min(sent.values()))
        result.stages = {s: [] for s in STAGES}
        for request_id, item in ready.items():
            recorded = _ts(item.get("received_at"))
            if recorded is not None:
                result.stages["send->recorded"].append(recorded - sent[request_id])
            if kind != "new":
                continue
            runs = self.instance.get_runs(
                filters=dg.RunsFilter(tags={snapshot_tag(item["snapshot_id"]): "render"}), limit=5
            )
            ready_at = _ts(item.get("ready_at"))
            if runs:
                result.batches.setdefault(runs[-1].run_id, []).append(item["snapshot_id"])
            if not runs or recorded is None or ready_at is None:
                continue
            stats = self.instance.get_run_stats(runs[-1].run_id)  # the first run of the snapshot
            enqueued = stats.enqueued_time
            launched, started = stats.launch_time, stats.start_time
            if enqueued and launched and started:
                result.stages["recorded->enqueued"].append(enqueued - recorded)
                result.stages["enqueued->launched"].append(launched - enqueued)
                result.stages["launched->started"].append(started - launched)
                result.stages["started->READY"].append(ready_at - started)
                self.render_parts(runs[-1].run_id, item["snapshot_id"], started, ready_at, result.stages)
            result.stages["READY->seen"].append(item["_seen"] - ready_at)
        return result

    def render_parts(
        self, run_id: str, snapshot: str, started: float, ready_at: float, stages: dict[str, list[float]]
    ) -> None:
        """started->READY split: the run's setup until STEP_START, then this snapshot's query and
        render seconds (its partition's materialization metadata), and the rest (the snapshots
        before it in the run's batch; claim, lake and DynamoDB writes)."""
        from dagster import DagsterEventType

        step = self.instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
        done = [
            e
            for e in self.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
            if e.dagster_event is not None and e.dagster_event.partition == snapshot
        ]
        if not step or not done:
            return
        materialization = done[0].dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
        meta: dict[str, Any] = {k: v.value for k, v in materialization.metadata.items()}
        query, render = float(meta.get("query_seconds", 0)), float(meta.get("render_seconds", 0))
        step_start = step[0].timestamp
        stages.setdefault("started->step start", []).append(step_start - started)
        stages.setdefault("query", []).append(query)
        stages.setdefault("render", []).append(render)
        stages.setdefault("rest of step", []).append(ready_at - step_start - query - render)

    def http_rounds(self, number: int, round_index: int) -> list[Round]:
        """POSTs for the round's READY snapshots, if the API answers them synchronously: K at
        once (a burst on one server), then K one after another (a lone client's latency)."""
        if self.api_url is None:
            return []
        params = self.params(round_index)
        if number == 1:  # probe: does a READY snapshot get a synchronous 200 READY?
            status, answer, _ = self.post(params[0], f"bench-{self.tag}-probe")
            if status != 200 or answer.get("state") != "READY":
                self.http_state = (
                    f"not measured: POST /v1/snapshots for a READY snapshot answered {status}"
                    f" state {answer.get('state')!r} (no synchronous READY answer yet)"
                )
                self.api_url = None
                return []
            self.http_state = "measured"
        assert self.api_proc is not None
        expected = self.snapshot_ids.get(round_index, [])
        runs_before = self.instance.get_runs_count()
        rounds = []
        for kind, workers in (("http", min(32, len(params))), ("http1", 1)):
            result = Round(kind, number)
            assert self.moto is not None
            api0, moto0, t0 = tree_cpu(self.api_proc.pid), tree_cpu(self.moto.pid), time.time()
            with ThreadPoolExecutor(workers) as pool:
                answers = list(
                    pool.map(
                        lambda ip, k=kind: self.post(ip[1], f"bench-{self.tag}-{k}-{number}-{ip[0]:03d}"),
                        enumerate(params),
                    )
                )
            wall = time.time() - t0
            result.api_cpu = tree_cpu(self.api_proc.pid) - api0
            result.moto_cpu, result.wall = tree_cpu(self.moto.pid) - moto0, wall
            for i, (status, answer, took) in enumerate(answers):
                want = expected[i] if i < len(expected) else None
                if status == 200 and answer.get("state") == "READY" and answer.get("snapshot_id") == want:
                    result.latencies.append(took)
                else:  # not answered by reuse, or by another snapshot than the SQS round's
                    result.failures.append(f"{status} {answer} (expected READY {want})")
            result.per_minute = 60 * len(result.latencies) / wall if wall else 0.0
            rounds.append(result)
        self.after_next_tick(time.time())
        rounds[-1].runs_created = self.instance.get_runs_count() - runs_before  # both rounds'
        return rounds


def _stop(name: str, proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL after 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in 30 s; killing it", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left (run processes)
    proc.wait()


# --- the report ----------------------------------------------------------------------------------
def _median(rounds: list[Round], fn: Any) -> float:
    values = [fn(r) for r in rounds if r.latencies]
    return statistics.median(values) if values else float("nan")


def _verdict(value: float, target: float) -> str:
    return "met" if value < target else "SLOWER than target"


def report(bench: Bench, rounds: list[Round]) -> None:
    print("\nmedians across rounds (seconds; snapshots/min = K / first send -> last READY seen)")
    head = f"  {'':<26}{'rounds':>7}{'p50':>8}{'p95':>8}{'max':>8}{'per min':>9}   target"
    print(head)
    by_kind = {k: [r for r in rounds if r.kind == k] for k in ("new", "reuse", "http", "http1")}
    labels = {
        "new": "new (SQS)",
        "reuse": "reuse (SQS)",
        "http": "reuse (HTTP, K at once)",
        "http1": "reuse (HTTP, 1 at a time)",
    }
    verdicts: dict[str, tuple[float, float]] = {}
    for kind, group in by_kind.items():
        if not group:
            if kind == "http":
                print(f"  {labels[kind]:<26} {bench.http_state}")
            continue
        p50 = _median(group, lambda r: pct(r.latencies, 50))
        p95 = _median(group, lambda r: pct(r.latencies, 95))
        worst = _median(group, lambda r: max(r.latencies))
        per_min = _median(group, lambda r: r.per_minute)
        if kind == "new":
            target = f"p95 < {NEW_P95_TARGET_S:.0f} s: {_verdict(p95, NEW_P95_TARGET_S)}"
        else:
            target = (
                f"< {REUSE_TARGET_S:.0f} s: p95 {_verdict(p95, REUSE_TARGET_S)},"
                f" max {_verdict(worst, REUSE_TARGET_S)}"
            )
        verdicts[kind] = (p95, worst)
        figures = f"{len(group):>7}{p50:>8.2f}{p95:>8.2f}{worst:>8.2f}{per_min:>9.1f}"
        print(f"  {labels[kind]:<26}{figures}   {target}")
    for kind in ("new", "reuse"):
        group = [r for r in by_kind[kind] if r.latencies]
        if group:
            n = sum(len(r.latencies) for r in group)
            print(
                f"  {labels[kind]:<26} daemon tree CPU"
                f" {sum(r.daemon_cpu for r in group) / n:.2f} s per snapshot"
                f" (median round {_median(group, lambda r: r.daemon_cpu):.1f} s over"
                f" {_median(group, lambda r: r.wall):.1f} s wall), peak"
                f" {max(r.peak_mb for r in group):.0f} MB; moto {sum(r.moto_cpu for r in group) / n:.2f} s"
                " per snapshot; other work on the machine kept"
                f" {sum(r.others_cpu for r in group) / sum(r.wall for r in group):.1f} of"
                f" {os.cpu_count()} CPUs busy meanwhile"
            )

    new = [r for r in by_kind["new"] if r.latencies]
    if new:
        print("\nnew snapshots, per stage (all new rounds pooled; p50 / p95 / max, seconds)")
        for stage in STAGES + RENDER_PARTS:
            values = [v for r in new for v in r.stages.get(stage, [])]
            if values:
                indent = "    " if stage in RENDER_PARTS else "  "
                print(
                    f"{indent}{stage:<22}{pct(values, 50):7.2f} / {pct(values, 95):6.2f} / {max(values):6.2f}"
                )
        print(
            f"  (for reference: a fresh interpreter importing dagster and the code location alone took"
            f" {bench.lone_import:.1f} s wall)"
        )
    reuse = [r for r in by_kind["reuse"] if r.latencies]
    if reuse:
        values = [v for r in reuse for v in r.stages.get("send->recorded", [])]
        if values:
            print(
                "reused snapshots: send->recorded (= READY; answered in the sensor tick) "
                f"{pct(values, 50):.2f} / {pct(values, 95):.2f} / {max(values):.2f}"
            )
        made = sum(r.runs_created for r in reuse + by_kind["http"] + by_kind["http1"])
        print(f"runs created by reuse rounds: {made} ({'none, as expected' if not made else 'UNEXPECTED'})")
    ids = bench.sensor_ids["report_requests"]
    ticks = [t for t in bench.instance.get_ticks(*ids, limit=5000) if t.end_timestamp]
    ticks.sort(key=lambda t: t.timestamp)
    if len(ticks) > 1:
        from dagster._core.scheduler.instigation import TickStatus

        spans = [t.end_timestamp - t.timestamp for t in ticks]  # type: ignore[operator]
        print(
            f"report_requests ticks: {len(ticks)}, each {pct(spans, 50):.2f} s p50 ({max(spans):.2f} s max)"
        )
        for label, asked in (("listened its whole window", False), ("asked for runs (ended early)", True)):
            gaps = [
                b.timestamp - a.end_timestamp  # type: ignore[operator]
                for a, b in itertools.pairwise(ticks)
                if (a.status == TickStatus.SUCCESS) == asked
            ]
            if gaps:
                print(
                    f"  after a tick that {label}: the next started {pct(gaps, 50):.2f} s p50,"
                    f" {pct(gaps, 95):.2f} s p95, {max(gaps):.2f} s max later ({len(gaps)} gaps; a request"
                    " landing meanwhile waits for it)"
                )
    sweeps = [v for r in rounds for v in r.poll_sweep]
    if sweeps:
        print(
            f"poll: each sweep of the pending requests took {pct(sweeps, 50) * 1000:.0f} ms p50,"
            f" {pct(sweeps, 95) * 1000:.0f} ms p95 (asked for every {bench.args.poll:.2f} s)"
        )

    print("\nwhere the time goes")
    if "new" in verdicts:
        p95 = verdicts["new"][0]

        def med(name: str) -> float:
            return statistics.median([x for r in new for x in r.stages.get(name, [])] or [0.0])

        stage_p95 = {s: pct(v, 95) for s in STAGES if (v := [x for r in new for x in r.stages.get(s, [])])}
        largest = max(stage_p95, key=lambda k: stage_p95[k]) if stage_p95 else "-"
        cpu = sum(r.daemon_cpu for r in new) / max(1, sum(len(r.latencies) for r in new))
        print(
            f"- new p95 {p95:.1f} s vs target {NEW_P95_TARGET_S:.0f} s: "
            + ("met." if p95 < NEW_P95_TARGET_S else "SLOWER.")
            + " Stage p95s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in stage_p95.items())
            + f"; the largest is {largest}."
        )
        batch = statistics.median([len(v) for r in new for v in r.batches.values()] or [0])
        runs = statistics.median([len(r.batches) for r in new] or [0])
        print(
            f"  A burst goes to a few runs (median {runs:.0f} runs of {batch:.0f} snapshots per round:"
            " PLATFORM_SNAPSHOT_BATCH_SIZE), 2 at once in the pool report_render. A run starts its"
            f" process once (~{med('launched->started'):.1f} s: a fresh interpreter importing dagster and"
            f" the code location, {bench.lone_import:.1f} s when alone) and then renders its snapshots one"
            f" after another (query ~{med('query'):.2f} s, vl-convert ~{med('render'):.2f} s, plus claim,"
            " lake writes, READY and the materialization event), so a snapshot's started->READY grows"
            " with its place in the batch. send->recorded: report_requests listens on the queue for"
            " most of the daemon's 5 s sensor loop; recorded->enqueued: the tick ends ~0.5 s after a"
            " batch that needs runs, then the daemon creates them. The daemon's tree spends"
            f" ~{cpu:.1f} CPU-s per new snapshot."
        )
    if "reuse" in verdicts:
        p95, worst = verdicts["reuse"]
        print(
            f"- reuse through SQS p95 {p95:.2f} s (max {worst:.2f} s) vs target {REUSE_TARGET_S:.0f} s: "
            + ("met." if worst < REUSE_TARGET_S else "SLOWER.")
            + " No run is involved: the listening report_requests tick receives the request as it"
            " lands (a long poll), records it against the READY snapshot and deletes it. A request"
            " that lands between two ticks (the daemon's loop comes round every 5 s) waits for the"
            " next one."
        )
    if "http" not in verdicts:
        print(f"- reuse through HTTP: {bench.http_state}")
    for kind, how in (("http", "K POSTs at once"), ("http1", "one POST at a time")):
        if kind in verdicts:
            p95, worst = verdicts[kind]
            print(
                f"- reuse through HTTP, {how}: p95 {p95:.2f} s (max {worst:.2f} s) vs target"
                f" {REUSE_TARGET_S:.0f} s: " + ("met." if worst < REUSE_TARGET_S else "SLOWER.")
            )
    if "http" in verdicts and verdicts["http"][1] >= REUSE_TARGET_S:
        burst = by_kind["http"]
        wall = sum(r.wall for r in burst)
        api, moto = sum(r.api_cpu for r in burst) / wall, sum(r.moto_cpu for r in burst) / wall
        print(
            "  A burst of K POSTs waits on one `dp snapshot-api` process (uvicorn, one worker; each"
            " POST reads the catalog, the Dagster instance's asset records and several DynamoDB"
            " items from its thread pool). Over the bursts, the API server used"
            f" {api:.2f} and moto {moto:.2f}"
            " of a CPU: near 1.0 means that process is the bottleneck (one Python process, its"
            " threads take turns); well below, the POSTs wait on something serial between them."
            " Compare the one-at-a-time figure, and the CPUs other work kept busy."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=30, help="K: requests per round (default 30)")
    parser.add_argument("--rounds", type=int, default=2, help="new+reuse round pairs (default 2)")
    parser.add_argument("--stores", type=int, default=60, help="stores seeded (default 60)")
    parser.add_argument("--poll", type=float, default=0.1, help="poll interval, seconds (default 0.1)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="per round, for READY and for its runs to end (default 900 s)",
    )
    parser.add_argument("--no-http", action="store_true", help="leave out the HTTP endpoint")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (daemon and moto logs)")
    args = parser.parse_args()
    if not 1 <= args.snapshots <= args.stores:
        parser.error(
            f"--snapshots must be 1..--stores ({args.stores}): one store per snapshot, got {args.snapshots}"
        )
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.poll <= 0:
        parser.error(f"--poll must be positive, got {args.poll}")

    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        f" (1/5/15 min); K={args.snapshots} snapshots a round, {args.rounds} new + {args.rounds} reuse"
        f" rounds, {REPORT} over {args.stores} stores",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started with SIGINT ignored
    rounds: list[Round] = []
    with contextlib.ExitStack() as stack:
        bench = Bench(args, stack)
        bench.setup()
        bench.start_daemon()
        if args.no_http:
            bench.http_state = "not measured (--no-http)"
        else:
            bench.start_api()
        for r in range(args.rounds):
            for kind in ("new", "reuse"):
                result = bench.sqs_round(kind, r + 1, r)
                rounds.append(result)
                print(result.line(), flush=True)
                if kind == "reuse":
                    for http in bench.http_rounds(r + 1, r):
                        rounds.append(http)
                        print(http.line(), flush=True)
        report(bench, rounds)
        load = os.getloadavg()
        print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}); everything started was stopped", file=sys.stderr)
        sys.exit(130)
