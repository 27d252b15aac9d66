"""Latency of short sensor-driven runs: the platform's instance settings against Dagster's defaults.

Each contender is a throwaway Dagster instance (its own DAGSTER_HOME in a temp
directory; a PostgreSQL database of its own, created and dropped, when its
dagster.yaml uses Postgres storage) with `dagster-daemon run` on a tiny code
location of its own: one trivial asset and a sensor (`minimum_interval_seconds=1`)
that requests a run, with a unique run key, for every trigger file that appears
in a directory. The benchmark drops trigger files one at a time, each after the
previous run ended, and reads from the instance, per run:

  tick->success  the sensor tick that created the run started -> the run ended
                 (tick records; run end time from the run's stats)
  queued         the run was created (enqueued) -> the run started (RUN_START,
                 emitted by the run process once it has imported the code location)
  exec           the run started -> it ended
and, splitting the rest: tick->create (sensor evaluation and run creation),
wait (created -> dequeued and launched) and proc (launched -> started: spawning
the run process, which imports the code location).

Contenders run alternately in blocks (A B A B ...); each block starts the
contender's daemon, waits for the sensor's first tick, runs its share of the
runs and stops the daemon. CPU seconds are those of the daemon's process tree
from /proc (daemon, code server, run processes; each live process's time plus
that of the children it reaped) while the runs were measured, and from the
daemon's start (its start-up included); peak memory is the largest sum of RSS
over the tree, sampled every 0.2 s.

  uv run python benchmarks/sensor_run_latency.py            # 20 runs each, 4 blocks
  uv run python benchmarks/sensor_run_latency.py --runs 4 --blocks 2   # a quick look
  uv run python benchmarks/sensor_run_latency.py --variant a=path/a.yaml --variant b=path/b.yaml --no-peer

This is a measurement, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.stack import dagster_pg_env, drop_dagster_db, ensure_dagster_db  # noqa: E402

DAEMON = Path(sys.executable).parent / "dagster-daemon"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RUN_TIMEOUT = 240.0
READY_TIMEOUT = 180.0

LOCATION = '''
"""The benchmark's code location: a trivial asset and a sensor on a trigger directory."""
import os
from pathlib import Path

import dagster as dg

TRIGGERS = Path(os.environ["BENCH_TRIGGER_DIR"])


@dg.asset
def bench_asset() -> int:
    return 1


