"""The binlog capture against both MariaDB servers: change files, values, order, restarts, drift."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from assets.cdc import dms
from assets.cdc.checkpoint import checkpoint_key, load_checkpoint
from assets.cdc.mapping import load_mapping
from resources.lake import LakeStorage, LocalLake
from resources.settings import PROJECT_ROOT
from services.cdc.capture import CaptureError, run_capture
from tests.integration.cdc.conftest import MappingWriter, SourceDb, read_changes, subprocess_env

ACCOUNTS = """CREATE TABLE accounts (
  id INT PRIMARY KEY, active BIT(1), vip TINYINT(1), balance DECIMAL(18,4), updated DATETIME(6),
  born DATE, slot TIME, seen TIMESTAMP(3) NULL, doc JSON, note VARCHAR(50))"""
LINES = "CREATE TABLE order_lines (order_id INT, line_no INT, qty INT, PRIMARY KEY (order_id, line_no))"
STOCK = "CREATE TABLE stock (sku VARCHAR(20) PRIMARY KEY, qty INT UNSIGNED, flag BIT(1))"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class CaptureThread:
    def __init__(self, mapping_dir: Path, lake: LakeStorage) -> None:
        self.stop = threading.Event()
        self.result: list[Any] = []
        mapping = load_mapping(mapping_dir)
        # a daemon: a failing test must not leave the process waiting for it
        self.thread = threading.Thread(target=self._run, args=(mapping, lake), daemon=True)
        self.thread.start()

    def _run(self, mapping: Any, lake: LakeStorage) -> None:
        try:
            self.result.append(run_capture(mapping, lake, stop=self.stop))
        except BaseException as exc:
            self.result.append(exc)

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the capture did not stop within 30 s of its stop event"
        if isinstance(self.result[0], BaseException):
            raise self.result[0]
        return self.result[0]


def started(lake: LakeStorage, *clusters: str) -> Callable[[], bool]:
    return lambda: all(lake.exists(checkpoint_key(c)) for c in clusters)


def count(lake: LakeStorage, src: SourceDb, table: str) -> int:
    return read_changes(lake, src.cluster, src.database, table)[0].num_rows


def test_capture_both_servers(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, lake: LakeStorage
) -> None:
    main, second = sources["main"], sources["second"]
    main.execute(ACCOUNTS, LINES)
    second.execute(STOCK)
    mapping_dir = write_mapping(
        sources,
        [
            {"cluster": "main", "table": "accounts", "primary_key": ["id"]},
            {"cluster": "main", "table": "order_lines", "primary_key": ["order_id", "line_no"]},
            {"cluster": "second", "table": "stock", "primary_key": ["sku"]},
        ],
        flush_rows=100,  # smaller than the long transaction below, which must still land whole
    )
    capture = CaptureThread(mapping_dir, lake)
    wait_for(started(lake, "main", "second"), 20, "both clusters' initial checkpoints")

    with main.connect() as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(  # one statement, three rows
            "INSERT INTO accounts VALUES"
            " (1, b'1', 1, 1234.5678, '2024-02-29 23:59:59.123456', '2000-01-31', '-12:34:56',"
            "  '2024-05-06 07:08:09.123', '{\"b\": [1, 2], \"a\": \"x\"}', 'first'),"
            " (2, b'0', 0, -0.0001, '1999-12-31 00:00:00', '1970-01-01', '838:59:59', NULL, '[]', NULL),"
            " (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        )
        for balance in ("1.0001", "2.0002", "3.0003"):  # same key, same second: order by seq only
            cur.execute("UPDATE accounts SET balance = %s WHERE id = 1", (balance,))
        cur.execute("DELETE FROM accounts WHERE id = 2")
        conn.begin()  # a long transaction: 3000 rows in one commit
        for order_id in range(30):
            cur.executemany(
                "INSERT INTO order_lines VALUES (%s, %s, %s)",
                [(order_id, n, n * order_id) for n in range(100)],
            )
        cur.execute("UPDATE order_lines SET qty = -1 WHERE order_id = 7 AND line_no = 7")
        conn.commit()
    second.execute(
        "INSERT INTO stock VALUES ('A-1', 4294967295, b'1'), ('B-2', 0, b'0')",
        "UPDATE stock SET qty = 5, flag = b'0' WHERE sku = 'A-1'",
        "DELETE FROM stock WHERE sku = 'B-2'",
    )
    wait_for(
        lambda: (
            count(lake, main, "accounts") >= 7
            and count(lake, main, "order_lines") >= 3001
            and count(lake, second, "stock") >= 4
        ),
        30,
        "all changes in the lake",
    )
    written = capture.finish()
    assert written == 7 + 3001 + 4

    acc, acc_keys = read_changes(lake, "main", main.database, "accounts")
    assert acc.schema.names[:3] == ["Op", dms.TIMESTAMP_COLUMN, dms.CHANGE_SEQ_COLUMN]
    assert acc.schema.field(dms.TIMESTAMP_COLUMN).type == pa.timestamp("us", tz="UTC")
    rows = acc.to_pylist()
    seqs = [r[dms.CHANGE_SEQ_COLUMN] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # files in name order hold binlog order
    assert [(r["Op"], r["id"]) for r in rows] == [
        ("I", 1),
        ("I", 2),
        ("I", 3),
        ("U", 1),
        ("U", 1),
        ("U", 1),
        ("D", 2),
    ]
    assert [dms.parse_change_seq(s)[2] for s in seqs[:3]] == [0, 1, 2]  # one event, rows 0..2
    assert rows[0] | {dms.TIMESTAMP_COLUMN: None, dms.CHANGE_SEQ_COLUMN: None} == {
        "Op": "I",
        dms.TIMESTAMP_COLUMN: None,
        dms.CHANGE_SEQ_COLUMN: None,
        "id": 1,
        "active": True,
        "vip": True,
        "balance": Decimal("1234.5678"),
        "updated": datetime(2024, 2, 29, 23, 59, 59, 123456),
        "born": date(2000, 1, 31),
        "slot": -timedelta(hours=12, minutes=34, seconds=56),
        "seen": datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
        "doc": '{"b": [1, 2], "a": "x"}',  # MariaDB JSON: the text as stored
        "note": "first",
    }
    assert rows[1]["active"] is False and rows[1]["vip"] is False
    assert rows[1]["balance"] == Decimal("-0.0001") and rows[1]["slot"] == timedelta(
        hours=838, minutes=59, seconds=59
    )
    assert rows[1]["doc"] == "[]" and rows[1]["note"] is None and rows[1]["seen"] is None
    assert all(rows[2][c] is None for c in acc.schema.names[3:] if c != "id")
    assert [r["balance"] for r in rows[3:6]] == [Decimal("1.0001"), Decimal("2.0002"), Decimal("3.0003")]
    latest = {r["id"]: r for r in sorted(rows, key=lambda r: r[dms.CHANGE_SEQ_COLUMN])}
    assert latest[1]["balance"] == Decimal("3.0003") and latest[2]["Op"] == "D"
    assert rows[6]["balance"] == Decimal("-0.0001")  # a delete carries the before image
    now = datetime.now(UTC)
    assert all(now - timedelta(minutes=2) < r[dms.TIMESTAMP_COLUMN] <= now for r in rows)
    for key in acc_keys:  # landing/cdc/<cluster>/<schema>/<table>/YYYY/MM/DD/<cdc name>
        assert dms.parse_file_name(key.rsplit("/", 1)[-1]).kind == "cdc"
        assert key.startswith(f"landing/cdc/main/{main.database}/accounts/{now:%Y/%m/%d}/")

    lines, line_keys = read_changes(lake, "main", main.database, "order_lines")
    in_txn = [k for k in line_keys if (lambda t: t.num_rows)(read_one(lake, k)) >= 3000]
    assert len(in_txn) == 1, "the 3000-row transaction was split across files"
    assert lines.num_rows == 3001
    assert len(set(lines.column(dms.TIMESTAMP_COLUMN).to_pylist())) == 1  # one commit time
    keys = {(r["order_id"], r["line_no"]) for r in lines.to_pylist() if r["Op"] == "I"}
    assert keys == {(o, n) for o in range(30) for n in range(100)}
    last = lines.to_pylist()[-1]
    assert (last["Op"], last["order_id"], last["line_no"], last["qty"]) == ("U", 7, 7, -1)

    stock, _ = read_changes(lake, "second", second.database, "stock")
    assert stock.schema.field("qty").type == pa.int64() and stock.schema.field("flag").type == pa.bool_()
    assert [(r["Op"], r["sku"], r["qty"], r["flag"]) for r in stock.to_pylist()] == [
        ("I", "A-1", 4294967295, True),
        ("I", "B-2", 0, False),
        ("U", "A-1", 5, False),
        ("D", "B-2", 0, False),
    ]
    # the checkpoints are at or past the last change written
    for src, table in ((main, "order_lines"), (second, "stock")):
        cp = load_checkpoint(lake, src.cluster)
        assert cp is not None
        last_seq = dms.parse_change_seq(
            read_changes(lake, src.cluster, src.database, table)[0].column(2)[-1].as_py()
        )
        assert (dms.binlog_number(cp.log_file), cp.log_pos) >= last_seq[:2]


def read_one(lake: LakeStorage, key: str) -> pa.Table:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(lake.get_bytes(key)))


def _start(mapping_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cdc.capture", "--mapping", str(mapping_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=open(log, "ab"),  # the child process owns it
        stderr=subprocess.STDOUT,
    )


def test_sigkill_and_restart_loses_nothing(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, tmp_path: Path
) -> None:
    main, second = sources["main"], sources["second"]
    main.execute("CREATE TABLE events (id INT PRIMARY KEY, val INT, seen TIMESTAMP NULL)")
    second.execute("CREATE TABLE events (id INT PRIMARY KEY, val INT, seen TIMESTAMP NULL)")
    mapping_dir = write_mapping(
        sources,
        [
            {"cluster": "main", "table": "events", "primary_key": ["id"]},
            {"cluster": "second", "table": "events", "primary_key": ["id"]},
        ],
        flush_seconds=0.2,
    )
    lake = LocalLake(root=str(tmp_path / "lake"))
    env = subprocess_env(tmp_path / "lake", tmp_path / "var") | {"TZ": "Asia/Seoul"}  # timestamps stay UTC
    log = tmp_path / "capture.log"
    proc = _start(mapping_dir, env, log)
    try:
        wait_for(started(lake, "main", "second"), 30, f"the capture's initial checkpoints (log: {log})")
        first_checkpoints = {c: lake.get_bytes(checkpoint_key(c)) for c in ("main", "second")}
        expected: dict[str, set[tuple[str, int, int]]] = {"main": set(), "second": set()}

        def traffic(start: int, stop: int) -> None:
            conns = {name: src.connect() for name, src in sources.items()}
            try:
                for i in range(start, stop):
                    for name, conn in conns.items():
                        with conn.cursor() as cur:
                            cur.execute("SET time_zone = '+00:00'")
                            cur.execute("INSERT INTO events VALUES (%s, %s, '2024-01-02 03:04:05')", (i, i))
                            cur.execute("UPDATE events SET val = %s WHERE id = %s", (i * 10 + 7, i))
                            expected[name] |= {("I", i, i), ("U", i, i * 10 + 7)}
                            if i % 5 == 0:
                                cur.execute("DELETE FROM events WHERE id = %s", (i,))
                                expected[name].add(("D", i, i * 10 + 7))
            finally:
                for conn in conns.values():
                    conn.close()

        traffic(0, 80)
        wait_for(lambda: count(lake, main, "events") > 0, 20, f"a first change file (log: {log})")
        writer = threading.Thread(target=traffic, args=(80, 160))  # in flight when the capture dies
        writer.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        writer.join()
        traffic(160, 220)  # while nothing reads the binlog
        proc = _start(mapping_dir, env, log)
        total = {name: len(e) for name, e in expected.items()}
        wait_for(
            lambda: (
                len(set(read_changes(lake, "main", main.database, "events")[0].column(2).to_pylist()))
                >= total["main"]
                and len(set(read_changes(lake, "second", second.database, "events")[0].column(2).to_pylist()))
                >= total["second"]
            ),
            40,
            f"every change after the restart (log: {log})",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def check(name: str, src: SourceDb, at_least: int) -> None:
        changes = read_changes(lake, name, src.database, "events")[0].to_pylist()
        by_seq: dict[str, list[dict[str, Any]]] = {}
        for r in changes:
            by_seq.setdefault(r[dms.CHANGE_SEQ_COLUMN], []).append(r)
        # duplicates (a change written again after a restart) are the same row, seq and all
        assert all(all(r == rs[0] for r in rs) for rs in by_seq.values())
        distinct = [rs[0] for rs in by_seq.values()]
        assert len(distinct) == len(expected[name])  # one seq per change made: none lost, none invented
        assert {(r["Op"], r["id"], r["val"]) for r in distinct} == expected[name]
        assert {r["seen"] for r in distinct} == {datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}
        assert max(Counter(r[dms.CHANGE_SEQ_COLUMN] for r in changes).values()) >= at_least
        # per key, the last change by seq is the final state
        final: dict[int, dict[str, Any]] = {}
        for r in sorted(distinct, key=lambda r: r[dms.CHANGE_SEQ_COLUMN]):
            final[r["id"]] = r
        assert all((r["Op"] == "D") == (i % 5 == 0) and r["val"] == i * 10 + 7 for i, r in final.items())

    for name, src in sources.items():
        check(name, src, 1)

    # A crash between writing files and saving the checkpoint: simulated by putting the first
    # checkpoint back. Everything is read and written again, with the same seqs.
    for cluster, raw in first_checkpoints.items():
        lake.put_bytes(checkpoint_key(cluster), raw)
    run_capture(load_mapping(mapping_dir), lake, stop_after_seconds=3)
    for name, src in sources.items():
        check(name, src, 2)
        changes = read_changes(lake, name, src.database, "events")[0]
        assert Counter(Counter(changes.column(2).to_pylist()).values()).keys() >= {2}


def test_schema_drift_and_dropped_table(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, local_lake: LakeStorage
) -> None:
    main = sources["main"]
    main.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(10))", "CREATE TABLE gone (id INT PRIMARY KEY)"
    )
    mapping_dir = write_mapping(
        {"main": main},
        [
            {
                "cluster": "main",
                "table": "items",
                "primary_key": ["id"],
                "columns": {"name": {"type": "string"}},
            },
            {"cluster": "main", "table": "gone", "primary_key": ["id"]},
        ],
    )
    capture = CaptureThread(mapping_dir, local_lake)
    wait_for(started(local_lake, "main"), 20, "the initial checkpoint")
    main.execute(
        "INSERT INTO items VALUES (1, 'a')",
        "INSERT INTO gone VALUES (1)",
        "DROP TABLE gone",
        "ALTER TABLE items ADD COLUMN price DECIMAL(10,2) DEFAULT 9.99, ADD COLUMN flag TINYINT(1)",
        "INSERT INTO items (id, name, flag) VALUES (2, 'b', 1)",
        "UPDATE items SET price = 1.50 WHERE id = 1",
    )
    wait_for(lambda: count(local_lake, main, "items") >= 3, 20, "the changes after the ALTER")
    capture.finish()
    table, keys = read_changes(local_lake, "main", main.database, "items")
    assert len(keys) >= 2
    before = read_one(local_lake, keys[0])
    assert before.schema.names[3:] == ["id", "name"]
    after = read_one(local_lake, keys[-1])
    assert after.schema.names[3:] == ["id", "name", "price", "flag"]
    assert (
        after.schema.field("price").type == pa.decimal128(10, 2)
        and after.schema.field("flag").type == pa.bool_()
    )
    rows = table.to_pylist()
    assert [(r["Op"], r["id"], r["price"], r["flag"]) for r in rows] == [
        ("I", 1, None, None),
        ("I", 2, Decimal("9.99"), True),
        ("U", 1, Decimal("1.50"), None),
    ]
    gone, _ = read_changes(local_lake, "main", main.database, "gone")
    assert gone.to_pylist() == [
        {
            "Op": "I",
            dms.TIMESTAMP_COLUMN: gone.column(1)[0].as_py(),
            dms.CHANGE_SEQ_COLUMN: gone.column(2)[0].as_py(),
            "id": 1,
        }
    ]


def test_purged_checkpoint_is_an_error(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, local_lake: LakeStorage
) -> None:
    second = sources["second"]
    second.execute("CREATE TABLE t (id INT PRIMARY KEY)")
    mapping_dir = write_mapping(
        {"second": second}, [{"cluster": "second", "table": "t", "primary_key": ["id"]}]
    )
    local_lake.put_bytes(
        checkpoint_key("second"),
        json.dumps({"cluster": "second", "log_file": "mysql-bin.000000", "log_pos": 4}).encode(),
    )
    with pytest.raises(
        CaptureError,
        match=r"checkpoint .*_capture_checkpoint\.json is at mysql-bin\.000000:4.*oldest binlog: mysql-bin\.\d{6}",
    ):
        run_capture(load_mapping(mapping_dir), local_lake, stop_after_seconds=5)


def test_module_entry_point_rejects_unknown_cluster(
    tmp_path: Path, write_mapping: MappingWriter, sources: dict[str, SourceDb]
) -> None:
    mapping_dir = write_mapping(sources, [])
    proc = subprocess.run(
        [sys.executable, "-m", "services.cdc.capture", "--mapping", str(mapping_dir), "--cluster", "nope"],
        cwd=PROJECT_ROOT,
        env=subprocess_env(tmp_path / "lake", tmp_path / "var"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "clusters ['nope'] are not in the mapping (known: ['main', 'second'])" in proc.stderr
    assert not os.path.exists(tmp_path / "lake" / "landing")


def test_quiet_binlog_flushes_at_once_and_until_stops_at_a_position(
    sources: dict[str, SourceDb], write_mapping: MappingWriter, local_lake: LakeStorage
) -> None:
    """A batch is written when the binlog goes quiet, not flush_seconds later; `until` stops the capture
    once everything before the position is in files."""
    main = sources["main"]
    main.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    # flush_seconds far beyond the test's waits: only the quiet-binlog flush can write the file
    mapping_dir = write_mapping({"main": main}, [{"cluster": "main", "table": "t", "primary_key": ["id"]}],
                                flush_seconds=600)  # fmt: skip
    capture = CaptureThread(mapping_dir, local_lake)
    wait_for(started(local_lake, "main"), 20, "the initial checkpoint")
    main.execute("INSERT INTO t VALUES (1, 1), (2, 2)", "UPDATE t SET v = 3 WHERE id = 1")
    wait_for(lambda: count(local_lake, main, "t") == 3, 10, "the file written once the binlog is quiet")
    capture.finish()

    with main.connect() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM t WHERE id = 2")
        cur.execute("SHOW MASTER STATUS")
        log_file, log_pos = cur.fetchone()[:2]
    stop = threading.Event()
    run_capture(load_mapping(mapping_dir), local_lake, stop=stop, until=(log_file, int(log_pos)),
                stop_after_seconds=60)  # fmt: skip
    assert stop.is_set(), "the capture ended without reaching its position (stop_after_seconds ran out)"
    checkpoint = load_checkpoint(local_lake, "main")
    assert checkpoint is not None
    assert (dms.binlog_number(checkpoint.log_file), checkpoint.log_pos) >= (
        dms.binlog_number(log_file),
        int(log_pos),
    )
    ops = [r["Op"] for r in read_changes(local_lake, "main", main.database, "t")[0].to_pylist()]
    assert ops == ["I", "I", "U", "D"]
    with pytest.raises(CaptureError, match="a position of one server: name one cluster"):
        run_capture(load_mapping(write_mapping(sources, [])), local_lake, until=(log_file, 4))
