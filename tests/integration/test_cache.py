"""RedisCache against the local Redis; every key lives under the test's own prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from resources.cache import RedisCache

LOCAL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client, to see what RedisCache really wrote."""
    client = redis.Redis.from_url(LOCAL, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def cache(redis_prefix: str) -> RedisCache:
    return RedisCache(url=LOCAL, key_prefix=redis_prefix)


def test_put_hash_with_ttl_round_trips(cache: RedisCache, raw: redis.Redis, redis_prefix: str) -> None:
    cache.put_hash("store:42", {"payment_sum": "1234.50", "orders": 17, "상점": "강남점"}, ttl_seconds=60)

    assert cache.get_hash("store:42") == {"payment_sum": "1234.50", "orders": "17", "상점": "강남점"}
    assert raw.exists(redis_prefix + "store:42") == 1
    assert raw.exists("store:42") == 0  # only the prefixed key was written
    assert 0 < raw.ttl(redis_prefix + "store:42") <= 60


def test_put_hash_updates_and_resets_ttl(cache: RedisCache, raw: redis.Redis, redis_prefix: str) -> None:
    cache.put_hash("h", {"a": "1", "b": "2"}, ttl_seconds=5)
    cache.put_hash("h", {"b": "3"}, ttl_seconds=600)

    assert cache.get_hash("h") == {"a": "1", "b": "3"}
    assert 5 < raw.ttl(redis_prefix + "h") <= 600


def test_put_hash_without_ttl_does_not_expire(cache: RedisCache, raw: redis.Redis, redis_prefix: str) -> None:
    cache.put_hash("forever", {"x": "1"})
    assert raw.ttl(redis_prefix + "forever") == -1  # exists, no expiry


def test_invalid_put_writes_nothing(cache: RedisCache, raw: redis.Redis, redis_prefix: str) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        cache.put_hash("bad", {"x": "1"}, ttl_seconds=0)
    with pytest.raises(ValueError, match="at least one field"):
        cache.put_hash("bad", {})
    assert raw.exists(redis_prefix + "bad") == 0


def test_delete_and_missing(cache: RedisCache, raw: redis.Redis, redis_prefix: str) -> None:
    cache.put_hash("gone", {"x": "1"}, ttl_seconds=60)
    cache.delete("gone")

    assert raw.exists(redis_prefix + "gone") == 0
    assert cache.get_hash("gone") == {}
    cache.delete("gone")  # deleting what is not there is fine


def test_key_and_client(cache: RedisCache, redis_prefix: str) -> None:
    assert cache.key("sales", "store", 42) == f"{redis_prefix}sales:store:42"
    assert cache.client() is cache.client()
    assert RedisCache().key("x") == "dp:x"


def test_url_from_environment_at_use_time(monkeypatch: pytest.MonkeyPatch, redis_prefix: str) -> None:
    cache = RedisCache(key_prefix=redis_prefix)  # no url: PLATFORM_REDIS_URL, read when first used
    monkeypatch.setenv("PLATFORM_REDIS_URL", "redis://127.0.0.1:6379/1")
    db1 = redis.Redis.from_url("redis://127.0.0.1:6379/1")
    db0 = redis.Redis.from_url(LOCAL)
    try:
        cache.put_hash("where", {"db": "1"}, ttl_seconds=60)
        assert db1.exists(redis_prefix + "where") == 1
        assert db0.exists(redis_prefix + "where") == 0
    finally:
        db1.delete(redis_prefix + "where")
        db1.close()
        db0.close()


def test_url_default_is_local(monkeypatch: pytest.MonkeyPatch, raw: redis.Redis, redis_prefix: str) -> None:
    monkeypatch.delenv("PLATFORM_REDIS_URL", raising=False)
    RedisCache(key_prefix=redis_prefix).put_hash("local", {"x": "1"}, ttl_seconds=60)
    assert raw.hgetall(redis_prefix + "local") == {"x": "1"}
