"""`dp telemetry-sim`: simulated devices posting readings to the telemetry ingest API."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8700"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "telemetry-sim",
        help="simulated fleet devices posting readings to the telemetry API",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"the telemetry API (default {DEFAULT_URL})")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token (default: $TELEMETRY_API_TOKEN, else the local stack's 'local-dev-token')",
    )
    p.add_argument("--devices", type=_positive_int, default=50)
    p.add_argument("--rate", type=_positive_float, default=20.0, help="readings per second (all devices)")
    p.add_argument(
        "--seconds", type=_positive_float, default=None, help="stop after this long (default: never)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=100, help="readings a request, at most 500")
    p.add_argument("--linger", type=float, default=1.0, help="seconds a batch waits to fill before it leaves")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight at most")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    p.add_argument("--truth", default=None, metavar="PATH", help="write the ground truth (JSONL) here")
    p.add_argument("--late-share", type=_share, default=0.02)
    p.add_argument(
        "--late-delay",
        type=_range,
        default=None,
        metavar="LOW:HIGH",
        help="seconds a late reading is sent after its timestamp (default: log-uniform 120:7200)",
    )
    p.add_argument("--duplicate-share", type=_share, default=0.01)
    p.add_argument("--null-share", type=_share, default=0.01, help="readings with a null temperature")
    p.add_argument("--stuck-share", type=_share, default=0.01, help="readings repeating a stuck value")
    p.add_argument("--anomalies-per-hour", type=float, default=0.2, help="anomaly episodes per device-hour")
    p.add_argument("--progress", action="store_true", help="a progress line every few seconds")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return value


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(":", 1))
        if not 0 <= low <= high:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW:HIGH seconds (0 <= LOW <= HIGH)") from None
    return (low, high)


def run(args: argparse.Namespace) -> int:
    from services.telemetry_sim.driver import SimError, SimStats, run_telemetry_sim

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line a request
    token = args.token or os.environ.get("TELEMETRY_API_TOKEN") or "local-dev-token"
    fleet_options: dict[str, Any] = {
        "late_share": args.late_share,
        "duplicate_share": args.duplicate_share,
        "null_share": args.null_share,
        "stuck_share": args.stuck_share,
        "anomaly_per_hour": args.anomalies_per_hour,
    }
    if args.late_delay is not None:
        fleet_options["late_delay"] = args.late_delay
    stop = threading.Event()
    result: dict[str, SimStats] = {}
    errors: list[BaseException] = []

    with contextlib.ExitStack() as files:
        truth = files.enter_context(open(args.truth, "a", encoding="utf-8")) if args.truth else None

        def simulate() -> None:
            try:
                result["stats"] = run_telemetry_sim(
                    args.url,
                    token,
                    devices=args.devices,
                    rate=args.rate,
                    seconds=args.seconds,
                    stop=stop,
                    progress=args.progress,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    linger=args.linger,
                    concurrency=args.concurrency,
                    truth=truth,
                    fleet_options=fleet_options,
                )
            except BaseException as exc:
                errors.append(exc)

        # The run goes on in a thread so that Ctrl-C stops it and its held readings are still posted.
        thread = threading.Thread(target=simulate, name="telemetry-sim", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(timeout=0.5)
        except KeyboardInterrupt:
            stop.set()
            thread.join(timeout=180)
    if errors:
        error = errors[0]
        print(f"dp telemetry-sim: {error}", file=sys.stderr)
        return 2 if isinstance(error, (SimError, ValueError)) else 1
    if "stats" in result:
        stats = result["stats"]
        print(stats.summary(), flush=True)
        if stats.failed or stats.in_flight:
            return 1
    return 0
