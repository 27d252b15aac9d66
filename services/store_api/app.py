"""The stores' read API: 30-minute sales windows from Redis, the warehouse when Redis misses.

    GET /v1/stores/{store_id}/windows/latest          the store's newest window
    GET /v1/stores/{store_id}/windows?start=&end=     its windows with start <= window_start < end
    GET /v1/windows/{window_start}/top?n=10           a window's n stores with the highest net sales
    GET /health                                       Redis and warehouse reachability (no auth)

Every /v1 route needs `Authorization: Bearer <STORE_API_TOKEN>`. Responses carry
`X-Served-From: redis|warehouse`. Money is a string with two decimals ("1234.50"),
times are UTC ISO strings ending in Z. Every error is
`{"error": {"code": ..., "message": ..., "parameter": ...}}`.

The Redis path sends the canonical JSON rows that assets.store_sales.serving stored
as they are (no parsing), one Lua script call a request. The warehouse path opens
the DuckDB file per request, read-only, so this process never holds the file
between requests; a writer's lock is waited for up to `warehouse_timeout` seconds,
then the answer is 503 with the reason.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from assets.store_sales import serving
from services.http_errors import ApiError, ErrorResponse, install_error_handlers

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.cache import RedisCache
    from resources.warehouse.base import Warehouse

log = logging.getLogger(__name__)

TOKEN_ENV = "STORE_API_TOKEN"
TABLE = "store_sales.store_sales_30min"
MAX_RANGE = timedelta(days=7)
MAX_STORE_ID = 2**31 - 1
COLUMNS = ", ".join(serving.FIELDS)
JSON = "application/json"


# --- models (the OpenAPI schema; the Redis path sends stored JSON of the same shape) ---------
Money = Annotated[
    str, Field(pattern=r"^-?[0-9]+\.[0-9]{2}$", examples=["1234.50"], description="two decimals")
]


class Window(BaseModel):
    """One store's sales in one 30-minute window (UTC)."""

    store_id: int
    window_start: datetime = Field(description="UTC, minute 00 or 30")
    window_end: datetime = Field(description="window_start + 30 minutes")
    net_sales: Money = Field(description="payments minus refunds")
    gross_sales: Money
    refund_amount: Money
    refund_count: int
    order_count: int
    product_count: int = Field(description="items sold")
    avg_basket: Money = Field(description="gross_sales / order_count, 0.00 without orders")
    late_changes: int
    computed_at: datetime


class WindowRange(BaseModel):
    store_id: int
    start: datetime
    end: datetime
    windows: list[Window] = Field(description="oldest first")


class TopWindow(BaseModel):
    window_start: datetime
    window_end: datetime
    n: int
    stores: list[Window] = Field(description="highest net_sales first")


