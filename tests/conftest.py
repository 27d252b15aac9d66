"""Test harness: a moto server for the session, and the PostgreSQL, MariaDB and Redis
servers of this machine, with each test creating and dropping its own databases and keys.

Services are started by the project (scripts/services.sh, run by .ci/run and by
the README's commands); a service that is down fails the test with its name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resources.aws import AwsClients
from resources.lake import LakeStorage, LocalLake, S3Lake
from services.moto import free_port, start_moto

PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
MARIADB_ADMIN = dict(host="127.0.0.1", port=3306, user="root", password="")
REDIS_URL = "redis://127.0.0.1:6379/0"


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _isolated_var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does lands in the developer's var/ directory."""
    monkeypatch.setenv("PLATFORM_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("PLATFORM_PROFILE", raising=False)


# --- AWS (moto server) -------------------------------------------------------
@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def local_aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AwsClients:
    """AwsClients as the local profile builds them, pointed at the session's moto server."""
    monkeypatch.setenv("PLATFORM_AWS_ENDPOINT_URL", moto_endpoint)
    return AwsClients(use_local_endpoint=True)


@pytest.fixture
def s3_bucket(local_aws: AwsClients) -> str:
    name = _unique("test-bucket").replace("_", "-")
    local_aws.client("s3").create_bucket(Bucket=name)
    return name


# --- the lake in both modes -------------------------------------------------
@pytest.fixture
def local_lake(tmp_path: Path) -> LocalLake:
    return LocalLake(root=str(tmp_path / "lake"))


@pytest.fixture
def s3_lake(local_aws: AwsClients, s3_bucket: str) -> S3Lake:
    return S3Lake(aws=local_aws, bucket=s3_bucket, root_prefix="lake")


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest) -> LakeStorage:
    """The same test against a local-directory lake and an S3 lake on moto."""
    return request.getfixturevalue(f"{request.param}_lake")


# --- PostgreSQL, MariaDB, Redis ------------------------------------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after the test."""
    import psycopg

    name = _unique("t")
    try:
        admin = psycopg.connect(**PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({exc}); run scripts/services.sh")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh MariaDB database, dropped after the test."""
    import pymysql

    name = _unique("t")
    try:
        admin = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB at 127.0.0.1:3306 is not reachable ({exc}); run scripts/services.sh")
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the local Redis; its keys are deleted after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at 127.0.0.1:6379 is not reachable ({exc}); run scripts/services.sh")
    prefix = _unique("test") + ":"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
