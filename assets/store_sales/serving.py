"""The store-sales serving layer in Redis: one 30-minute window for every store, written atomically.

Key layout (P = the cache's key_prefix + "store_sales:"; W = a window start as
"YYYY-MM-DDTHH:MM:00Z", always UTC, minute 00 or 30; S = a store id):

    P win:W          hash     S -> the store's row as canonical JSON (encode_row)
    P win:W:top      zset     S scored by net_sales (top-N of a window)
    P win:W:meta     hash     computed_at, published_at, stores: the window was published (maybe empty)
    P store:S        zset     W scored by its epoch seconds: the store's windows, trimmed to keep_hours
    P windows        zset     W scored by epoch seconds: every published window, trimmed to keep_hours
    P latest         string   W of the newest published window, set last

publish_window replaces a window wholly in one MULTI/EXEC under WATCH (the
window's hash and the latest pointer): the old hash and ranking are deleted
and written again, a store that left the window is removed from its
`store:S` set, and every key gets a TTL (keep_hours plus a margin). Readers
go through Lua scripts, which Redis runs atomically, so a read never mixes
two versions of a window. The scripts name keys they build from the prefix
(not passed as KEYS): fine on a single Redis or ElastiCache with cluster mode
disabled, which is what this layer targets.

Money is kept as strings with two decimals ("1234.50") so no float rounding
happens between the warehouse and the store's screen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resources.cache import RedisCache

WINDOW = timedelta(minutes=30)
NAMESPACE = "store_sales:"
DEFAULT_KEEP_HOURS = 48
TTL_MARGIN_SECONDS = 3600

MONEY_FIELDS = ("net_sales", "gross_sales", "refund_amount", "avg_basket")
COUNT_FIELDS = ("refund_count", "order_count", "product_count", "late_changes")
FIELDS = (
    "store_id",
    "window_start",
    "window_end",
    "net_sales",
    "gross_sales",
    "refund_amount",
    "refund_count",
    "order_count",
    "product_count",
    "avg_basket",
    "late_changes",
    "computed_at",
)
_CENT = Decimal("0.01")


# --- values ---------------------------------------------------------------------
def to_utc(value: Any) -> datetime:
    """A datetime (naive means UTC), a pandas Timestamp or an ISO string, as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif not isinstance(value, datetime) and hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, not {type(value).__name__}: {value!r}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def window_start_of(value: Any) -> datetime:
    """The value as a window start (UTC); ValueError unless it falls on minute 00 or 30 exactly."""
    start = to_utc(value)
    if start.minute not in (0, 30) or start.second or start.microsecond:
        raise ValueError(f"{start.isoformat()} is not a window start (windows start at minute 00 or 30, UTC)")
    return start


def window_token(start: datetime) -> str:
    """The window's name in keys and JSON: 2024-05-01T10:30:00Z."""
    return to_utc(start).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(value: Any) -> str:
    """A UTC ISO timestamp ending in Z (microseconds only when there are any)."""
    return to_utc(value).isoformat().replace("+00:00", "Z")


def money(value: Any) -> str:
    """A money amount as a string with two decimals ("-3.50"); half-up rounding, no "-0.00"."""
    try:
        amount = Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:
        raise ValueError(f"not a money amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a money amount: {value!r}")
    if amount == 0:
        amount = Decimal("0.00")
    return f"{amount:.2f}"


def encode_row(row: Mapping[str, Any]) -> str:
    """A window row as canonical JSON (the API's response body for one window, byte for byte).

    Money becomes strings with two decimals, times UTC ISO strings with Z, counts
    ints; window_end defaults to window_start + 30 minutes. Unknown fields are dropped.
    """
    missing = [f for f in FIELDS if f != "window_end" and row.get(f) is None]
    if missing:
        raise ValueError(f"window row is missing {missing}: {dict(row)!r}")
    start = window_start_of(row["window_start"])
    end = to_utc(row["window_end"]) if row.get("window_end") is not None else start + WINDOW
    if end != start + WINDOW:
        raise ValueError(f"window_end {end.isoformat()} is not window_start + 30 minutes")
    out: dict[str, Any] = {
        "store_id": int(row["store_id"]),
        "window_start": window_token(start),
        "window_end": window_token(end),
    }
    for name in FIELDS[3:]:
        if name in MONEY_FIELDS:
            out[name] = money(row[name])
        elif name in COUNT_FIELDS:
            out[name] = int(row[name])
        else:  # computed_at
            out[name] = format_time(row[name])
    return json.dumps({f: out[f] for f in FIELDS}, separators=(",", ":"))


