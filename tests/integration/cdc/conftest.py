"""Both CDC source servers (MariaDB on 3306 and the second one on 3307), a fresh database on
each per test (dropped after), and a temporary mapping directory for them."""

from __future__ import annotations

import io
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from resources.lake import LakeStorage
from resources.lake.paths import dms_prefix

SERVERS = {"main": 3306, "second": 3307}
_server_ids = itertools.count(int(uuid.uuid4().int % 1_000_000) * 100 + 1000)


@dataclass
class SourceDb:
    cluster: str
    port: int
    database: str
    url: str  # mysql+pymysql URL without database (the cluster's local_url)

    def connect(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=self.database,
            autocommit=True,
            **kw,
        )

    def execute(self, *statements: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)


def _admin(port: int) -> Any:
    import pymysql

    try:
        return pymysql.connect(host="127.0.0.1", port=port, user="root", password="", autocommit=True)
    except pymysql.err.OperationalError as exc:
        hint = "scripts/mariadb2.sh (run by scripts/services.sh)" if port == 3307 else "scripts/services.sh"
        pytest.fail(f"MariaDB at 127.0.0.1:{port} is not reachable ({exc}); start it with {hint}")


@pytest.fixture
def sources() -> Iterator[dict[str, SourceDb]]:
    """A fresh database on each server: {'main': ..., 'second': ...}."""
    made: dict[str, SourceDb] = {}
    admins = {name: _admin(port) for name, port in SERVERS.items()}
    try:
        for name, port in SERVERS.items():
            db = f"cdc_{uuid.uuid4().hex[:10]}"
            with admins[name].cursor() as cur:
                cur.execute(f"CREATE DATABASE `{db}`")
            made[name] = SourceDb(name, port, db, f"mysql+pymysql://root@127.0.0.1:{port}")
        yield made
    finally:
        for name, src in made.items():
            with admins[name].cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{src.database}`")
        for a in admins.values():
            a.close()


MappingWriter = Callable[..., Path]


@pytest.fixture
def write_mapping(tmp_path: Path) -> MappingWriter:
    """write_mapping(sources, tables=[{cluster, table, primary_key, ...}], **defaults) -> mapping dir.

    Each cluster gets a server_id no other test uses (a replica id shared by two
    readers makes the server drop the older one's connection).
    """

    def write(sources: dict[str, SourceDb], tables: list[dict[str, Any]], **defaults: Any) -> Path:
        directory = tmp_path / f"mapping-{uuid.uuid4().hex[:6]}"
        directory.mkdir()
        doc = {
            "defaults": {"flush_seconds": 0.5, **defaults},
            "clusters": [
                {"name": s.cluster, "local_url": s.url, "server_id": next(_server_ids)}
                for s in sources.values()
            ],
            "tables": [{"database": sources[t["cluster"]].database, **t} for t in tables],
        }
        (directory / "test.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return directory

    return write


def read_changes(lake: LakeStorage, cluster: str, database: str, table: str) -> tuple[pa.Table, list[str]]:
    """Every CDC file of a table (names in write order) as one table, and the file keys."""
    keys = sorted(
        (
            o.key
            for o in lake.list_objects(dms_prefix(cluster, database, table))
            if not o.key.rsplit("/", 1)[-1].startswith("LOAD")
        ),
        key=lambda k: k.rsplit("/", 1)[-1],
    )
    tables = [pq.read_table(io.BytesIO(lake.get_bytes(k))) for k in keys]
    if not tables:
        return pa.table({}), []
    return pa.concat_tables(tables, promote_options="default"), keys


def subprocess_env(lake_root: Path, var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PLATFORM_LAKE_DIR=str(lake_root), PLATFORM_VAR_DIR=str(var_dir), PLATFORM_PROFILE="local")
    return env
