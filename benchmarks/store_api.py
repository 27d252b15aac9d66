"""The stores' read API under load: a closed loop for throughput, an open loop for latency.

    uv run python benchmarks/store_api.py [--rounds 3] [--seconds 15] [--rate 1000] [--client-procs 1]

1. Setup: the API reads Redis keys under the local profile's fixed prefix ("dp:"), so the run
   takes an empty Redis database of its own (the highest empty one of 15..1, claimed with a
   SETNX marker) and points the server at it with PLATFORM_REDIS_URL. A child process publishes
   48 h of 30-minute windows (96) for 200 stores with assets.store_sales.serving.publish_window
   (orders follow the hour of day, 0-70 a window; baskets around 25.00; a refund in ~1 of 15
   orders; a few late changes). The server is `python -m services.cli store-api --workers 2` on a
   free port (STORE_API_TOKEN set; PLATFORM_WAREHOUSE_PATH at a file that does not exist, so
   the warehouse is never opened and every answer must come from Redis); /health is waited for.
2. Load, from client processes of their own (plain asyncio on uvloop, raw HTTP/1.1 on
   keep-alive sockets, one request in flight a connection; httpx costs several times the CPU a
   request and would load the 2 shared cores more than the server does). The mix: a store's
   latest window 70%, a range of 4 windows 20%, a window's top 10 10%, stores and windows drawn
   at random from what was published. Anything but a 200 served from Redis is an error.

   closed  --conns (100) connections each send their next request as the answer arrives,
           for --seconds: requests/s, p50 / p99 of the round trip.
   open    requests at a fixed offered --rate, the k-th due at start + k/rate whatever the
           answers (a pool of connections takes them in order; a request waiting for a free
           connection keeps waiting on the clock), latency from that due time, so neither the
           client's queue nor a slow answer hides the server's latency: p50 / p99 / max,
           the achieved rate.

   --client-procs K splits the connections (and the open loop's rate, interleaved) over K
   client processes started together. Client and server share the machine's cores.
3. Rounds alternate closed, open, closed, ...; the medians of the rounds are printed. Beside
   each figure: the clients' CPU seconds (getrusage, the load phase only, summed over client
   processes) and the server's CPU seconds (utime + stime + cutime + cstime from /proc/<pid>/stat
   of the uvicorn supervisor and every descendant, before and after the phase), redis-server's
   (INFO cpu) and everything else's (the machine's busy time from /proc/stat less those three:
   the cores are shared with whatever else runs); at the end the
   server's peak RSS (VmHWM summed over its processes). Then PASS/FAIL against the targets:
   closed >= 3,000 req/s, open p99 < 10 ms at 1,000 req/s.

Teardown: the server's process group is stopped (SIGTERM, then SIGKILL), the run's keys and
its claim marker deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from proc_tree import descendants, free_port, machine_busy, tree_cpu, tree_memory_mb

ROOT = Path(__file__).resolve().parents[1]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STORES = 200
HOURS = 48
WINDOWS = HOURS * 2
TOKEN = "bench-store-api-" + uuid.uuid4().hex[:12]
CLAIM = "bench:store_api:claim"
KEY_PATTERN = "dp:store_sales:*"
TARGET_RPS = 3000.0
TARGET_P99_MS = 10.0
MIX = (("latest", 0.70), ("range", 0.20), ("top", 0.10))

# argv: redis url, newest window epoch. Publishes WINDOWS windows for STORES stores.
PUBLISH = textwrap.dedent(
    f"""
    import random, sys
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal
    from assets.store_sales.serving import publish_window
    from resources.cache import RedisCache

    cache = RedisCache(url=sys.argv[1])
    newest = datetime.fromtimestamp(int(sys.argv[2]), UTC)
    rng = random.Random(20261124)
    size = {{s: rng.uniform(0.4, 1.8) for s in range(1, {STORES} + 1)}}
    for w in range({WINDOWS} - 1, -1, -1):
        start = newest - timedelta(minutes=30 * w)
        hour = start.hour + start.minute / 60
        busy = max(0.0, 1.0 - abs(hour - 13.5) / 9.0)  # shops busiest early afternoon (UTC)
        rows = []
        for sid in range(1, {STORES} + 1):
            orders = int(rng.gauss(40 * busy * size[sid], 4) if busy else 0)
            orders = max(0, orders)
            gross = sum(Decimal(str(round(rng.lognormvariate(3.1, 0.5), 2))) for _ in range(orders))
            refunds = sum(1 for _ in range(orders) if rng.random() < 1 / 15)
            refund = sum(Decimal(str(round(rng.lognormvariate(2.8, 0.5), 2))) for _ in range(refunds))
            rows.append({{
                "store_id": sid, "window_start": start, "net_sales": gross - refund,
                "gross_sales": gross, "refund_amount": refund, "refund_count": refunds,
                "order_count": orders, "product_count": orders * rng.randint(1, 4),
                "avg_basket": (gross / orders) if orders else 0,
                "late_changes": rng.choice((0, 0, 0, 0, 1, 2)) if orders else 0,
                "computed_at": start + timedelta(minutes=31, seconds=rng.randint(0, 50)),
            }})
        publish_window(cache, start, rows, keep_hours={HOURS})
    print({WINDOWS} * {STORES})
