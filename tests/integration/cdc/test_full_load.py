"""Full load: a consistent snapshot into DMS LOAD files whose seq is the snapshot's binlog position."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from assets.cdc import dms
from assets.cdc.mapping import load_mapping
from resources.lake import LakeStorage
from services.cdc.full_load import full_load, main
from tests.integration.cdc.conftest import MappingWriter, SourceDb, read_changes
from tests.integration.cdc.test_capture import CaptureThread, started, wait_for


def read_load(lake: LakeStorage, key: str) -> pq.ParquetFile:
    return pq.ParquetFile(io.BytesIO(lake.get_bytes(key)))


def test_full_load_snapshot_parts_and_seq(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, lake: LakeStorage
) -> None:
    main_db = sources["main"]
    main_db.execute(
        "CREATE TABLE accounts (id INT PRIMARY KEY, active BIT(1), balance DECIMAL(18,4), seen TIMESTAMP NULL)",
        "CREATE TABLE empty_one (id INT PRIMARY KEY)",
        "SET time_zone = '+00:00'",
    )
    with main_db.connect() as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.executemany(
            "INSERT INTO accounts VALUES (%s, %s, %s, '2024-01-02 03:04:05')",
            [(i, i % 2, Decimal(i) / 4) for i in range(25, 0, -1)],
        )
    mapping_dir = write_mapping(
        {"main": main_db},
        [
            {"cluster": "main", "table": "accounts", "primary_key": ["id"]},
            {"cluster": "main", "table": "empty_one", "primary_key": ["id"]},
        ],
    )
    mapping = load_mapping(mapping_dir)
    capture = CaptureThread(mapping_dir, lake)
    wait_for(started(lake, "main"), 20, "the capture's initial checkpoint")
    main_db.execute("UPDATE accounts SET balance = 100 WHERE id = 3")  # before the snapshot

    keys = full_load(mapping, lake, "main.accounts", rows_per_file=10)
    main_db.execute("UPDATE accounts SET balance = 200 WHERE id = 4")  # after it
    assert [k.rsplit("/", 1)[-1] for k in keys] == [
        "LOAD00000001.parquet",
        "LOAD00000002.parquet",
        "LOAD00000003.parquet",
    ]
    today = datetime.now(UTC)
    assert all(k.startswith(f"landing/cdc/main/{main_db.database}/accounts/{today:%Y/%m/%d}/") for k in keys)
    files = [read_load(lake, k) for k in keys]
    metas = [f.schema_arrow.metadata for f in files]
    load_id = metas[0][dms.LOAD_ID_METADATA].decode()
    assert [m[dms.LOAD_PART_METADATA] for m in metas] == [b"1", b"2", b"3"]
    assert [m.get(dms.LOAD_PARTS_METADATA) for m in metas] == [None, None, b"3"]
    rows = [r for f in files for r in f.read().to_pylist()]
    assert [f.metadata.num_rows for f in files] == [10, 10, 5]
    assert [r["id"] for r in rows] == list(range(1, 26))  # ordered by the primary key
    assert {r["Op"] for r in rows} == {"I"} and {r[dms.CHANGE_SEQ_COLUMN] for r in rows} == {load_id}
    assert len({r[dms.TIMESTAMP_COLUMN] for r in rows}) == 1
    expected = {i: (i % 2 == 1, Decimal(i) / 4) for i in range(1, 26)} | {3: (True, Decimal(100))}
    assert {r["id"]: (r["active"], r["balance"]) for r in rows} == expected
    assert {r["seen"] for r in rows} == {datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}

    # the load's seq sits between the change before the snapshot and the one after it
    wait_for(
        lambda: read_changes(lake, "main", main_db.database, "accounts")[0].num_rows >= 2, 20, "the updates"
    )
    capture.finish()
    changes = {
        r["id"]: r[dms.CHANGE_SEQ_COLUMN]
        for r in read_changes(lake, "main", main_db.database, "accounts")[0].to_pylist()
    }
    assert changes[3] < load_id < changes[4]

    # a second load never overwrites the first; an empty table writes one empty, final part
    again = full_load(mapping, lake, "accounts", rows_per_file=100)
    assert [k.rsplit("/", 1)[-1] for k in again] == ["LOAD00000004.parquet"]
    assert read_load(lake, again[0]).schema_arrow.metadata[dms.LOAD_ID_METADATA].decode() > load_id
    empty = full_load(mapping, lake, "main.empty_one")
    part = read_load(lake, empty[0])
    assert part.metadata.num_rows == 0 and part.schema_arrow.names == [
        "Op",
        dms.TIMESTAMP_COLUMN,
        dms.CHANGE_SEQ_COLUMN,
        "id",
    ]
    assert part.schema_arrow.metadata[dms.LOAD_PARTS_METADATA] == b"1"


def test_full_load_errors(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping_dir = write_mapping(sources, [{"cluster": "second", "table": "missing", "primary_key": ["id"]}])
    assert main(["second.nope", "--mapping", str(mapping_dir)]) == 1
    assert "no CDC table 'second.nope'" in capsys.readouterr().err
    assert main(["second.missing", "--mapping", str(mapping_dir)]) == 1
    assert (
        f"second.{sources['second'].database}.missing does not exist at the source" in capsys.readouterr().err
    )
