"""services.store_api through FastAPI's TestClient: the local Redis and a temporary DuckDB warehouse."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from assets.store_sales import serving
from resources.cache import RedisCache
from resources.warehouse.duckdb import DuckDBWarehouse
from services.store_api.app import create_app

from .conftest import TABLE, W0, make_row, window_table

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
W1 = W0 + timedelta(minutes=30)
ROWS = [
    make_row(1, W0, "100.00"),
    make_row(2, W0, "300.25"),
    make_row(1, W1, "50.00"),
    make_row(2, W1, "7.10"),
]


@pytest.fixture
def app(cache: RedisCache, warehouse: DuckDBWarehouse) -> FastAPI:
    warehouse.load(TABLE, window_table(ROWS))
    for start in (W0, W1):
        serving.publish_window(cache, start, [r for r in ROWS if r["window_start"] == start])
    return create_app(cache=cache, warehouse=warehouse, token=TOKEN, warehouse_timeout=0.5)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def _error(response, status: int, code: str, parameter: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["parameter"] == parameter
    assert body["error"]["message"]
    return body["error"]


def _drop_redis(cache: RedisCache, redis_prefix: str) -> None:
    keys = list(cache.client().scan_iter(match=redis_prefix + "*"))
    cache.client().delete(*keys)


def test_latest_from_redis(client: TestClient) -> None:
    response = client.get("/v1/stores/1/windows/latest", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["X-Served-From"] == "redis"
    body = response.json()
    assert body["store_id"] == 1
    assert body["window_start"] == "2024-05-01T10:30:00Z"
    assert body["window_end"] == "2024-05-01T11:00:00Z"
    assert body["net_sales"] == "50.00"
    assert body["avg_basket"] == "13.75"


def test_warehouse_fallback_answers_the_same(
    client: TestClient, cache: RedisCache, redis_prefix: str
) -> None:
    urls = [
        "/v1/stores/2/windows/latest",
        "/v1/stores/2/windows?start=2024-05-01T10:00:00Z&end=2024-05-01T11:00:00Z",
        "/v1/windows/2024-05-01T10:00:00Z/top?n=5",
    ]
    from_redis = [client.get(u, headers=AUTH) for u in urls]
    assert [r.headers["X-Served-From"] for r in from_redis] == ["redis"] * 3
    _drop_redis(cache, redis_prefix)
    from_warehouse = [client.get(u, headers=AUTH) for u in urls]
    assert [r.status_code for r in from_warehouse] == [200] * 3
    assert [r.headers["X-Served-From"] for r in from_warehouse] == ["warehouse"] * 3
    assert [r.content for r in from_warehouse] == [r.content for r in from_redis]  # byte for byte


def test_range_older_than_redis_keeps_comes_from_the_warehouse(client: TestClient) -> None:
    response = client.get(
        "/v1/stores/1/windows",
        params={"start": "2024-04-28T10:00:00Z", "end": "2024-05-01T11:00:00Z"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.headers["X-Served-From"] == "warehouse"
    assert [w["net_sales"] for w in response.json()["windows"]] == ["100.00", "50.00"]
    empty = client.get(
        "/v1/stores/1/windows",
        params={"start": "2024-05-01T12:00:00Z", "end": "2024-05-01T13:00:00Z"},
        headers=AUTH,
    )
    assert empty.status_code == 200 and empty.json()["windows"] == []


def test_top(client: TestClient) -> None:
    response = client.get("/v1/windows/2024-05-01T10:00:00Z/top", params={"n": 1}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["window_start"], body["window_end"], body["n"]) == (
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:30:00Z",
        1,
    )
    assert [s["store_id"] for s in body["stores"]] == [2]
    # An offset is accepted and converted: 19:00 in Seoul is 10:00 UTC.
    seoul = client.get("/v1/windows/2024-05-01T19:00:00+09:00/top", headers=AUTH)
    assert seoul.status_code == 200 and seoul.json()["window_start"] == "2024-05-01T10:00:00Z"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer wrong"}, "invalid_token"),
        ({"Authorization": f"Basic {TOKEN}"}, "invalid_authorization"),
        ({"Authorization": "Bearer"}, "invalid_authorization"),
    ],
)
def test_unauthorized(client: TestClient, headers: dict, code: str) -> None:
    response = client.get("/v1/stores/1/windows/latest", headers=headers)
    _error(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


def test_not_found(client: TestClient, cache: RedisCache, redis_prefix: str) -> None:
    _error(client.get("/v1/stores/404/windows/latest", headers=AUTH), 404, "store_not_found", "store_id")
    _error(
        client.get("/v1/stores/404/windows?start=2024-05-01T10:00Z&end=2024-05-01T11:00Z", headers=AUTH),
        404,
        "store_not_found",
        "store_id",
    )
    error = _error(
        client.get("/v1/windows/2024-05-02T10:00:00Z/top", headers=AUTH),
        404,
        "window_not_found",
        "window_start",
    )
    assert "2024-05-02T10:00:00Z" in error["message"]
    assert "404" in client.get("/v1/stores/404/windows/latest", headers=AUTH).json()["error"]["message"]
    _error(client.get("/v1/nothing-here", headers=AUTH), 404, "not_found")


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/v1/stores/1/windows?start=yesterday&end=2024-05-01T11:00Z", "start"),
        ("/v1/stores/1/windows?start=2024-05-01T10:15:00Z&end=2024-05-01T11:00Z", "start"),
        ("/v1/stores/1/windows?start=2024-05-01T10:00Z&end=2024-05-01T11:00:30Z", "end"),
        ("/v1/stores/1/windows?start=2024-05-01T10:00Z&end=2024-05-01T10:00Z", "end"),
        ("/v1/stores/1/windows?start=2024-05-01T10:00Z&end=2024-05-09T10:00Z", "end"),
        ("/v1/stores/1/windows?start=2024-05-01T10:00Z", "end"),
        ("/v1/stores/0/windows/latest", "store_id"),
        ("/v1/stores/abc/windows/latest", "store_id"),
        ("/v1/windows/2024-05-01T10:10:00Z/top", "window_start"),
        ("/v1/windows/not-a-time/top", "window_start"),
        # Found by schemathesis: a time with an offset before 0001-01-01 UTC has no UTC time.
        ("/v1/stores/1/windows?start=0003-01-01T00:00:00%2B04:00&end=0001-01-01T00:00:00%2B04:00", "end"),
        ("/v1/windows/0001-01-01T00:00:00%2B04:00/top", "window_start"),
        ("/v1/windows/2024-05-01T10:00:00Z/top?n=0", "n"),
        ("/v1/windows/2024-05-01T10:00:00Z/top?n=101", "n"),
        ("/v1/windows/2024-05-01T10:00:00Z/top?n=ten", "n"),
    ],
)
def test_invalid_parameters(client: TestClient, url: str, parameter: str) -> None:
    error = _error(client.get(url, headers=AUTH), 422, "invalid_parameter", parameter)
    assert error["message"].startswith(parameter)


def test_warehouse_locked_by_a_writer_is_503(
    client: TestClient, cache: RedisCache, redis_prefix: str, warehouse: DuckDBWarehouse
) -> None:
    _drop_redis(cache, redis_prefix)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(30)",
            str(warehouse.database_path()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        response = client.get("/v1/stores/1/windows/latest", headers=AUTH)
        assert time.monotonic() - started < 5
        error = _error(response, 503, "warehouse_unavailable")
        assert "locked" in error["message"]
        assert response.headers["Retry-After"]
    finally:
        holder.kill()
        holder.wait()
    assert client.get("/v1/stores/1/windows/latest", headers=AUTH).headers["X-Served-From"] == "warehouse"


def test_unreachable_redis_falls_back(warehouse: DuckDBWarehouse, redis_prefix: str) -> None:
    warehouse.load(TABLE, window_table(ROWS))
    dead = RedisCache(url="redis://127.0.0.1:1/0", key_prefix=redis_prefix)
    with TestClient(create_app(cache=dead, warehouse=warehouse, token=TOKEN)) as c:
        response = c.get("/v1/stores/2/windows/latest", headers=AUTH)
        assert response.status_code == 200 and response.headers["X-Served-From"] == "warehouse"
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["redis"]["ok"] is False


def test_health_without_auth(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["redis"]["ok"] and body["warehouse"]["ok"]


def test_missing_warehouse_table_is_a_miss(cache: RedisCache, tmp_path) -> None:
    empty = DuckDBWarehouse(path=str(tmp_path / "none.duckdb"))
    with TestClient(create_app(cache=cache, warehouse=empty, token=TOKEN)) as c:
        _error(c.get("/v1/stores/1/windows/latest", headers=AUTH), 404, "store_not_found", "store_id")
    assert not (tmp_path / "none.duckdb").exists()  # a reader never creates the file


def test_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, cache: RedisCache, warehouse: DuckDBWarehouse
) -> None:
    monkeypatch.delenv("STORE_API_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="STORE_API_TOKEN"):
        create_app(cache=cache, warehouse=warehouse)
    monkeypatch.setenv("STORE_API_TOKEN", "from-env")
    with TestClient(create_app(cache=cache, warehouse=warehouse)) as c:
        assert (
            c.get("/v1/stores/1/windows/latest", headers={"Authorization": "Bearer from-env"}).status_code
            == 404
        )


def test_openapi_documents_models_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    window = spec["components"]["schemas"]["Window"]["properties"]
    assert window["net_sales"]["type"] == "string" and "pattern" in window["net_sales"]
    latest = spec["paths"]["/v1/stores/{store_id}/windows/latest"]["get"]["responses"]
    assert set(latest) >= {"200", "401", "404", "422", "503"}
    assert latest["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_cli_parser_and_token_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from services.store_api import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["store-api", "--workers", "2"])
    assert (args.command, args.host, args.port, args.workers) == ("store-api", "127.0.0.1", 8600, 2)
    monkeypatch.delenv("STORE_API_TOKEN", raising=False)
    assert cli.run(args) == 2
    assert "STORE_API_TOKEN" in capsys.readouterr().err
