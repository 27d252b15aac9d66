"""`dp telemetry-api`: the telemetry ingest API under uvicorn (env vars: see services.telemetry_api.app)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DEFAULT_PORT = 8700


def add_parser(sub: Any) -> None:
    p = sub.add_parser("telemetry-api", help="serve the fleet telemetry ingest API (FastAPI on uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    c = sub.add_parser(
        "telemetry-consumer",
        help="read every shard of the telemetry Kinesis stream into the raw tier (as the local sink)",
    )
    c.add_argument("--once", action="store_true", help="read every shard to its end once, flush, and exit")
    c.add_argument("--interval", type=float, default=1.0, help="seconds between polls of an idle stream")


def run(args: argparse.Namespace) -> int:
    from services.telemetry_api.app import TOKEN_ENV

    if not os.environ.get(TOKEN_ENV, "").strip():
        print(f"telemetry-api: set {TOKEN_ENV} to the bearer token devices send", file=sys.stderr)
        return 2
    if args.workers != 1:
        # One WAL directory has one writer: more workers would need a WAL each.
        print("telemetry-api: --workers must be 1 (one process owns the write-ahead log)", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(
        "services.telemetry_api.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        log_level="info",
    )
    return 0


def run_consumer(args: argparse.Namespace) -> int:
    import signal
    import threading

    from services.telemetry_api.sink import build_consumer

    consumer = build_consumer()
    if args.once:
        consumer.sink.start()
        try:
            taken = consumer.poll()
        finally:
            consumer.sink.close()
        print(f"telemetry-consumer: {taken} readings from {consumer.stream}")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    consumer.run(stop, interval=args.interval)
    return 0
