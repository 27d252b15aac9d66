"""The serving cache (ElastiCache Redis in production, the local Redis here).

Values are Redis hashes under one key prefix, so a deployment's keys can be
listed and dropped together; a hash and its TTL are written in one MULTI so
a reader never sees fresh fields that never expire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

from resources import settings

if TYPE_CHECKING:
    import redis


class RedisCache(dg.ConfigurableResource):
    """Redis hashes under `key_prefix`. `url` None means PLATFORM_REDIS_URL (or the local Redis)."""

    url: str | None = None
    key_prefix: str = "dp:"
    _client: Any = PrivateAttr(default=None)

    def client(self) -> redis.Redis:
        """The resource's client (decoded str replies), created on first use."""
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url or settings.redis_url(), decode_responses=True)
        return self._client

    def key(self, *parts: object) -> str:
        """The full key: the prefix, then the parts joined by ':'."""
        return self.key_prefix + ":".join(str(p) for p in parts)

    def put_hash(self, name: str, mapping: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Set the hash's fields (under the prefix) and, if given, its TTL, atomically."""
        if not mapping:
            raise ValueError(f"put_hash({name!r}) needs at least one field")
        if ttl_seconds is not None and ttl_seconds <= 0:
            # EXPIRE with 0 or less deletes the key at once: surely not what was meant.
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        fields: dict[str | bytes, Any] = {k: v for k, v in mapping.items()}  # the stubs want str | bytes keys
        pipe = self.client().pipeline(transaction=True)  # MULTI ... EXEC
        pipe.hset(self.key(name), mapping=fields)
        if ttl_seconds is not None:
            pipe.expire(self.key(name), ttl_seconds)
        pipe.execute()

    def get_hash(self, name: str) -> dict[str, str]:
        """The hash's fields, {} when the key does not exist (or expired)."""
        return self.client().hgetall(self.key(name))

    def delete(self, name: str) -> None:
        self.client().delete(self.key(name))
