"""`dp store-api`: the stores' read API under uvicorn (services.cli registers it with add_parser/run)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DEFAULT_PORT = 8600


def add_parser(sub: Any) -> None:
    p = sub.add_parser("store-api", help="serve the stores' 30-minute sales windows (FastAPI on uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")


def run(args: argparse.Namespace) -> int:
    from services.store_api.app import TOKEN_ENV

    if not os.environ.get(TOKEN_ENV, "").strip():
        print(f"store-api: set {TOKEN_ENV} to the bearer token stores send", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("store-api: --workers must be at least 1", file=sys.stderr)
        return 2
    import uvicorn

    # A factory by import string: each worker process builds its own app (and reads the settings).
    uvicorn.run(
        "services.store_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        log_level="info",
    )
    return 0
