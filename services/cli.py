"""`dp`: the platform's command line (local stack, generators, tools)."""

from __future__ import annotations

import argparse
import sys

from resources.settings import DEFAULT_MOTO_PORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dp", description="Data platform command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="start moto, Dagster (UI + daemon) and the demo feed")
    p_up.add_argument("--lake", choices=["dir", "s3"], default="dir", help="lake in var/lake or in moto S3")
    p_up.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    p_up.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT)
    p_up.add_argument("--demo-interval", type=float, default=30.0, help="seconds between demo files")

    sub.add_parser("down", help="stop the stack started by `dp up`")
    sub.add_parser("status", help="is the stack running?")

    p_feed = sub.add_parser("demo-feed", help="write demo files into the landing tier")
    p_feed.add_argument("--interval", type=float, default=30.0)
    p_feed.add_argument("--count", type=int, default=None, help="stop after this many files")

    args = parser.parse_args(argv)
    if args.command == "up":
        from services.stack import up

        return up(
            lake_in_s3=args.lake == "s3",
            ui_port=args.port,
            moto_port=args.moto_port,
            demo_interval=args.demo_interval,
        )
    if args.command == "down":
        from services.stack import down

        return down()
    if args.command == "status":
        from services.stack import running_pid

        pid = running_pid()
        print(f"running (pid {pid})" if pid else "not running")
        return 0 if pid else 1
    if args.command == "demo-feed":
        from resources.profiles import build_resources
        from services.demo_feed import run

        run(build_resources()["lake"], args.interval, args.count)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
