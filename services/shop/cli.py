"""`dp shop-traffic`: create and seed the shop database if missing, then place live orders."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from services.shop.schema import SHOP_DATABASE


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "shop-traffic",
        help="live orders, cancellations and refunds on the shop database (created and seeded if missing)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="SQLAlchemy URL without database (default: the CDC mapping's cluster 'main', $CDC_MAIN_URL)",
    )
    p.add_argument("--database", default=SHOP_DATABASE)
    p.add_argument("--rate", type=float, default=5.0, help="orders per second")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    p.add_argument("--stores", type=int, default=50, help="stores to seed when the table is empty")
    p.add_argument("--products", type=int, default=500, help="products to seed when the table is empty")
    p.add_argument(
        "--refund-delay",
        type=_delay,
        default=None,
        metavar="SECONDS|LOW:HIGH",
        help="seconds from a sale to its refund, or a uniform range (default: log-normal, median 3 h)",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one)")
    p.add_argument("--progress", action="store_true", help="a progress line every few seconds")


def _delay(text: str) -> float | tuple[float, float]:
    try:
        if ":" in text:
            low, high = (float(part) for part in text.split(":", 1))
            if not 0 <= low <= high:
                raise ValueError
            return (low, high)
        value = float(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SECONDS or LOW:HIGH (non-negative, LOW <= HIGH)"
        ) from None


def _default_url() -> str:
    from assets.cdc.mapping import cluster_url, load_mapping

    mapping = load_mapping()
    if "main" not in mapping.clusters:
        raise SystemExit("dp shop-traffic: no cluster 'main' in the CDC mapping; give --url")
    return cluster_url(mapping.clusters["main"])


def run(args: argparse.Namespace) -> int:
    from services.shop.schema import ensure_shop_schema
    from services.shop.traffic import ShopStats, default_refund_delay, run_shop_traffic

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    url = args.url or _default_url()
    counts = ensure_shop_schema(url, args.database, stores=args.stores, products=args.products)
    print(f"{args.database}: {counts['stores']} stores, {counts['products']} products", flush=True)
    stop = threading.Event()
    result: dict[str, ShopStats] = {}
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            result["stats"] = run_shop_traffic(
                url,
                args.database,
                orders_per_second=args.rate,
                seconds=args.seconds,
                stop=stop,
                progress=args.progress,
                seed=args.seed,
                refund_delay=default_refund_delay if args.refund_delay is None else args.refund_delay,
            )
        except BaseException as exc:
            errors.append(exc)

    # The traffic runs in a thread so that Ctrl-C stops it between transactions.
    thread = threading.Thread(target=traffic, name="shop-traffic", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        thread.join(timeout=30)
    if errors:
        print(f"dp shop-traffic: {errors[0]}", file=sys.stderr)
        return 1
    if "stats" in result:
        print(result["stats"].summary(), flush=True)
    return 0
