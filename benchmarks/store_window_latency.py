"""Delay from a 30-minute window's close to its figures in the store API, on the whole local stack.

Starts `dp up` (its own var directory and Dagster database, no demo sources) on a CDC mapping of a
shop database of its own, fills the last `--history-hours` with sales (a simulated clock, 600x
real time, so the UI shows filled partitions), then places live orders at `--rate` per second and
waits for the next `--windows` wall-clock window closes (:00 and :30 UTC). For each close it polls
the API (`/v1/windows/{start}/top`, every 0.25 s) until the window is served, and reads where the
time went: the CDC watermark passing the window's end (polled in the warehouse every 2 s), the
automation tick that requested the window, its run's start and end. CPU seconds and peak memory
of the stack's processes are printed beside the wall times.

  uv run python benchmarks/store_window_latency.py --windows 2     # up to an hour: waits for closes

This is a measurement, not a test: nothing here asserts a timing. Target: under 2 minutes.
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
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from cdc_latency import TreeMeter, _drop_source, _wait_up  # noqa: E402

from services.shop.schema import ensure_shop_schema  # noqa: E402
from services.shop.traffic import run_shop_traffic  # noqa: E402
from services.stack import drop_dagster_db  # noqa: E402

SERVER = "mysql+pymysql://root@127.0.0.1:3306"
TOKEN = "bench-token"
WINDOW = timedelta(minutes=30)


def _next_close(now: datetime) -> datetime:
    start = now.replace(minute=0 if now.minute < 30 else 30, second=0, microsecond=0)
    return start + WINDOW


def _served(port: int, start: datetime) -> bool:
    token = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/windows/{token}/top?n=1", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(json.loads(response.read())["stores"])
    except (urllib.error.HTTPError, urllib.error.URLError, TimeoutError):
        return False


def _watermark_thread(warehouse: Path, seen: dict[datetime, float], stop: threading.Event) -> None:
    """The wall time the CDC watermark first passes each window end (every 2 s)."""
    from assets.store_sales.windows import cdc_watermark
    from resources.lake import LocalLake
    from resources.warehouse import DuckDBWarehouse

    lake = LocalLake()
    wh = DuckDBWarehouse(path=str(warehouse), lock_timeout=30)
    while not stop.wait(2.0):
        with contextlib.suppress(Exception):
            mark = cdc_watermark(wh, lake)
            if mark is not None:
                for end in [e for e in seen if seen[e] == 0.0 and mark >= e]:
                    seen[end] = time.time()


def _run_timing(var: Path, dagster_db: str, partition: str) -> dict[str, float | str | None]:
    """The first run of the window's partition: its creation, start and end, and its tick."""
    import dagster as dg

    from services.stack import dagster_pg_env

    os.environ["DAGSTER_PG_DB"] = dagster_db
    os.environ.update(dagster_pg_env())
    os.environ["DAGSTER_HOME"] = str(var / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": partition}))
        if not records:
            return {}
        first = min(records, key=lambda r: r.create_timestamp)
        states = instance.all_instigator_state()
        [state] = [s for s in states if s.instigator_name == "store_sales_automation"]
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=500)
        tick = next((t for t in ticks if first.dagster_run.run_id in t.run_ids), None)
        return {
            "tick": tick.timestamp if tick else None,
            "created": first.create_timestamp.timestamp(),
            "started": first.start_time,
            "ended": first.end_time,
            "status": first.dagster_run.status.value,
            "runs": len(records),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=2, help="window closes to measure")
    parser.add_argument("--rate", type=float, default=5.0, help="live orders per second")
    parser.add_argument("--history-hours", type=float, default=3.0)
    parser.add_argument("--wait-after", type=float, default=300.0, help="seconds to wait for a window")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    shop, dagster_db = f"bench_shop_{tag}", f"bench_shop_dagster_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="store-window-latency-"))
    var, mapping_dir = tmp / "var", tmp / "mapping"
    mapping_dir.mkdir()
    ensure_shop_schema(SERVER, shop)
    tables = yaml.safe_load((ROOT / "platform/catalogs/cdc/shop.yaml").read_text())["tables"]
    (mapping_dir / "shop.yaml").write_text(
        yaml.safe_dump(
            {
                "defaults": {"history": True, "flush_seconds": 2},
                "clusters": [{"name": "main", "local_url": SERVER, "server_id": 7000 + int(tag, 16) % 1000}],
                "tables": [{**t, "database": shop} for t in tables],
            }
        )
    )
    # A Redis database of its own: the windows it serves (48 h TTL) must not answer for `make run`'s.
    import redis

    redis_url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(redis_url).flushdb()
    env = dict(os.environ)
    env.update(
        PLATFORM_REDIS_URL=redis_url,
        PLATFORM_VAR_DIR=str(var),
        PLATFORM_CDC_MAPPING=str(mapping_dir),
        PLATFORM_DEMO_SOURCES="0",
        DAGSTER_PG_DB=dagster_db,
        STORE_API_TOKEN=TOKEN,
    )
    ui_port, moto_port = 3000 + int(tag, 16) % 500 + 200, 5200 + int(tag, 16) % 500
    api_port = 8700 + int(tag, 16) % 200
    stack = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(ui_port), "--moto-port", str(moto_port),
         "--demo-interval", "30", "--store-api-port", str(api_port)],
        cwd=ROOT, env=env, stdout=open(tmp / "stack.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    meter = TreeMeter(stack.pid).start()
    stop = threading.Event()
    results: list[dict] = []
    try:
        _wait_up(tmp / "stack.log", stack)
        os.environ.update(PLATFORM_VAR_DIR=str(var), PLATFORM_CDC_MAPPING=str(mapping_dir))
        print(f"stack up: UI http://127.0.0.1:{ui_port}, API {api_port}, state in {tmp}", flush=True)
        now = datetime.now(UTC)
        base = _next_close(now) - WINDOW - timedelta(hours=args.history_hours)
        t0 = time.monotonic()
        history = run_shop_traffic(
            SERVER, shop, orders_per_second=args.rate * 4, seed=5,
            seconds=(now - base).total_seconds() / 600 - 1,
            clock=lambda: base + timedelta(seconds=(time.monotonic() - t0) * 600),
        )  # fmt: skip
        print(f"history: {history.summary()}", flush=True)
        live = threading.Thread(
            target=run_shop_traffic,
            args=(SERVER, shop),
            kwargs={"orders_per_second": args.rate, "stop": stop, "seed": 9},
            daemon=True,
        )
        live.start()
        closes = []
        first = _next_close(datetime.now(UTC))
        closes = [first + i * WINDOW for i in range(args.windows)]
        marks: dict[datetime, float] = dict.fromkeys(closes, 0.0)
        watcher = threading.Thread(
            target=_watermark_thread, args=(var / "warehouse.duckdb", marks, stop), daemon=True
        )
        watcher.start()
        for end in closes:
            wait = (end - datetime.now(UTC)).total_seconds()
            print(f"waiting {wait:.0f} s for the close at {end:%H:%M} UTC", flush=True)
            time.sleep(max(0.0, wait))
            cpu0 = meter.cpu_seconds
            closed = end.timestamp()
            served_at = None
            while time.time() - closed < args.wait_after:
                if _served(api_port, end - WINDOW):
                    served_at = time.time()
                    break
                time.sleep(0.25)
            timing = _run_timing(var, dagster_db, (end - WINDOW).strftime("%Y-%m-%d-%H:%M"))
            row = {
                "window": f"{end - WINDOW:%H:%M}-{end:%H:%M}",
                "api": None if served_at is None else served_at - closed,
                "watermark": marks[end] - closed if marks[end] else None,
                **{k: (v - closed if isinstance(v, float) and k != "runs" else v) for k, v in timing.items()},
                "cpu_s": meter.cpu_seconds - cpu0,
            }
            results.append(row)
            print(json.dumps(row, default=str), flush=True)
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            stack.wait(90)
        meter.stop()
        with contextlib.suppress(Exception):
            drop_dagster_db(dagster_db)
        _drop_source(shop)

    def fmt(value: object) -> str:
        return "-" if value is None else f"{value:6.1f}" if isinstance(value, float) else str(value)

    print("\nStore windows: seconds from a window's close (wall clock) to each step")
    print("  window        watermark  tick   run start  run end  in API  cpu-s")
    for r in results:
        print(
            f"  {r['window']}   {fmt(r['watermark'])}   {fmt(r.get('tick'))}   {fmt(r.get('started'))}"
            f"   {fmt(r.get('ended'))}   {fmt(r['api'])}   {r['cpu_s']:.0f}"
        )
    delays = [r["api"] for r in results if r["api"] is not None]
    if delays:
        print(
            f"  close -> API: median {statistics.median(delays):.1f} s, max {max(delays):.1f} s over"
            f" {len(delays)} of {len(results)} windows (target: under 120 s)"
        )
    print(f"  stack peak RSS {meter.peak_rss / 2**20:.0f} MB, {meter.cpu_seconds:.0f} CPU-s in all")
    return 0 if len(delays) == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
