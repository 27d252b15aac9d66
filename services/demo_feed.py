"""Drop small Parquet files into the landing tier so the demo's sensors have data to load."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from resources.lake import LakePartition, LakeStorage, Tier


def demo_batch(now: datetime, rows: int, rng: random.Random):  # -> pa.Table
    import pyarrow as pa

    return pa.table(
        {
            "event_id": [f"{now:%Y%m%d%H%M%S}-{i:05d}" for i in range(rows)],
            "event_time": [now] * rows,
            "device": [f"device-{rng.randint(1, 50):03d}" for _ in range(rows)],
            "value": [round(rng.gauss(20.0, 5.0), 3) for _ in range(rows)],
        }
    )


def write_one(lake: LakeStorage, rows: int = 200, rng: random.Random | None = None) -> str:
    now = datetime.now(UTC)
    partition = LakePartition(now.date(), now.hour)
    table = demo_batch(now, rows, rng or random.Random())
    return lake.write_parquet(
        table, Tier.LANDING, "lake_ops", "demo_events", partition, f"part-{now:%Y%m%dT%H%M%S%f}.parquet"
    )


def run(lake: LakeStorage, interval_seconds: float, count: int | None = None) -> None:
    rng = random.Random()
    written = 0
    while count is None or written < count:
        key = write_one(lake, rng=rng)
        written += 1
        print(f"demo-feed: wrote {key}", flush=True)
        if count is None or written < count:
            time.sleep(interval_seconds)