class Dependency(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    redis: Dependency
    warehouse: Dependency


SERVED_FROM = {
    "X-Served-From": {"description": "redis or warehouse", "schema": {"type": "string"}},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "missing or wrong bearer token",
        404: "no such store or window",
        422: "a parameter is invalid (named in error.parameter)",
        503: "the warehouse is busy or unreachable",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


# --- errors ---------------------------------------------------------------------
class WarehouseBusy(Exception):
    """The warehouse could not be read in time (a writer holds DuckDB's lock) or at all."""


# --- the warehouse, read-only and per request -------------------------------------------
class WarehouseReader:
    """Queries the window table; DuckDB is opened read-only for each query and closed after."""

    def __init__(self, warehouse: Warehouse | None, timeout: float):
        self.warehouse = warehouse
        self.timeout = timeout

    def describe(self) -> str:
        from resources.warehouse.duckdb import DuckDBWarehouse

        if isinstance(self.warehouse, DuckDBWarehouse):
            return f"duckdb {self.warehouse.database_path()}"
        return type(self.warehouse).__name__

    def query(self, sql: str) -> list[dict[str, Any]] | None:
        """The rows, or None when the table (or the database file) does not exist."""
        from resources.warehouse.duckdb import DuckDBWarehouse

        if self.warehouse is None:
            raise WarehouseBusy("no warehouse is configured")
        if isinstance(self.warehouse, DuckDBWarehouse):
            table = self._duckdb(self.warehouse, sql)
        else:
            try:
                if not self.warehouse.table_exists(TABLE):
                    return None
                table = self.warehouse.query(sql)
            except Exception as exc:
                raise WarehouseBusy(f"the warehouse failed: {type(exc).__name__}") from exc
        return table.to_pylist() if table is not None else None

    def _duckdb(self, warehouse: Any, sql: str) -> pa.Table | None:
        import duckdb

        from resources.warehouse.duckdb import _CONNECT_LOCK

        path = warehouse.database_path()
        if not path.exists():
            return None  # a reader never creates the database file
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                with _CONNECT_LOCK:
                    con = duckdb.connect(str(path), read_only=True)
                break
            except duckdb.Error as exc:
                text = str(exc).lower()
                if "lock" not in text and "file handle conflict" not in text:
                    raise WarehouseBusy(f"the warehouse could not be opened: {type(exc).__name__}") from exc
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(
                        f"the warehouse is locked by a writer (waited {self.timeout:g} s); retry shortly"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        try:
            con.execute("SET TimeZone = 'UTC'")
            try:
                return con.sql(sql).to_arrow_table()
            except duckdb.CatalogException:
                return None  # the table is not there (yet)
        finally:
            con.close()

    def ping(self) -> Dependency:
        if self.warehouse is None:
            return Dependency(ok=False, detail="no warehouse configured")
        try:
            rows = self.query(f"SELECT count(*) AS n FROM {TABLE} WHERE false")
        except WarehouseBusy as exc:
            return Dependency(ok=False, detail=str(exc))
        if rows is None:
            return Dependency(ok=True, detail=f"{self.describe()}: {TABLE} (or the database) not created yet")
        return Dependency(ok=True, detail=f"{self.describe()}: {TABLE} readable")


# --- Redis, asyncio ---------------------------------------------------------------
class RedisReader:
    """redis.asyncio with the serving layer's Lua scripts; one client per event loop."""

    def __init__(self, url: str, key_prefix: str):
        self.url = url
        self.prefix = key_prefix + serving.NAMESPACE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, Any] = {}
        self._client: Any = None
        self._lock = threading.Lock()

    def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        import redis.asyncio as aredis

        with self._lock:
            client = aredis.Redis.from_url(
                self.url, decode_responses=False, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            self._scripts = {
                "latest": client.register_script(serving.LATEST_LUA),
                "range": client.register_script(serving.RANGE_LUA),
                "top": client.register_script(serving.TOP_LUA),
                "window": client.register_script(serving.LATEST_WINDOW_LUA),
            }
            self._client, self._loop = client, loop

    async def call(self, script: str, *args: Any) -> Any:
        """The script's result; None when Redis is unreachable (a miss: the warehouse answers)."""
        self._setup()
        try:
            return await self._scripts[script](args=[self.prefix, *args])
        except Exception as exc:  # ConnectionError, TimeoutError, a script error
            log.warning("store-api: Redis read failed (%s: %s); using the warehouse", type(exc).__name__, exc)
            return None

    async def ping(self) -> Dependency:
        self._setup()
        try:
            await self._client.ping()
        except Exception as exc:
            return Dependency(ok=False, detail=f"{type(exc).__name__}: {exc}")
        return Dependency(ok=True, detail="ping ok")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._loop = None, None


# --- parameters --------------------------------------------------------------------
# In the OpenAPI schema; authorize reads the header itself to say what exactly was wrong.
BEARER = HTTPBearer(auto_error=False, description=f"the token in {TOKEN_ENV}")
StoreId = Annotated[int, PathParam(ge=1, le=MAX_STORE_ID, description="the store's id")]


def _window_param(value: datetime, name: str) -> datetime:
    try:
        return serving.window_start_of(value)
    except OverflowError as exc:  # 0001-01-01T00:00:00+04:00 has no UTC time
        message = f"{name}: {value.isoformat()} is outside the dates a window can have"
        raise ApiError(422, "invalid_parameter", message, parameter=name) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", f"{name}: {exc}", parameter=name) from exc


def _sql_time(value: datetime) -> str:
    return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S')}'"


def _encode(rows: list[dict[str, Any]]) -> list[str]:
    return [serving.encode_row(r) for r in rows]


def _body(head: str, rows: list[str], key: str) -> bytes:
    return f'{{{head},"{key}":[{",".join(rows)}]}}'.encode()


# --- the app ------------------------------------------------------------------------
def create_app(
    cache: RedisCache | None = None,
    warehouse: Warehouse | None = None,
    token: str | None = None,
    warehouse_timeout: float = 3.0,
) -> FastAPI:
    """The API. Unset arguments are read now: STORE_API_TOKEN, the local Redis (settings.redis_url()),
    the profile's warehouse (resources.profiles; DuckDB at settings.warehouse_path() locally)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    if not token:
        raise RuntimeError(f"{TOKEN_ENV} is not set: the store API refuses to run without a token")
    if cache is None or warehouse is None:
        from resources.profiles import build_resources

        resources = build_resources()
        cache = cache if cache is not None else resources["cache"]
        warehouse = warehouse if warehouse is not None else resources["warehouse"]
    assert cache is not None
    from resources import settings

    redis_reader = RedisReader(cache.url or settings.redis_url(), cache.key_prefix)
    wh = WarehouseReader(warehouse, warehouse_timeout)
    expected = token.encode()

    async def authorize(
        request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        header = request.headers.get("authorization")
        challenge = 'Bearer realm="store-api"'
        if not header:
            raise ApiError(
                401,
                "missing_token",
                "send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": challenge},
            )
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(
                401,
                "invalid_authorization",
                "the Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": challenge + ', error="invalid_request"'},
            )
        if not hmac.compare_digest(value.strip().encode(), expected):
            raise ApiError(
                401,
                "invalid_token",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": challenge + ', error="invalid_token"'},
            )

    async def from_warehouse(sql: str) -> list[dict[str, Any]] | None:
        try:
            return await run_in_threadpool(wh.query, sql)
        except WarehouseBusy as exc:
            raise ApiError(503, "warehouse_unavailable", str(exc), headers={"Retry-After": "2"}) from exc

    async def store_known(store_id: int) -> bool:
        rows = await from_warehouse(f"SELECT store_id FROM {TABLE} WHERE store_id = {store_id} LIMIT 1")
        return bool(rows)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis_reader.close()

    app = FastAPI(
        title="Store sales API",
        version="1.0.0",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.redis = redis_reader
    app.state.warehouse = wh

    install_error_handlers(app, log=log, log_message="store-api: unexpected error")

    v1 = APIRouter(prefix="/v1", dependencies=[Security(authorize)])

    @v1.get(
        "/stores/{store_id}/windows/latest",
        response_model=Window,
        responses={200: {"headers": SERVED_FROM}, **_errors(401, 404, 422, 503)},
        summary="The store's newest 30-minute window",
    )
    async def latest(store_id: StoreId) -> Response:
        text = await redis_reader.call("latest", store_id)
        if text:
            return Response(text, media_type=JSON, headers={"X-Served-From": "redis"})
        rows = await from_warehouse(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE store_id = {store_id} ORDER BY window_start DESC LIMIT 1"
        )
        if not rows:
            raise ApiError(404, "store_not_found", f"store {store_id} has no sales windows", "store_id")
        return Response(serving.encode_row(rows[0]), media_type=JSON, headers={"X-Served-From": "warehouse"})

    @v1.get(
        "/stores/{store_id}/windows",
        response_model=WindowRange,
        responses={200: {"headers": SERVED_FROM}, **_errors(401, 404, 422, 503)},
        summary="The store's windows with start <= window_start < end (at most 7 days)",
    )
    async def window_range(
        store_id: StoreId,
        start: Annotated[datetime, Query(description="UTC unless an offset is given; minute 00 or 30")],
        end: Annotated[datetime, Query(description="exclusive; after start, at most 7 days later")],
    ) -> Response:
        lo, hi = _window_param(start, "start"), _window_param(end, "end")
        if hi <= lo:
            raise ApiError(422, "invalid_parameter", "end: must be after start", "end")
        if hi - lo > MAX_RANGE:
            raise ApiError(422, "invalid_parameter", "end: the range may span at most 7 days", "end")
        head = (
            f'"store_id":{store_id},"start":"{serving.window_token(lo)}","end":"{serving.window_token(hi)}"'
        )
        kept = await redis_reader.call("window")
        if kept:
            newest = serving.to_utc(kept[0].decode())
            keep = int(kept[1]) if len(kept) > 1 and kept[1] else serving.DEFAULT_KEEP_HOURS
            if lo >= newest - timedelta(hours=keep) + serving.WINDOW:  # inside what Redis keeps
                result = await redis_reader.call("range", store_id, int(lo.timestamp()), int(hi.timestamp()))
                if result and result[0]:
                    rows = [r.decode() for r in result[1:]]
                    return Response(
                        _body(head, rows, "windows"), media_type=JSON, headers={"X-Served-From": "redis"}
                    )
        found = await from_warehouse(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE store_id = {store_id}"
            f" AND window_start >= {_sql_time(lo)} AND window_start < {_sql_time(hi)} ORDER BY window_start"
        )
        if not found and not await store_known(store_id):
            raise ApiError(404, "store_not_found", f"store {store_id} has no sales windows", "store_id")
        return Response(
            _body(head, _encode(found or []), "windows"),
            media_type=JSON,
            headers={"X-Served-From": "warehouse"},
        )

    @v1.get(
        "/windows/{window_start}/top",
        response_model=TopWindow,
        responses={200: {"headers": SERVED_FROM}, **_errors(401, 404, 422, 503)},
        summary="The window's n stores with the highest net sales",
    )
    async def top(
        window_start: Annotated[datetime, PathParam(description="UTC, minute 00 or 30")],
        n: Annotated[int, Query(ge=1, le=100, description="how many stores")] = 10,
    ) -> Response:
        ws = _window_param(window_start, "window_start")
        token_ = serving.window_token(ws)
        head = f'"window_start":"{token_}","window_end":"{serving.window_token(ws + serving.WINDOW)}","n":{n}'
        result = await redis_reader.call("top", token_, n)
        if result is not None:
            rows = [r.decode() for r in result]
            return Response(_body(head, rows, "stores"), media_type=JSON, headers={"X-Served-From": "redis"})
        found = await from_warehouse(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE window_start = {_sql_time(ws)}"
            f" ORDER BY net_sales DESC, store_id LIMIT {n}"
        )
        if not found:
            raise ApiError(404, "window_not_found", f"window {token_} has no published sales", "window_start")
        return Response(
            _body(head, _encode(found), "stores"), media_type=JSON, headers={"X-Served-From": "warehouse"}
        )

    app.include_router(v1)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "neither Redis nor the warehouse answers"}},
        summary="Redis and warehouse reachability (no auth)",
    )
    async def health() -> JSONResponse:
        redis_state = await redis_reader.ping()
        warehouse_state = await run_in_threadpool(wh.ping)
        status: Literal["ok", "degraded", "down"]
        if redis_state.ok and warehouse_state.ok:
            status = "ok"
        elif redis_state.ok or warehouse_state.ok:
            status = "degraded"
        else:
            status = "down"
        body = Health(status=status, redis=redis_state, warehouse=warehouse_state)
        return JSONResponse(body.model_dump(), status_code=503 if status == "down" else 200)

    return app