"""
)


# --- the client (a child process: asyncio, uvloop, nothing of the platform) -----------------
def client_main(spec: dict) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    port, conns, mode, seconds = spec["port"], spec["conns"], spec["mode"], spec["seconds"]
    requests = [r.encode() for r in spec["requests"]]
    lat: list[float] = []
    errors: dict[str, int] = {}

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
            del self.buf[:end]
            status = head[9:12].decode()
            if status != "200":
                self._done(f"http {status}")
            elif b"x-served-from: redis" not in head:
                self._done("200 not from redis")
            else:
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
        # Start together with the other client processes (wall clock), then run on the monotonic one.
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = clock()
        deadline = t0 + seconds

        if mode == "closed":

            async def worker(c: Conn, n: int) -> None:
                step = len(requests)
                i = (n * 7919) % step
                while True:
                    s = clock()
                    if s >= deadline:
                        return
                    outcome = await c.send(requests[i])
                    lat.append(clock() - s)
                    note(outcome)
                    i = (i + 1) % step

            await asyncio.gather(*(worker(c, n) for n, c in enumerate(pool)))
        else:
            rate, procs, index = spec["rate"], spec["procs"], spec["index"]
            queue: asyncio.Queue = asyncio.Queue()
            total = int(seconds * rate)

            async def worker(c: Conn) -> None:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    due, raw = item
                    outcome = await c.send(raw)
                    lat.append(clock() - due)
                    note(outcome)

            tasks = [asyncio.create_task(worker(c)) for c in pool]
            k = index
            while k < total:
                due = t0 + k / rate
                now = clock()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = clock()
                while k < total and t0 + k / rate <= now:
                    queue.put_nowait((t0 + k / rate, requests[k % len(requests)]))
                    k += procs
            for _ in pool:
                queue.put_nowait(None)
            await asyncio.gather(*tasks)
        wall = clock() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        for c in pool:
            assert c.transport is not None
            c.transport.close()
        return {"lat": lat, "errors": errors, "wall": wall, "cpu": cpu}

    out = asyncio.run(main())
    Path(spec["out"]).write_text(json.dumps(out))


# --- the server's processes ----------------------------------------------------------------


def redis_cpu(r: object) -> float:
    """redis-server's CPU seconds (the whole instance, shared with anything else using it)."""
    info = r.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- setup -----------------------------------------------------------------------------------
def claim_db() -> tuple[object, int]:
    import redis

    for db in range(15, 0, -1):
        r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if r.dbsize() == 0 and r.set(CLAIM, TOKEN, nx=True, ex=3 * 3600):
            return r, db
    raise SystemExit("no empty Redis database among 1..15 to run in")


def drop_keys(r: object) -> int:
    n = 0
    batch = []
    for key in r.scan_iter(match=KEY_PATTERN, count=1000):  # type: ignore[attr-defined]
        batch.append(key)
        if len(batch) >= 500:
            n += r.delete(*batch)  # type: ignore[attr-defined]
            batch = []
    if batch:
        n += r.delete(*batch)  # type: ignore[attr-defined]
    if r.get(CLAIM) == TOKEN.encode():  # type: ignore[attr-defined]
        r.delete(CLAIM)  # type: ignore[attr-defined]
    return n


def wait_health(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before /health answered")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            conn.close()
            if resp.status == 200 and body["redis"]["ok"]:
                return body
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"/health did not answer ok within {timeout:g} s")


