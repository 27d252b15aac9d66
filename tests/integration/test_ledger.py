"""The file ledger on a real DuckDB warehouse: exactly-once loads, rollback with the load,
and claims that two concurrent sensors cannot both take."""

import threading

import pyarrow as pa
import pytest

from resources.ledger import FileLedger, FileRef
from resources.warehouse import DuckDBWarehouse

TARGET = "cdc/orders"


@pytest.fixture
def warehouse(tmp_path) -> DuckDBWarehouse:
    return DuckDBWarehouse(path=str(tmp_path / "wh.duckdb"))


def _apply(warehouse: DuckDBWarehouse, ref: FileRef, rows: pa.Table, fail_after_load: bool = False) -> int:
    """A loader: the file's rows and its ledger entry in one transaction, skipped if applied."""
    ledger = FileLedger(warehouse)
    if not ledger.pending(TARGET, [ref]):
        return 0
    with warehouse.transaction() as tx:
        tx.load("cdc.orders_history", rows, "append")
        if fail_after_load:
            raise RuntimeError("crash between the load and the ledger")
        ledger.record(TARGET, [ref], run_id="r1", rows={ref.identity: rows.num_rows}, session=tx)
    return rows.num_rows


def _history_rows(warehouse: DuckDBWarehouse) -> int:
    if not warehouse.table_exists("cdc.orders_history"):
        return 0
    return warehouse.query("SELECT count(*) AS n FROM cdc.orders_history").column("n")[0].as_py()


def test_a_file_is_applied_once_however_often_it_arrives(warehouse):
    ref = FileRef("landing/cdc/orders/year=2026/month=11/day=23/20261123-0700.parquet", "abc")
    rows = pa.table({"id": [1, 2, 3]})
    assert _apply(warehouse, ref, rows) == 3
    assert _apply(warehouse, ref, rows) == 0  # redelivered
    assert _history_rows(warehouse) == 3
    # The same key with new content is a new file.
    assert _apply(warehouse, FileRef(ref.key, "def"), pa.table({"id": [4]})) == 1
    assert _history_rows(warehouse) == 4
    assert FileLedger(warehouse).record(TARGET, [ref]) == 0  # recording twice adds nothing


def test_a_crash_before_commit_leaves_neither_rows_nor_ledger_entry(warehouse):
    ref = FileRef("landing/cdc/orders/x.parquet", "abc")
    with pytest.raises(RuntimeError, match="crash"):
        _apply(warehouse, ref, pa.table({"id": [1, 2]}), fail_after_load=True)
    assert _history_rows(warehouse) == 0
    assert FileLedger(warehouse).pending(TARGET, [ref]) == [ref]
    assert _apply(warehouse, ref, pa.table({"id": [1, 2]})) == 2  # the re-run applies it


def test_concurrent_claims_take_each_file_once(warehouse):
    refs = [FileRef(f"landing/cdc/orders/f{i}.parquet", f"e{i}") for i in range(30)]
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def sensor(name: str) -> None:
        ledger = FileLedger(warehouse)
        barrier.wait()
        unclaimed, _ = ledger.claim(TARGET, [(r, "2026-11-23") for r in refs])
        won[name] = ledger.hold(TARGET, [(r, p, f"run-{name}") for r, p in unclaimed], name)

    threads = [threading.Thread(target=sensor, args=(n,)) for n in ("events", "listing")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = won["events"] + won["listing"]
    assert sorted(taken) == sorted(r.identity for r in refs)  # every file claimed, none twice
    claims = FileLedger(warehouse).claims(TARGET, [r.identity for r in refs])
    assert {c.sensor for c in claims.values()} <= {"events", "listing"} and len(claims) == 30

    FileLedger(warehouse).record(TARGET, refs[:10])  # applying a file releases its claim
    assert len(FileLedger(warehouse).open_claims([TARGET])) == 20


def test_bigquery_job_ids_are_stable_and_distinct():
    a = FileRef("s3://dms/cdc/shop/orders/20261123-0700.parquet", "abc")
    assert FileLedger.job_id(TARGET, a) == FileLedger.job_id(TARGET, FileRef(a.key, a.etag))
    assert FileLedger.job_id(TARGET, a) != FileLedger.job_id(TARGET, FileRef(a.key, "other"))
    assert FileLedger.job_id(TARGET, a) != FileLedger.job_id("cdc/customers", a)
    job_id = FileLedger.job_id(TARGET, a)
    assert len(job_id) <= 1024 and job_id.replace("_", "").isalnum()  # BigQuery's job id alphabet


def test_two_processes_recording_the_same_files_each_record_once(warehouse):
    """Concurrent runs of one partition record the same files: neither fails on the ledger's key
    (the check and the insert are one transaction), and each file is recorded once."""
    import subprocess
    import sys

    from resources.settings import PROJECT_ROOT

    code = (
        "import sys\n"
        "from resources.ledger import FileLedger, FileRef\n"
        "from resources.warehouse import DuckDBWarehouse\n"
        "ledger = FileLedger(DuckDBWarehouse(path=sys.argv[1], lock_timeout=120))\n"
        "added = sum(ledger.record('t', [FileRef(f'k{i:03d}', 'e'), FileRef(f'k{i + 1:03d}', 'e')])"
        " for i in range(0, 60, 1))\n"
        "print(added)\n"
    )
    path = str(warehouse.database_path())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, path], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(int(out.strip()) for out, _ in outputs) == 61  # k000..k060, each added by one process
    rows = warehouse.query(
        "SELECT count(*) AS n, count(DISTINCT identity) AS d FROM platform_ledger.applied_files"
    )
    assert rows.to_pylist() == [{"n": 61, "d": 61}]