@dg.sensor(target=[bench_asset], minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def bench_trigger_sensor(context: dg.SensorEvaluationContext):
    names = sorted(p.name for p in TRIGGERS.iterdir() if p.name[0] != "." and p.name > (context.cursor or ""))
    for name in names:
        yield dg.RunRequest(run_key=name)
    if names:
        context.update_cursor(names[-1])


_EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}
defs = dg.Definitions(
    assets=[bench_asset],
    sensors=[bench_trigger_sensor],
    executor=_EXECUTORS.get(os.environ.get("BENCH_EXECUTOR", "default")),  # None: Dagster's default
)
'''

# Dagster's defaults: no storage key (SQLite), QueuedRunCoordinator dequeuing every 5 s,
# the default (multiprocess) executor. Telemetry is off for every contender alike.
DEFAULTS_YAML = "telemetry:\n  enabled: false\n"


@dataclass
class Sample:
    tick: float
    create: float
    launch: float
    start: float
    end: float

    @property
    def parts(self) -> dict[str, float]:
        return {
            "tick->success": self.end - self.tick,
            "queued": self.start - self.create,
            "exec": self.end - self.start,
            "tick->create": self.create - self.tick,
            "wait": self.launch - self.create,
            "proc": self.start - self.launch,
        }


@dataclass
class Contender:
    name: str
    yaml_text: str
    executor: str
    root: Path
    pg_db: str | None = None
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    run_wall: float = 0.0
    run_cpu: float = 0.0
    block_cpu: float = 0.0
    peak_rss: int = 0

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def triggers(self) -> Path:
        return self.root / "triggers"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "BENCH_TRIGGER_DIR": str(self.triggers),
            "BENCH_EXECUTOR": self.executor,
            **dagster_pg_env(),
        }
        if self.pg_db:
            env["DAGSTER_PG_DB"] = self.pg_db
        return env


# --- the daemon's process tree, from /proc ---------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _tree(root: int) -> dict[int, list[str]]:
    """Every process in root's tree (zombies included) with its /proc stat fields."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            stats[int(entry.name)] = fields
    tree, frontier = {}, {root}
    while frontier:
        tree.update({p: stats[p] for p in frontier if p in stats})
        frontier = {p for p, f in stats.items() if int(f[1]) in frontier} - tree.keys()
    return tree


def tree_cpu(root: int) -> float:
    """CPU seconds of the tree: each live process's own time plus that of the children it reaped."""
    # fields after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(sum(int(f[i]) for i in (11, 12, 13, 14)) for f in _tree(root).values()) / CLK_TCK


def tree_rss(root: int) -> int:
    return sum(int(f[21]) for f in _tree(root).values()) * PAGE


class RssSampler(threading.Thread):
    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self._stop_event = root, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            self.peak = max(self.peak, tree_rss(self.root))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# --- one block of runs -----------------------------------------------------------------------


@contextlib.contextmanager
def _env(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _sensor_ids(instance) -> tuple[str, str] | None:
    from dagster._core.definitions.run_request import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == "bench_trigger_sensor":
            return state.instigator_origin_id, state.selector_id
    return None


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {proc.returncode} while waiting for {what}")
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_block(contender: Contender, first: int, count: int, burst: int, log: Path) -> None:
    import dagster as dg

    env = contender.env()
    with _env(env), dg.DagsterInstance.from_config(str(contender.home)) as instance:
        # The instance (and its tables) exists before the daemon starts, so the two never race to create it.
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(DAEMON), "run", "-w", str(contender.root.parent / "workspace.yaml")],
                cwd=contender.root.parent,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        sampler = RssSampler(proc.pid)
        sampler.start()
        started = time.time()
        try:
            # Ready: the sensor has ticked since this daemon started.
            def ticked():
                ids = _sensor_ids(instance)
                return ids if ids and instance.get_ticks(*ids, after=started, limit=1) else None

            ids = _wait_for(ticked, READY_TIMEOUT, "the sensor's first tick", proc)
            cpu0, wall0 = tree_cpu(proc.pid), time.monotonic()
            names = [f"t{n:06d}" for n in range(first, first + count)]
            for i in range(0, count, burst):
                group = names[i : i + burst]
                for name in group:  # one file at a time, or `burst` at once
                    _drop(contender, name)
                for name in group:
                    sample = _collect(instance, contender, ids, name, proc)
                    if sample:
                        contender.samples.append(sample)
                    else:
                        contender.failures += 1
            contender.run_wall += time.monotonic() - wall0
            cpu1 = tree_cpu(proc.pid)
            contender.run_cpu += cpu1 - cpu0
            contender.block_cpu += cpu1  # from the daemon's start
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"  {contender.name}: daemon did not stop in 60 s; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            contender.peak_rss = max(contender.peak_rss, sampler.stop())


def _drop(contender: Contender, name: str) -> None:
    tmp = contender.triggers / f".{name}"
    tmp.write_text(name)
    tmp.rename(contender.triggers / name)


def _collect(instance, contender: Contender, ids: tuple[str, str], name: str, proc) -> Sample | None:
    import dagster as dg

    def finished():
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": name}), limit=1)
        return runs[0] if runs and runs[0].is_finished else None

    run = _wait_for(finished, RUN_TIMEOUT, f"the run of {name}", proc)
    if run.status != dg.DagsterRunStatus.SUCCESS:
        print(f"  {contender.name}: run {run.run_id} for {name} ended {run.status.value}", flush=True)
        return None
    record = instance.get_run_record_by_id(run.run_id)
    stats = instance.get_run_stats(run.run_id)
    tick = next(t for t in instance.get_ticks(*ids, limit=50) if run.run_id in t.run_ids)
    # The enqueue event has sub-second precision on every storage (SQLite's create_timestamp has not).
    create = stats.enqueued_time or record.create_timestamp.timestamp()
    return Sample(
        tick=tick.timestamp,
        create=create,
        launch=stats.launch_time or create,
        start=stats.start_time,
        end=stats.end_time,
    )


# --- report ----------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


COLUMNS = ["tick->success", "queued", "exec", "tick->create", "wait", "proc"]


def report(contenders: list[Contender]) -> None:
    print()
    width = max(len(c.name) for c in contenders) + 2
    head = f"{'contender':<{width}}{'runs':>5}" + "".join(f"{c + ' p50/p95':>22}" for c in COLUMNS)
    head += f"{'wall s':>9}{'CPU-s':>8}{'CPU-s/run':>10}{'block CPU-s':>12}{'peak MB':>9}"
    print(head)
    for c in contenders:
        line = f"{c.name:<{width}}{len(c.samples):>5}"
        for col in COLUMNS:
            values = [s.parts[col] for s in c.samples]
            line += f"{pct(values, 50):>13.2f} / {pct(values, 95):>5.2f}" if values else f"{'-':>22}"
        n = max(1, len(c.samples))
        line += f"{c.run_wall:>9.1f}{c.run_cpu:>8.1f}{c.run_cpu / n:>10.2f}{c.block_cpu:>12.1f}"
        line += f"{c.peak_rss / 2**20:>9.0f}"
        print(line + (f"   ({c.failures} failed)" if c.failures else ""))
    print("(seconds; CPU-s: the daemon's process tree, children included, while the runs were measured;")
    print(" block CPU-s: the same from each daemon's start; peak MB: largest summed RSS of the tree)")
    base = contenders[-1]
    for c in contenders[:-1]:
        if c.samples and base.samples:
            mine = pct([s.parts["tick->success"] for s in c.samples], 95)
            theirs = pct([s.parts["tick->success"] for s in base.samples], 95)
            print(
                f"p95 tick->success, {base.name} / {c.name}: {theirs:.2f} / {mine:.2f} = {theirs / mine:.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per contender (default 20)")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks (default 4)")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=DAGSTER_YAML",
        help="a contender with this dagster.yaml and the in-process executor "
        "(default: tuned=platform/dagster.yaml); repeatable",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        help="trigger files dropped at once (default 1: each after the last run)",
    )
    parser.add_argument("--no-peer", action="store_true", help="leave out Dagster's defaults")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (daemon logs)")
    args = parser.parse_args()
    blocks = max(1, min(args.blocks, args.runs))
    variants = [v.split("=", 1) for v in args.variant or ["tuned=platform/dagster.yaml"]]

    tmp = Path(tempfile.mkdtemp(prefix="sensor_run_latency_"))
    (tmp / "bench_location.py").write_text(LOCATION)
    (tmp / "workspace.yaml").write_text(
        "load_from:\n  - python_file:\n      relative_path: bench_location.py\n"
        "      working_directory: .\n      location_name: bench\n"
    )
    tag = uuid.uuid4().hex[:8]
    contenders = [
        Contender(f"{name} ({path}, in-process)", (ROOT / path).read_text(), "in_process", tmp / name)
        for name, path in variants
    ]
    if not args.no_peer:
        contenders.append(
            Contender(
                "defaults (SQLite, queue 5 s, multiprocess)", DEFAULTS_YAML, "default", tmp / "defaults"
            )
        )
    for i, c in enumerate(contenders):
        c.home.mkdir(parents=True)
        c.triggers.mkdir()
        (c.home / "dagster.yaml").write_text(c.yaml_text)
        if "postgres:" in c.yaml_text:
            c.pg_db = f"dagster_bench_{tag}_{i}"
            ensure_dagster_db(c.pg_db)

    sizes = [args.runs // blocks + (1 if b < args.runs % blocks else 0) for b in range(blocks)]
    print(f"{args.runs} runs per contender in {blocks} blocks {sizes}; state in {tmp}", flush=True)
    try:
        first = 0
        for b, size in enumerate(sizes):
            for c in contenders:
                print(f"block {b + 1}/{blocks}: {c.name}, {size} runs", flush=True)
                run_block(c, first, size, max(1, args.burst), tmp / f"{c.root.name}.log")
                done = c.samples[-size:]
                if done:
                    print("  tick->success: " + " ".join(f"{s.parts['tick->success']:.1f}" for s in done))
            first += size
        report(contenders)
    finally:
        for c in contenders:
            if c.pg_db:
                drop_dagster_db(c.pg_db)
        if args.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