def request_mix(newest: int, n: int = 20_000) -> list[str]:
    from datetime import UTC, datetime

    rng = random.Random(7)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]

    def token(epoch: int) -> str:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        sid = rng.randint(1, STORES)
        if kind == "latest":
            path = f"/v1/stores/{sid}/windows/latest"
        elif kind == "range":
            lo = newest - 1800 * rng.randint(3, WINDOWS - 1)  # 4 published windows
            path = f"/v1/stores/{sid}/windows?start={token(lo)}&end={token(lo + 4 * 1800)}"
        else:
            path = f"/v1/windows/{token(newest - 1800 * rng.randint(0, WINDOWS - 1))}/top?n=10"
        out.append(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
    return out


def run_clients(
    mode: str, args: argparse.Namespace, port: int, reqs: list[str], server: int, tmp: Path, r: object
) -> dict:
    procs = args.client_procs
    start_at = time.time() + 1.5  # time for the children to import and connect
    children = []
    for index in range(procs):
        spec = {
            "port": port,
            "mode": mode,
            "seconds": args.seconds,
            "conns": (args.conns if mode == "closed" else args.open_conns) // procs,
            "rate": args.rate,
            "procs": procs,
            "index": index,
            "start_at": start_at,
            "requests": reqs[index::procs],
            "out": str(tmp / f"client-{mode}-{index}.json"),
        }
        child = subprocess.Popen([sys.executable, __file__, "--client"], cwd=ROOT, stdin=subprocess.PIPE)
        assert child.stdin is not None
        child.stdin.write(json.dumps(spec).encode())
        child.stdin.close()
        children.append(child)
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, rcpu0, m0 = tree_cpu(server), redis_cpu(r), machine_busy()
    for c in children:
        if c.wait() != 0:
            raise SystemExit(f"a client process exited with {c.returncode}")
    outs = [json.loads(Path(tmp / f"client-{mode}-{i}.json").read_text()) for i in range(procs)]
    cpu1, rcpu1, m1 = tree_cpu(server), redis_cpu(r), machine_busy()
    lat = sorted(x for o in outs for x in o["lat"])
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    wall = max(o["wall"] for o in outs)
    # The server's CPU includes the clients' ~0.1 s of connecting/closing on either side: negligible.
    return {
        "n": len(lat),
        "rps": len(lat) / wall,
        "p50": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "max": 1000 * lat[-1] if lat else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "client_cpu": sum(o["cpu"] for o in outs),
        "server_cpu": cpu1 - cpu0,
        "redis_cpu": rcpu1 - rcpu0,
        "machine_cpu": m1 - m0,
        "wall": wall,
    }


def others(r: dict) -> float:
    """Busy CPU seconds of the machine not spent by the server, the clients or redis-server."""
    return r["machine_cpu"] - r["server_cpu"] - r["client_cpu"] - r["redis_cpu"]


def show(mode: str, rnd: int, r: dict, rate: float) -> None:
    core = r["wall"]
    head = f"round {rnd} {mode:6}"
    if mode == "closed":
        fig = f"{r['rps']:8,.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms"
    else:
        fig = (
            f"offered {rate:,.0f}/s achieved {r['rps']:7,.0f}/s  p50 {r['p50']:6.2f} ms"
            f"  p99 {r['p99']:6.2f} ms  max {r['max']:7.2f} ms"
        )
    print(
        f"{head} {fig}  errors {r['errors']}"
        f"  client CPU {r['client_cpu']:5.1f} s ({100 * r['client_cpu'] / core:3.0f}% of a core)"
        f"  server CPU {r['server_cpu']:5.1f} s ({100 * r['server_cpu'] / core:3.0f}%)"
        f"  redis-server CPU {r['redis_cpu']:4.1f} s"
        f"  other processes {others(r):4.1f} s (machine busy {100 * r['machine_cpu'] / core:3.0f}%"
        f" of {100 * (os.cpu_count() or 1)}%)",
        flush=True,
    )
    if r["error_kinds"]:
        print(f"    errors by kind: {r['error_kinds']}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="the open loop's offered requests/s")
    ap.add_argument("--conns", type=int, default=100, help="the closed loop's concurrent clients")
    ap.add_argument("--open-conns", type=int, default=64, help="the open loop's connection pool")
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the spec on stdin
    args = ap.parse_args()
    if args.client:
        client_main(json.loads(sys.stdin.read()))
        return 0

    r, db = claim_db()
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    now = int(time.time())
    newest = now - now % 1800 - 1800  # the last closed window
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_api_"))
    server = None
    try:
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PUBLISH, url, str(newest)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        print(
            f"published {WINDOWS} windows x {STORES} stores ({out.stdout.strip()} rows) to Redis db {db}"
            f" in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        port = free_port()
        env = {
            **os.environ,
            "STORE_API_TOKEN": TOKEN,
            "PLATFORM_REDIS_URL": url,
            "PLATFORM_WAREHOUSE_PATH": str(tmp / "absent.duckdb"),
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "store-api",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "server.log", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        t = time.perf_counter()
        wait_health(port, server)
        print(
            f"server: store-api --workers {args.workers} on :{port},"
            f" healthy after {time.perf_counter() - t:.1f} s;"
            f" {len(descendants(server.pid))} processes; client processes {args.client_procs};"
            f" {os.cpu_count()} cores shared",
            flush=True,
        )
        reqs = request_mix(newest)
        # Warm-up: every worker's Redis client and scripts, the first imports of each route.
        run_clients(
            "closed", argparse.Namespace(**{**vars(args), "seconds": 2.0}), port, reqs, server.pid, tmp, r
        )

        results: dict[str, list[dict]] = {"closed": [], "open": []}
        for rnd in range(1, args.rounds + 1):
            for mode in ("closed", "open") if rnd % 2 else ("open", "closed"):
                res = run_clients(mode, args, port, reqs, server.pid, tmp, r)
                results[mode].append(res)
                show(mode, rnd, res, args.rate)
        hwm = tree_memory_mb(server.pid)

        def med(mode: str, key: str) -> float:
            return statistics.median(x[key] for x in results[mode])

        print(
            f"\nmedians of {args.rounds} rounds ({args.seconds:g} s each;"
            f" {args.conns} closed-loop connections,"
            f" {args.open_conns} open-loop; {args.client_procs} client process(es)):"
        )
        print(
            f"  closed  {med('closed', 'rps'):8,.0f} req/s  p50 {med('closed', 'p50'):.2f} ms"
            f"  p99 {med('closed', 'p99'):.2f} ms  errors {med('closed', 'errors'):.0f}"
            f"  client CPU {med('closed', 'client_cpu'):.1f} s"
            f"  server CPU {med('closed', 'server_cpu'):.1f} s"
            f"  redis-server CPU {med('closed', 'redis_cpu'):.1f} s"
        )
        print(
            f"  open    offered {args.rate:,.0f}/s achieved {med('open', 'rps'):,.0f}/s"
            f"  p50 {med('open', 'p50'):.2f} ms  p99 {med('open', 'p99'):.2f} ms"
            f"  max {med('open', 'max'):.2f} ms"
            f"  errors {med('open', 'errors'):.0f}"
            f"  client CPU {med('open', 'client_cpu'):.1f} s  server CPU {med('open', 'server_cpu'):.1f} s"
            f"  redis-server CPU {med('open', 'redis_cpu'):.1f} s"
        )
        per = statistics.median(1000 * x["server_cpu"] / x["n"] for x in results["closed"] + results["open"])
        whole = statistics.median(
            1000 * (x["server_cpu"] + x["client_cpu"] + x["redis_cpu"]) / x["n"]
            for x in results["closed"] + results["open"]
        )
        cores = os.cpu_count() or 1
        print(
            f"  server CPU {per:.3f} ms a request (server + client + redis-server {whole:.3f} ms):"
            f" {cores} cores to ourselves would carry ~{1000 * cores / whole:,.0f} req/s"
        )
        print(f"  server peak RSS {hwm:,.0f} MB (VmHWM summed over {len(descendants(server.pid))} processes)")
        total_errors = sum(x["errors"] for m in results.values() for x in m)
        rps, p99 = med("closed", "rps"), med("open", "p99")
        ok1 = rps >= TARGET_RPS and total_errors == 0
        ok2 = p99 < TARGET_P99_MS and total_errors == 0
        print(
            f"{'PASS' if ok1 else 'FAIL'}: closed loop {rps:,.0f} req/s"
            f" (target >= {TARGET_RPS:,.0f}), errors {total_errors}"
        )
        print(
            f"{'PASS' if ok2 else 'FAIL'}: open loop p99 {p99:.2f} ms at {args.rate:,.0f} req/s"
            f" (target < {TARGET_P99_MS:g} ms), errors {total_errors}"
        )
        return 0 if ok1 and ok2 else 1
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        dropped = drop_keys(r)
        print(f"teardown: server stopped, {dropped} keys deleted from Redis db {db}")


if __name__ == "__main__":
    sys.exit(main())
