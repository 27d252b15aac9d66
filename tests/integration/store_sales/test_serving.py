"""assets.store_sales.serving against the local Redis: publish, read, replace, atomicity, TTL."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest

from assets.store_sales import serving
from resources.cache import RedisCache

from .conftest import W0, make_row


def test_publish_then_read(cache: RedisCache) -> None:
    rows = [make_row(1, W0, "100.00"), make_row(2, W0, "250.50"), make_row(3, W0, "-20.00")]
    assert serving.publish_window(cache, W0, rows) == {"stores": 3, "removed": 0}

    latest = serving.read_latest(cache, 2)
    assert latest is not None
    assert latest["net_sales"] == Decimal("250.50")
    assert latest["window_start"] == W0
    assert latest["window_end"] == W0 + timedelta(minutes=30)
    assert latest["order_count"] == 4 and latest["product_count"] == 9
    assert serving.read_latest(cache, 99) is None
    assert serving.latest_window(cache) == W0

    top = serving.read_top(cache, W0, 2)
    assert top is not None
    assert [r["store_id"] for r in top] == [2, 1]
    assert serving.read_top(cache, W0 + timedelta(minutes=30), 5) is None  # not published

    assert [r["store_id"] for r in serving.read_range(cache, 1, W0, W0 + timedelta(hours=1)) or []] == [1]
    assert serving.read_range(cache, 1, W0 + timedelta(hours=1), W0 + timedelta(hours=2)) == []
    assert serving.read_range(cache, 99, W0, W0 + timedelta(hours=1)) is None


def test_canonical_json_money_and_times(cache: RedisCache) -> None:
    serving.publish_window(
        cache, W0, [make_row(7, W0, "12.345", avg_basket=0, computed_at="2024-05-01T10:31:05")]
    )
    text = serving.read_latest_json(cache, 7)
    assert text is not None
    assert '"net_sales":"12.35"' in text  # half-up to cents, a string
    assert '"avg_basket":"0.00"' in text
    assert '"window_start":"2024-05-01T10:00:00Z"' in text
    assert '"computed_at":"2024-05-01T10:31:05Z"' in text


def test_republish_replaces_the_window(cache: RedisCache) -> None:
    serving.publish_window(cache, W0, [make_row(s, W0, "10.00") for s in (1, 2, 3)])
    result = serving.publish_window(
        cache, W0, [make_row(1, W0, "11.00", version=1), make_row(3, W0, "5.00", version=1)]
    )

    assert result == {"stores": 2, "removed": 1}
    assert serving.read_latest(cache, 2) is None  # store 2 left the window
    assert serving.read_range(cache, 2, W0, W0 + timedelta(hours=1)) is None
    top = serving.read_top(cache, W0, 10) or []
    assert [(r["store_id"], r["net_sales"], r["late_changes"]) for r in top] == [
        (1, Decimal("11.00"), 1),
        (3, Decimal("5.00"), 1),
    ]


def test_late_republish_of_an_older_window_keeps_latest(cache: RedisCache) -> None:
    w1 = W0 + timedelta(minutes=30)
    serving.publish_window(cache, W0, [make_row(1, W0, "1.00")])
    serving.publish_window(cache, w1, [make_row(1, w1, "2.00")])
    serving.publish_window(cache, W0, [make_row(1, W0, "3.00", version=1)])

    assert serving.latest_window(cache) == w1
    latest = serving.read_latest(cache, 1)
    assert latest is not None and latest["net_sales"] == Decimal("2.00")
    rows = serving.read_range(cache, 1, W0, W0 + timedelta(hours=1)) or []
    assert [r["net_sales"] for r in rows] == [Decimal("3.00"), Decimal("2.00")]


def test_windows_trimmed_to_keep_hours(cache: RedisCache) -> None:
    old, new = W0, W0 + timedelta(hours=48)
    serving.publish_window(cache, old, [make_row(1, old)], keep_hours=48)
    serving.publish_window(cache, new, [make_row(1, new)], keep_hours=48)

    client = cache.client()
    assert client.zrange(serving.store_key(cache, 1), 0, -1) == [serving.window_token(new)]
    assert client.zrange(serving.prefix(cache) + "windows", 0, -1) == [serving.window_token(new)]
    assert serving.retention(cache) == (new - timedelta(hours=47, minutes=30), new)


def test_every_key_has_a_ttl(cache: RedisCache, redis_prefix: str) -> None:
    serving.publish_window(cache, W0, [make_row(s, W0) for s in (1, 2)], keep_hours=48)
    serving.publish_window(cache, W0 + timedelta(minutes=30), [], keep_hours=48)  # an empty window too

    keys = list(cache.client().scan_iter(match=redis_prefix + "*"))
    assert (
        len(keys) == 8
    )  # two windows (hash, ranking, meta; the empty one meta only), two stores, windows, latest
    for key in keys:
        assert 48 * 3600 < cache.client().ttl(key) <= 49 * 3600, key
    serving.publish_window(cache, W0, [make_row(1, W0)], ttl_seconds=120)
    assert 0 < cache.client().ttl(serving.window_key(cache, W0)) <= 120
    # An empty published window is a hit with no stores, not a miss.
    assert serving.read_top(cache, W0 + timedelta(minutes=30), 5) == []


def test_bad_input_writes_nothing(cache: RedisCache, redis_prefix: str) -> None:
    with pytest.raises(ValueError, match="not a window start"):
        serving.publish_window(cache, W0 + timedelta(minutes=15), [])
    with pytest.raises(ValueError, match="was given for window"):
        serving.publish_window(cache, W0, [make_row(1, W0 + timedelta(minutes=30))])
    with pytest.raises(ValueError, match="appears twice"):
        serving.publish_window(cache, W0, [make_row(1, W0), make_row(1, W0)])
    with pytest.raises(ValueError, match="missing"):
        serving.publish_window(cache, W0, [{"store_id": 1, "window_start": W0}])
    assert list(cache.client().scan_iter(match=redis_prefix + "*")) == []


def test_reader_never_sees_a_mixed_window(cache: RedisCache) -> None:
    """Publishes alternate between two store sets; each version marks its rows (late_changes)."""
    stores = {v % 2: set(range(1, 41)) if v % 2 == 0 else set(range(20, 61)) for v in range(2)}
    serving.publish_window(cache, W0, [make_row(s, W0, version=0) for s in stores[0]])
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        reader_cache = RedisCache(url=cache.url, key_prefix=cache.key_prefix)
        while not stop.is_set():
            rows = serving.read_top(reader_cache, W0, 100)
            assert rows is not None
            versions = {r["late_changes"] for r in rows}
            if len(versions) != 1:
                problems.append(f"mixed versions {sorted(versions)}")
                continue
            (version,) = versions
            if {r["store_id"] for r in rows} != stores[version % 2]:
                problems.append(f"version {version} with the wrong stores")
            for store in (1, 30, 60):  # one store only in version 0, one in both, one only in 1
                row = serving.read_latest(reader_cache, store)
                if row is not None and row["window_start"] != W0:
                    problems.append(f"store {store} latest from another window")
            reads[0] += 1
        reader_cache.client().close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 201):
            serving.publish_window(cache, W0, [make_row(s, W0, version=version) for s in stores[version % 2]])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not problems, problems[:5]
    assert reads[0] > 20