def decode_row(text: str | bytes) -> dict[str, Any]:
    """Canonical JSON back to a row: Decimal money, aware UTC datetimes, int counts."""
    raw = json.loads(text)
    row: dict[str, Any] = {}
    for name in FIELDS:
        value = raw[name]
        if name in MONEY_FIELDS:
            row[name] = Decimal(value)
        elif name in ("window_start", "window_end", "computed_at"):
            row[name] = to_utc(value)
        else:
            row[name] = int(value)
    return row


# --- keys -----------------------------------------------------------------------
def prefix(cache: RedisCache) -> str:
    """Every key of this layer starts with this."""
    return cache.key_prefix + NAMESPACE


def window_key(cache: RedisCache, start: datetime) -> str:
    return f"{prefix(cache)}win:{window_token(start)}"


def store_key(cache: RedisCache, store_id: int) -> str:
    return f"{prefix(cache)}store:{int(store_id)}"


def latest_key(cache: RedisCache) -> str:
    return f"{prefix(cache)}latest"


# --- Lua readers (atomic: a read never sees half of a publish) ------------------
# ARGV: prefix, store id. The row of the store's newest window whose hash still exists.
LATEST_LUA = """
local p, sid = ARGV[1], ARGV[2]
local members = redis.call('ZREVRANGE', p .. 'store:' .. sid, 0, -1)
for _, w in ipairs(members) do
  local row = redis.call('HGET', p .. 'win:' .. w, sid)
  if row then return row end
end
return false
"""

# ARGV: prefix, store id, start epoch (inclusive), end epoch (exclusive).
# Returns {known, row...}: known is 1 when Redis holds any window of the store.
RANGE_LUA = """
local p, sid = ARGV[1], ARGV[2]
local zkey = p .. 'store:' .. sid
local out = {redis.call('EXISTS', zkey)}
local members = redis.call('ZRANGEBYSCORE', zkey, ARGV[3], '(' .. ARGV[4])
for _, w in ipairs(members) do
  local row = redis.call('HGET', p .. 'win:' .. w, sid)
  if row then out[#out + 1] = row end
end
return out
"""

# ARGV: prefix, window token, n. False when the window was not published; else its top-n rows.
TOP_LUA = """
local p, w = ARGV[1], ARGV[2]
local wkey = p .. 'win:' .. w
if redis.call('EXISTS', wkey .. ':meta') == 0 then return false end
local ids = redis.call('ZREVRANGE', wkey .. ':top', 0, tonumber(ARGV[3]) - 1)
if #ids == 0 then return {} end
local rows = redis.call('HMGET', wkey, unpack(ids))
local out = {}
for _, row in ipairs(rows) do
  if row then out[#out + 1] = row end
end
return out
"""

# ARGV: prefix. The latest window and the retention (keep_hours) it was published with.
LATEST_WINDOW_LUA = """
local w = redis.call('GET', ARGV[1] .. 'latest')
if not w then return false end
return {w, redis.call('HGET', ARGV[1] .. 'win:' .. w .. ':meta', 'keep_hours')}
"""


def _script(cache: RedisCache, source: str) -> Any:
    return cache.client().register_script(source)


