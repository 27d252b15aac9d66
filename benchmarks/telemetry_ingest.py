"""The fleet telemetry ingest API under load: batches of 100 readings, closed and open loop.

    uv run python benchmarks/telemetry_ingest.py [--seconds 30] [--rate 20000] [--rounds 2]
                                                 [--conns 32] [--workers 1] [--profile]

1. The server is the real one, `dp telemetry-api --port <free> --workers N` (the venv's `dp`
   entry point, as `uv run dp` runs it) with the local sink: a temporary lake
   (PLATFORM_LAKE_DIR), WAL (PLATFORM_TELEMETRY_WAL_DIR) and var dir, TELEMETRY_API_TOKEN set,
   the sink's buffering at its defaults (1 MB / 60 s, as Firehose). The rate limits are raised
   (PLATFORM_TELEMETRY_DEVICE_RATE=1e9, PLATFORM_TELEMETRY_GLOBAL_RATE=1e9) so the figures are the
   API's capacity, not its throttling (defaults: 10 readings/s a device, 50,000 the API).
   /health is waited for.
2. Load, from a client process of its own (plain asyncio on uvloop, raw HTTP/1.1 on keep-alive
   sockets, one request in flight a connection: httpx would cost the 2 shared cores more than
   the server's work). It pre-serializes 1,000 distinct POST /v1/readings/batch requests of 100
   readings each (20,000 devices, 100 distinct devices a batch, timestamps a few seconds old,
   the seed's fields, ~0.3% null temperatures) and cycles through them; anything but a 200 with
   {"accepted": 100} is an error.

   closed  --conns connections each send the next batch as the answer arrives, for --seconds:
           the maximum sustained readings/s, p50 / p99 of the round trip.
   open    batches at a fixed offered --rate readings/s (rate / 100 batches/s), the k-th due at
           start + k / batch rate whatever the answers (a pool of --open-conns connections takes
           them in order; a batch waiting for a free connection keeps waiting on the clock),
           latency from that due time (no coordinated omission): p50 / p99 / max, the achieved
           rate.

   Rounds alternate (closed, open, open, closed, ...); medians of the rounds are printed. Beside
   each figure: the client's CPU seconds (getrusage, the load phase only), the server's (utime +
   stime of its processes from /proc, before and after the phase) with its busiest threads, and
   the machine's other busy time (/proc/stat; the cores are shared). At the end the server's peak
   RSS (VmHWM summed over its processes).
3. Then the server is stopped (SIGTERM: its shutdown flushes every buffer to raw Parquet) and the
   raw tier's rows are counted: every acknowledged reading (warm-up included) must be there, and
   the WAL must be empty. Targets: closed loop >= 20,000 readings/s (the seed's ceiling, 20
   Kinesis shards), open loop at 20,000 readings/s with p99 < 100 ms.

--profile runs the server under cProfile (every thread; it slows the server down, so its
figures are not the benchmark's) for one closed loop and prints where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from proc_tree import descendants, free_port, machine_busy, tree_memory_mb

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-telemetry-" + uuid.uuid4().hex[:12]
BATCH = 100
DISTINCT_BATCHES = 1000
DEVICES = 20_000
TARGET_RPS = 20_000.0
TARGET_P99_MS = 100.0

# The server under cProfile, every thread its own profile (argv: stats dir, then dp's arguments).
PROFILED = textwrap.dedent(
    """
    import cProfile, sys, threading
    from pathlib import Path
    out = Path(sys.argv[1])
    profiles = []
    run = threading.Thread.run
    def profiled(self):
        p = cProfile.Profile()
        profiles.append((self.name, p))
        p.enable()
        try:
            run(self)
        finally:
            p.disable()
    threading.Thread.run = profiled
    import signal
    from services.cli import main
    main_profile = cProfile.Profile()
    def dump(*_):
        main_profile.disable()
        main_profile.dump_stats(out / "main.prof")
        for n, (name, p) in enumerate(profiles):
            p.dump_stats(out / f"thread-{n}-{name}.prof")
        sys.exit(0)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: dump the profiles then.
    signal.signal(signal.SIGTERM, dump)
    main_profile.enable()
    main(sys.argv[2:])
    dump()
    """
)


# --- the client (a child process: asyncio, uvloop, nothing of the platform) -----------------
def build_requests(port: int, token: str) -> list[bytes]:
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(20261124)
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for b in range(DISTINCT_BATCHES):
        readings = []
        for j in range(BATCH):
            d = (b * BATCH + j) % DEVICES
            ts = now - timedelta(seconds=5, milliseconds=b * 7 + j)
            readings.append(
                {
                    "device_id": f"truck-{d:05d}",
                    "timestamp": ts.isoformat().replace("+00:00", "Z"),
                    "temperature": None if rng.random() < 0.003 else round(rng.gauss(21, 4), 2),
                    "humidity": round(rng.uniform(30, 80), 1),
                    "pressure": round(rng.gauss(1013, 4), 1),
                    "location": {
                        "latitude": round(37.5 + rng.uniform(-1, 1), 6),
                        "longitude": round(127.0 + rng.uniform(-1, 1), 6),
                    },
                    "metadata": {"version": "1.4.2", "source": f"gateway-{d % 40}"},
                }
            )
        body = json.dumps({"readings": readings}, separators=(",", ":")).encode()
        head = (
            f"POST /v1/readings/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


def client_main(spec: dict) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    port, conns, mode, seconds = spec["port"], spec["conns"], spec["mode"], spec["seconds"]
    requests = build_requests(port, spec["token"])
    ok_body = f'{{"accepted":{BATCH}}}'.encode()
    lat: list[float] = []
    errors: dict[str, int] = {}
    accepted = [0]

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.waiter: asyncio.Future | None = None
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.buf += data
            i = self.buf.find(b"\r\n\r\n")
            if i < 0 or self.waiter is None:
                return
            head = bytes(self.buf[:i]).lower()
            j = head.find(b"content-length:")
            if j < 0:
                self._done("no content-length")
                return
            k = head.find(b"\r\n", j)
            length = int(head[j + 15 : k if k > 0 else len(head)])
            end = i + 4 + length
            if len(self.buf) < end:
                return
            body = bytes(self.buf[i + 4 : end])
            del self.buf[:end]
            status = head[9:12].decode()
            if status != "200":
                self._done(f"http {status}: {body[:120].decode(errors='replace')}")
            elif body.replace(b" ", b"") != ok_body:
                self._done(f"200 with {body[:80]!r}")
            else:
                accepted[0] += BATCH
                self._done(None)

        def _done(self, outcome: str | None) -> None:
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result(outcome)

        def connection_lost(self, exc: Exception | None) -> None:
            self._done("connection lost")

        async def send(self, raw: bytes) -> str | None:
            self.waiter = asyncio.get_running_loop().create_future()
            assert self.transport is not None
            self.transport.write(raw)
            return await self.waiter

    def note(outcome: str | None) -> None:
        if outcome is not None:
            errors[outcome] = errors.get(outcome, 0) + 1

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        pool = [(await loop.create_connection(Conn, "127.0.0.1", port))[1] for _ in range(conns)]
        clock = time.perf_counter
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        deadline = t0 + seconds

        if mode == "closed":

            async def worker(c: Conn, n: int) -> None:
                i = (n * 7919) % len(requests)
                while clock() < deadline:
                    s = clock()
                    note(await c.send(requests[i]))
                    lat.append(clock() - s)
                    i = (i + 1) % len(requests)

            await asyncio.gather(*(worker(c, n) for n, c in enumerate(pool)))
        else:
            rate = spec["rate"] / BATCH  # batches/s
            queue: asyncio.Queue = asyncio.Queue()
            total = int(seconds * rate)

            async def sender(c: Conn) -> None:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    due, raw = item
                    note(await c.send(raw))
                    lat.append(clock() - due)

            tasks = [asyncio.create_task(sender(c)) for c in pool]
            k = 0
            while k < total:
                now = clock()
                due = t0 + k / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    now = clock()
                while k < total and t0 + k / rate <= now:
                    queue.put_nowait((t0 + k / rate, requests[k % len(requests)]))
                    k += 1
            for _ in pool:
                queue.put_nowait(None)
            await asyncio.gather(*tasks)
        wall = clock() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        for c in pool:
            assert c.transport is not None
            c.transport.close()
        return {"lat": lat, "errors": errors, "wall": wall, "cpu": cpu, "accepted": accepted[0]}

    out = asyncio.run(main())
    Path(spec["out"]).write_text(json.dumps(out))


# --- the server's processes ----------------------------------------------------------------


def server_threads(root: int) -> dict[str, float]:
    """CPU seconds (utime + stime) per thread of the server's processes: '<pid>/<tid>' -> s."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in descendants(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[f"{pid}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def wait_health(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> dict:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the server exited with {proc.returncode} before /health answered:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            conn.close()
            if resp.status == 200 and body.get("writable"):
                return body
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"/health did not answer ok within {timeout:g} s")


def run_client(
    mode: str, args: argparse.Namespace, port: int, server: int, tmp: Path, seconds: float
) -> dict:
    start_at = time.time() + 2.0  # time for the child to import, build its batches and connect
    spec = {
        "port": port,
        "token": TOKEN,
        "mode": mode,
        "seconds": seconds,
        "conns": args.conns if mode == "closed" else args.open_conns,
        "rate": args.rate,
        "start_at": start_at,
        "out": str(tmp / f"client-{mode}.json"),
    }
    child = subprocess.Popen([sys.executable, __file__, "--client"], cwd=ROOT, stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    time.sleep(max(0.0, start_at - time.time()))
    threads0, m0 = server_threads(server), machine_busy()
    if child.wait() != 0:
        raise SystemExit(f"the client exited with {child.returncode}")
    threads1, m1 = server_threads(server), machine_busy()
    out = json.loads(Path(spec["out"]).read_text())
    lat = sorted(out["lat"])
    per_thread = {t: threads1[t] - threads0.get(t, 0.0) for t in threads1}
    server_cpu = sum(per_thread.values())
    wall = out["wall"]
    return {
        "batches": len(lat),
        "readings_s": out["accepted"] / wall,
        "accepted": out["accepted"],
        "p50": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max": 1000 * lat[-1] if lat else float("nan"),
        "errors": sum(out["errors"].values()),
        "error_kinds": out["errors"],
        "client_cpu": out["cpu"],
        "server_cpu": server_cpu,
        "server_share": server_cpu / wall,  # the open loop's wall includes draining its queue
        "threads": sorted(per_thread.values(), reverse=True)[:4],
        "machine_cpu": m1 - m0,
        "wall": wall,
    }


def show(mode: str, rnd: int | str, r: dict, rate: float) -> None:
    core = r["wall"]
    if mode == "closed":
        fig = f"{r['readings_s']:8,.0f} readings/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms"
    else:
        fig = (
            f"offered {rate:,.0f}/s achieved {r['readings_s']:8,.0f} readings/s  p50 {r['p50']:7.2f} ms"
            f"  p99 {r['p99']:7.2f} ms  max {r['max']:7.2f} ms"
        )
    others = r["machine_cpu"] - r["server_cpu"] - r["client_cpu"]
    threads = " + ".join(f"{t:.1f}" for t in r["threads"])
    print(
        f"round {rnd} {mode:6} {fig}  errors {r['errors']}"
        f"  client CPU {r['client_cpu']:5.1f} s ({100 * r['client_cpu'] / core:3.0f}% of a core)"
        f"  server CPU {r['server_cpu']:5.1f} s ({100 * r['server_cpu'] / core:3.0f}%; busiest threads"
        f" {threads} s)  other processes {others:5.1f} s (machine busy {100 * r['machine_cpu'] / core:3.0f}%"
        f" of {100 * (os.cpu_count() or 1)}%)",
        flush=True,
    )
    if r["error_kinds"]:
        print(f"    errors by kind: {r['error_kinds']}", flush=True)


COUNT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    files = sorted(Path(sys.argv[1]).rglob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    hours = sorted({str(f.parent.relative_to(sys.argv[1])) for f in files})
    print(json.dumps({"rows": rows, "files": len(files), "hours": hours}))
    """
)


def stop_server(server: subprocess.Popen, timeout: float = 180.0) -> float:
    """SIGTERM (uvicorn's graceful shutdown: the sink flushes every buffer); seconds it took."""
    t = time.perf_counter()
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        raise SystemExit(f"the server did not stop within {timeout:g} s of SIGTERM (killed)") from None
    return time.perf_counter() - t


def print_profile(stats_dir: Path, top: int = 25) -> None:
    import pstats

    files = sorted(stats_dir.glob("*.prof"))
    print(f"\nprofile (cProfile, {len(files)} threads profiled; the server is slower under it):")
    for f in files:
        st = pstats.Stats(str(f))
        total = st.total_tt  # type: ignore[attr-defined]
        print(f"  {f.stem}: {total:.1f} s of own time in profiled functions")
    for f in files:
        print(f"\n  {f.stem}, the top 12 by own time:")
        pstats.Stats(str(f)).sort_stats("tottime").print_stats(12)
    merged = pstats.Stats(*(str(f) for f in files))
    print(f"\n  all threads, the top {top} by own time:")
    merged.sort_stats("tottime").print_stats(top)
    print(f"  all threads, the top {top} by cumulative time:")
    merged.sort_stats("cumulative").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=TARGET_RPS, help="the open loop's offered readings/s")
    ap.add_argument("--conns", type=int, default=32, help="the closed loop's connections")
    ap.add_argument("--open-conns", type=int, default=64, help="the open loop's connection pool")
    ap.add_argument("--workers", type=int, default=1, help="dp telemetry-api --workers")
    ap.add_argument("--profile", action="store_true", help="one closed loop with the server under cProfile")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(json.loads(sys.stdin.read()))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench_telemetry_ingest_", dir="/tmp"))
    lake, wal = tmp / "lake", tmp / "wal"
    server: subprocess.Popen | None = None
    try:
        port = free_port()
        env = {
            **os.environ,
            "TELEMETRY_API_TOKEN": TOKEN,
            "PLATFORM_PROFILE": "local",
            "PLATFORM_TELEMETRY_SINK": "local",
            "PLATFORM_VAR_DIR": str(tmp / "var"),
            "PLATFORM_LAKE_DIR": str(lake),
            "PLATFORM_TELEMETRY_WAL_DIR": str(wal),
            # Capacity, not throttling: the limits far above anything offered here.
            "PLATFORM_TELEMETRY_DEVICE_RATE": "1e9",
            "PLATFORM_TELEMETRY_GLOBAL_RATE": "1e9",
        }
        dp = [str(Path(sys.executable).parent / "dp"), "telemetry-api", "--port", str(port)]
        dp += ["--workers", str(args.workers)]
        command = dp
        if args.profile:
            (tmp / "prof").mkdir()
            command = [sys.executable, "-c", PROFILED, str(tmp / "prof"), *dp[1:]]
        log = tmp / "server.log"
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "w"),  # noqa: SIM115
            start_new_session=True,
        )
        t = time.perf_counter()
        health = wait_health(port, server, log)
        print(
            f"server: dp telemetry-api --workers {args.workers} on :{port}"
            f"{' (under cProfile)' * args.profile},"
            f" healthy after {time.perf_counter() - t:.1f} s ({health['detail']});"
            f" {len(descendants(server.pid))} process(es); local sink, buffers 1 MB / 60 s; rate limits"
            f" raised to 1e9 readings/s; batches of {BATCH}; one client process; {os.cpu_count()} cores"
            f" shared",
            flush=True,
        )
        acknowledged = 0
        warm = run_client("closed", args, port, server.pid, tmp, 3.0)
        acknowledged += warm["accepted"]
        show("closed", "warm-up", warm, args.rate)

        results: dict[str, list[dict]] = {"closed": [], "open": []}
        if args.profile:
            res = run_client("closed", args, port, server.pid, tmp, args.seconds)
            acknowledged += res["accepted"]
            show("closed", 1, res, args.rate)
        else:
            for rnd in range(1, args.rounds + 1):
                for mode in ("closed", "open") if rnd % 2 else ("open", "closed"):
                    res = run_client(mode, args, port, server.pid, tmp, args.seconds)
                    acknowledged += res["accepted"]
                    results[mode].append(res)
                    show(mode, rnd, res, args.rate)
        hwm = tree_memory_mb(server.pid)
        stopped = stop_server(server)
        code = server.returncode
        server = None
        counted = subprocess.run(
            [sys.executable, "-c", COUNT, str(lake / "raw" / "telemetry" / "readings")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        raw = json.loads(counted.stdout)
        left = sorted(p.name for p in wal.glob("*")) if wal.exists() else []
        durable = raw["rows"] == acknowledged and not left
        print(
            f"\nserver stopped (SIGTERM) in {stopped:.1f} s, exit code {code} (uvicorn re-raises the"
            f" signal it handled); peak RSS {hwm:.0f} MB."
            f"\nraw tier after the shutdown flush: {raw['rows']:,} rows in {raw['files']} Parquet files"
            f" ({', '.join(raw['hours'])}); acknowledged readings {acknowledged:,};"
            f" WAL left: {left or 'none'}"
            f" -> {'ALL ACKNOWLEDGED READINGS DURABLE' if durable else 'MISMATCH'}",
            flush=True,
        )
        if args.profile:
            print_profile(tmp / "prof")
            return 0

        def med(mode: str, key: str) -> float:
            return statistics.median(x[key] for x in results[mode])

        print(
            f"\nmedians of {args.rounds} rounds ({args.seconds:g} s each; {args.conns} closed-loop"
            f" connections, {args.open_conns} open-loop; batches of {BATCH}):"
        )
        print(
            f"  closed  {med('closed', 'readings_s'):8,.0f} readings/s"
            f" ({med('closed', 'readings_s') / BATCH:,.0f} batches/s)"
            f"  p50 {med('closed', 'p50'):.2f} ms  p99 {med('closed', 'p99'):.2f} ms"
            f"  errors {med('closed', 'errors'):.0f}  client CPU {med('closed', 'client_cpu'):.1f} s"
            f"  server CPU {med('closed', 'server_cpu'):.1f} s"
            f" ({100 * med('closed', 'server_share'):.0f}% of a core)"
        )
        print(
            f"  open    offered {args.rate:,.0f}/s achieved {med('open', 'readings_s'):,.0f} readings/s"
            f"  p50 {med('open', 'p50'):.2f} ms  p99 {med('open', 'p99'):.2f} ms"
            f"  max {med('open', 'max'):.2f} ms"
            f"  errors {med('open', 'errors'):.0f}  client CPU {med('open', 'client_cpu'):.1f} s"
            f"  server CPU {med('open', 'server_cpu'):.1f} s"
            f" ({100 * med('open', 'server_share'):.0f}% of a core)"
        )
        print(f"  server peak RSS {hwm:.0f} MB")
        checks = [
            (
                med("closed", "readings_s") >= TARGET_RPS,
                f"closed loop {med('closed', 'readings_s'):,.0f} readings/s (target >= {TARGET_RPS:,.0f})",
            ),
            (
                med("open", "p99") < TARGET_P99_MS
                and med("open", "readings_s") >= 0.99 * args.rate
                and med("open", "errors") == 0,
                f"open loop at {args.rate:,.0f} readings/s: achieved {med('open', 'readings_s'):,.0f},"
                f" p99 {med('open', 'p99'):.1f} ms (target < {TARGET_P99_MS:g} ms, no errors)",
            ),
            (durable, "every acknowledged reading in the raw tier after shutdown"),
        ]
        for ok, text in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
        return 0
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