# --- publishing ------------------------------------------------------------------
def publish_window(
    cache: RedisCache,
    window_start: Any,
    rows: Iterable[Mapping[str, Any]],
    keep_hours: int = DEFAULT_KEEP_HOURS,
    ttl_seconds: int | None = None,
) -> dict[str, int]:
    """Write one window for all stores, replacing any earlier version of it, atomically.

    `rows` are window rows (see encode_row), all of this window, one per store.
    Stores missing from `rows` that the earlier version had are removed from the
    window. TTL: `ttl_seconds`, by default keep_hours plus an hour. Returns counts
    ("stores", "removed").
    """
    start = window_start_of(window_start)
    if keep_hours <= 0:
        raise ValueError(f"keep_hours must be positive, not {keep_hours}")
    ttl = ttl_seconds if ttl_seconds is not None else keep_hours * 3600 + TTL_MARGIN_SECONDS
    if ttl <= 0:
        raise ValueError(f"ttl_seconds must be positive, not {ttl}")

    token = window_token(start)
    epoch = int(start.timestamp())
    encoded: dict[str, str] = {}
    scores: dict[str, float] = {}
    computed: list[str] = []
    for row in rows:
        text = encode_row(row)
        parsed = json.loads(text)
        if parsed["window_start"] != token:
            raise ValueError(f"a row of window {parsed['window_start']} was given for window {token}")
        sid = str(parsed["store_id"])
        if sid in encoded:
            raise ValueError(f"store {sid} appears twice in window {token}")
        encoded[sid] = text
        scores[sid] = float(parsed["net_sales"])
        computed.append(parsed["computed_at"])

    p = prefix(cache)
    wkey, top_key, meta_key = f"{p}win:{token}", f"{p}win:{token}:top", f"{p}win:{token}:meta"
    windows_key, latest = f"{p}windows", latest_key(cache)
    cutoff = epoch - keep_hours * 3600  # windows starting at or before this are out of retention
    meta = {
        "computed_at": max(computed) if computed else format_time(datetime.now(UTC)),
        "published_at": format_time(datetime.now(UTC)),
        "stores": str(len(encoded)),
        "keep_hours": str(keep_hours),
    }
    counts = {"stores": len(encoded), "removed": 0}

    def write(pipe: Any) -> None:
        # Under WATCH: the earlier version's stores and the current latest window.
        previous = set(pipe.hkeys(wkey))
        current_latest = pipe.get(latest)
        removed = previous - encoded.keys()
        counts["removed"] = len(removed)
        pipe.multi()
        pipe.delete(wkey, top_key, meta_key)
        if encoded:
            fields: dict[str | bytes, Any] = dict(encoded.items())
            pipe.hset(wkey, mapping=fields)
            pipe.expire(wkey, ttl)
            pipe.zadd(top_key, scores)
            pipe.expire(top_key, ttl)
        pipe.hset(meta_key, mapping=dict(meta.items()))
        pipe.expire(meta_key, ttl)
        for sid in removed:
            pipe.zrem(f"{p}store:{sid}", token)
        for sid in encoded:
            skey = f"{p}store:{sid}"
            pipe.zadd(skey, {token: epoch})
            pipe.zremrangebyscore(skey, "-inf", cutoff)
            pipe.expire(skey, ttl)
        pipe.zadd(windows_key, {token: epoch})
        pipe.zremrangebyscore(windows_key, "-inf", cutoff)
        pipe.expire(windows_key, ttl)
        # The pointer last; tokens sort like their times, so a late re-publish of an older
        # window leaves it where it is.
        if current_latest is None or token >= current_latest:
            pipe.set(latest, token, ex=ttl)

    cache.client().transaction(write, wkey, latest)
    return counts


# --- reading -----------------------------------------------------------------------
def read_latest_json(cache: RedisCache, store_id: int) -> str | None:
    """The store's newest window row as canonical JSON, None when Redis has none."""
    result = _script(cache, LATEST_LUA)(args=[prefix(cache), int(store_id)])
    return _text(result) if result else None


def read_range_json(cache: RedisCache, store_id: int, start: Any, end: Any) -> tuple[bool, list[str]]:
    """(whether Redis knows the store, its rows with start <= window_start < end, oldest first)."""
    lo, hi = int(to_utc(start).timestamp()), int(to_utc(end).timestamp())
    result = _script(cache, RANGE_LUA)(args=[prefix(cache), int(store_id), lo, hi])
    return bool(result[0]), [_text(r) for r in result[1:]]


def read_top_json(cache: RedisCache, window_start: Any, n: int) -> list[str] | None:
    """The window's n stores with the highest net_sales (highest first), None if not published."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    token = window_token(window_start_of(window_start))
    result = _script(cache, TOP_LUA)(args=[prefix(cache), token, int(n)])
    if result is None or result is False:
        return None
    return [_text(r) for r in result]


def read_latest(cache: RedisCache, store_id: int) -> dict[str, Any] | None:
    """The store's newest window row (Decimal money, UTC datetimes), None on a miss."""
    text = read_latest_json(cache, store_id)
    return decode_row(text) if text is not None else None


def read_range(cache: RedisCache, store_id: int, start: Any, end: Any) -> list[dict[str, Any]] | None:
    """The store's rows with start <= window_start < end, oldest first; None if Redis has no windows of
    the store at all."""
    known, rows = read_range_json(cache, store_id, start, end)
    if not known:
        return None
    return [decode_row(r) for r in rows]


def read_top(cache: RedisCache, window_start: Any, n: int = 10) -> list[dict[str, Any]] | None:
    """The window's top-n stores by net_sales, highest first; None when the window is not in Redis."""
    rows = read_top_json(cache, window_start, n)
    return [decode_row(r) for r in rows] if rows is not None else None


def latest_window(cache: RedisCache) -> datetime | None:
    """The start of the newest window published (and not expired), or None."""
    result = _script(cache, LATEST_WINDOW_LUA)(args=[prefix(cache)])
    return to_utc(_text(result[0])) if result else None


def retention(cache: RedisCache) -> tuple[datetime, datetime] | None:
    """(oldest, newest) window start Redis is meant to hold, from the latest window's keep_hours."""
    result = _script(cache, LATEST_WINDOW_LUA)(args=[prefix(cache)])
    if not result:
        return None
    newest = to_utc(_text(result[0]))
    keep = int(_text(result[1])) if len(result) > 1 and result[1] else DEFAULT_KEEP_HOURS
    return newest - timedelta(hours=keep) + WINDOW, newest


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
