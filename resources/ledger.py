"""The file ledger: which lake objects have been applied to which target, exactly once.

A file is known by its identity, `<key>@<etag>`: the lake key (or `s3://bucket/key`
for an object outside the lake) and the ETag S3 gives it, which a local lake
reproduces as the content's MD5. A rewrite of the same key with other content
is a new file; a re-delivered event or a re-listed object is the same file.

Two tables in the warehouse:

* `applied_files`: (target, identity) for every file a target has taken in. A
  loader writes its rows in the same transaction as the load where the
  warehouse has transactions (DuckDB), so a crash leaves both or neither; on
  BigQuery the load job's id is derived from the same identity (`job_id`), so
  a second load of the file is refused by BigQuery itself. Re-delivery and
  re-runs become no-ops by construction.
* `claims`: files a sensor has asked a run for and that are not applied yet,
  with the run key. Two sensors (S3 events and a listing) looking at the same
  objects claim each file once, and a claim whose run never appeared (the
  daemon died between deciding and launching) is found and asked for again.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pyarrow as pa

    from resources.warehouse import Warehouse

SCHEMA = "platform_ledger"
APPLIED = f"{SCHEMA}.applied_files"
CLAIMS = f"{SCHEMA}.claims"
_CHUNK = 500  # identities per IN (...) list


@dataclass(frozen=True, order=True)
class FileRef:
    """One version of one object: its key and its ETag."""

    key: str
    etag: str

    @property
    def identity(self) -> str:
        return f"{self.key}@{self.etag}"


@dataclass(frozen=True)
class Claim:
    target: str
    identity: str
    object_key: str
    partition_key: str | None
    run_key: str
    sensor: str
    claimed_at: datetime


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_list(values: Iterable[str]) -> str:
    return ", ".join(_literal(v) for v in values)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "constraint" in text or "conflict" in text or "duplicate key" in text


R = TypeVar("R")


def _retry_conflicts(operation: Callable[[], R], attempts: int = 8) -> R:
    """Run operation, again after a short pause when a concurrent writer conflicted with it."""
    for attempt in range(attempts):
        try:
            return operation()
        except Exception as exc:
            if attempt == attempts - 1 or not _is_conflict(exc):
                raise
            time.sleep(0.02 * 2**attempt + random.random() * 0.02)
    raise AssertionError("unreachable")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class FileLedger:
    """The ledger in a warehouse (DuckDB locally, BigQuery in production)."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse

    # --- applied files -------------------------------------------------------
    def applied(self, target: str, refs: Iterable[FileRef]) -> set[str]:
        """The identities among refs that target has already applied."""
        identities = sorted({r.identity for r in refs})
        if not identities or not self.warehouse.table_exists(APPLIED):
            return set()
        found: set[str] = set()
        for chunk in _chunks(identities):
            rows = self.warehouse.query(
                f"SELECT identity FROM {APPLIED} WHERE target = {_literal(target)}"
                f" AND identity IN ({_in_list(chunk)})"
            )
            found |= set(rows.column("identity").to_pylist())
        return found

    def pending(self, target: str, refs: Iterable[FileRef]) -> list[FileRef]:
        """refs that target has not applied yet, in key order."""
        refs = sorted(set(refs))
        done = self.applied(target, refs)
        return [r for r in refs if r.identity not in done]

    def record(
        self,
        target: str,
        refs: Sequence[FileRef],
        *,
        run_id: str | None = None,
        partition_key: str | None = None,
        rows: dict[str, int] | None = None,
        session: Any = None,
    ) -> int:
        """Mark refs applied to target (and release their claims).

        Pass the `session` of `warehouse.transaction()` that made the load, so
        the ledger commits with it. Refs already recorded are skipped, so
        recording twice is harmless. Returns how many rows were added.
        """
        if not refs:
            return 0
        if session is None:
            # The check and the insert in one transaction: two runs recording the same file
            # (concurrent runs of one partition) then see each other's row instead of one
            # failing on the ledger's key between its check and its insert.
            self._ensure_tables()
            with self.warehouse.transaction() as tx:
                return self.record(
                    target, refs, run_id=run_id, partition_key=partition_key, rows=rows, session=tx
                )
        db = session
        fresh = [r for r in sorted(set(refs)) if r.identity not in self._applied_in(db, target, refs)]
        if fresh:
            db.load(APPLIED, self._applied_rows(target, fresh, run_id, partition_key, rows or {}), "append")
        if self._exists(db, CLAIMS):
            for chunk in _chunks([r.identity for r in refs]):
                db.execute(
                    f"DELETE FROM {CLAIMS} WHERE target = {_literal(target)}"
                    f" AND identity IN ({_in_list(chunk)})"
                )
        return len(fresh)

    @staticmethod
    def job_id(target: str, ref: FileRef) -> str:
        """A BigQuery job id for loading ref into target: the same file gives the same id."""
        digest = hashlib.sha256(f"{target}\n{ref.identity}".encode()).hexdigest()[:48]
        return f"dp_ledger_{digest}"

    # --- claims ----------------------------------------------------------------
    def claim(
        self,
        target: str,
        items: Sequence[tuple[FileRef, str | None]],
    ) -> tuple[list[tuple[FileRef, str | None]], dict[str, Claim]]:
        """Of (file, partition key) items, those neither applied nor claimed, and the claims held.

        Returns (unclaimed, existing) where existing maps identity to the claim
        another tick (or sensor) holds. Call `hold` with the run keys to claim
        the unclaimed ones.
        """
        refs = [ref for ref, _ in items]
        done = self.applied(target, refs)
        held = self.claims(target, [r.identity for r in refs if r.identity not in done])
        unclaimed = [
            (ref, part) for ref, part in items if ref.identity not in done and ref.identity not in held
        ]
        return unclaimed, held

    def hold(self, target: str, items: Sequence[tuple[FileRef, str | None, str]], sensor: str) -> list[str]:
        """Claim (file, partition key, run key) items for sensor; returns the identities now held by it.

        An item another sensor claimed in the meantime is left to that sensor.
        """
        if not items:
            return []
        self._ensure_tables()
        return _retry_conflicts(lambda: self._hold(target, items, sensor))

    def _hold(self, target: str, items: Sequence[tuple[FileRef, str | None, str]], sensor: str) -> list[str]:
        import pyarrow as pa

        with self.warehouse.transaction() as db:
            identities = [ref.identity for ref, _, _ in items]
            taken = self._claimed_in(db, target, identities)
            fresh = [(ref, part, key) for ref, part, key in items if ref.identity not in taken]
            if fresh:
                now = _now()
                rows = pa.table(
                    {
                        "target": pa.array([target] * len(fresh), pa.string()),
                        "identity": pa.array([r.identity for r, _, _ in fresh], pa.string()),
                        "object_key": pa.array([r.key for r, _, _ in fresh], pa.string()),
                        "partition_key": pa.array([p for _, p, _ in fresh], pa.string()),
                        "run_key": pa.array([k for _, _, k in fresh], pa.string()),
                        "sensor": pa.array([sensor] * len(fresh), pa.string()),
                        "claimed_at": pa.array([now] * len(fresh), pa.timestamp("us")),
                    }
                )
                db.load(CLAIMS, rows, "append")
        return [ref.identity for ref, _, _ in fresh]

    def claims(self, target: str, identities: Sequence[str]) -> dict[str, Claim]:
        if not identities or not self.warehouse.table_exists(CLAIMS):
            return {}
        found: dict[str, Claim] = {}
        for chunk in _chunks(sorted(set(identities))):
            rows = self.warehouse.query(
                f"SELECT * FROM {CLAIMS} WHERE target = {_literal(target)}"
                f" AND identity IN ({_in_list(chunk)})"
            )
            for row in rows.to_pylist():
                found[row["identity"]] = Claim(**row)
        return found

    def open_claims(self, targets: Sequence[str]) -> list[Claim]:
        """Every claim of these targets not yet applied (for re-requesting lost runs)."""
        if not targets or not self.warehouse.table_exists(CLAIMS):
            return []
        rows = self.warehouse.query(
            f"SELECT * FROM {CLAIMS} WHERE target IN ({_in_list(sorted(set(targets)))})"
            " ORDER BY claimed_at, identity"
        )
        return [Claim(**row) for row in rows.to_pylist()]

    def take_over(self, claims: Sequence[Claim], run_key: str, sensor: str) -> None:
        """Move claims to another run key and sensor (their own run never appeared)."""
        if not claims:
            return
        with self.warehouse.transaction() as db:
            for target in sorted({c.target for c in claims}):
                ids = [c.identity for c in claims if c.target == target]
                for chunk in _chunks(ids):
                    db.execute(
                        f"UPDATE {CLAIMS} SET run_key = {_literal(run_key)}, sensor = {_literal(sensor)},"
                        f" claimed_at = TIMESTAMP '{_now().isoformat(sep=' ')}'"
                        f" WHERE target = {_literal(target)} AND identity IN ({_in_list(chunk)})"
                    )

    # --- helpers ------------------------------------------------------------------
    def _ensure_tables(self) -> None:
        """Create the ledger's tables in a transaction of their own (two writers may race to)."""
        if getattr(self, "_tables_ready", False):
            return

        def create() -> None:
            with self.warehouse.transaction() as db:
                self._create(db)

        _retry_conflicts(create)
        self._tables_ready = True

    def _create(self, db: Any) -> None:
        # DuckDB enforces the key, so two writers racing for one file cannot both commit;
        # BigQuery has no enforced keys (its load job ids do that job there).
        key = ", PRIMARY KEY (target, identity)" if db.dialect == "duckdb" else ""
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {APPLIED} (target VARCHAR, identity VARCHAR, object_key VARCHAR,"
            f" etag VARCHAR, partition_key VARCHAR, run_id VARCHAR, rows BIGINT, applied_at TIMESTAMP{key})"
        )
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {CLAIMS} (target VARCHAR, identity VARCHAR, object_key VARCHAR,"
            f" partition_key VARCHAR, run_key VARCHAR, sensor VARCHAR, claimed_at TIMESTAMP{key})"
        )

    def _exists(self, db: Any, table: str) -> bool:
        if db is self.warehouse:
            return self.warehouse.table_exists(table)
        schema, name = table.split(".")
        rows = db.query(
            "SELECT count(*) AS n FROM information_schema.tables"
            f" WHERE table_schema = {_literal(schema)} AND table_name = {_literal(name)}"
        )
        return bool(rows.column("n")[0].as_py())

    def _applied_in(self, db: Any, target: str, refs: Sequence[FileRef]) -> set[str]:
        self._create(db)
        found: set[str] = set()
        for chunk in _chunks(sorted({r.identity for r in refs})):
            rows = db.query(
                f"SELECT identity FROM {APPLIED} WHERE target = {_literal(target)}"
                f" AND identity IN ({_in_list(chunk)})"
            )
            found |= set(rows.column("identity").to_pylist())
        return found

    def _claimed_in(self, db: Any, target: str, identities: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(sorted(set(identities))):
            rows = db.query(
                f"SELECT identity FROM {CLAIMS} WHERE target = {_literal(target)}"
                f" AND identity IN ({_in_list(chunk)})"
            )
            found |= set(rows.column("identity").to_pylist())
        return found

    @staticmethod
    def _applied_rows(
        target: str,
        refs: Sequence[FileRef],
        run_id: str | None,
        partition_key: str | None,
        rows: dict[str, int],
    ) -> pa.Table:
        import pyarrow as pa

        now = _now()
        n = len(refs)
        return pa.table(
            {
                "target": pa.array([target] * n, pa.string()),
                "identity": pa.array([r.identity for r in refs], pa.string()),
                "object_key": pa.array([r.key for r in refs], pa.string()),
                "etag": pa.array([r.etag for r in refs], pa.string()),
                "partition_key": pa.array([partition_key] * n, pa.string()),
                "run_id": pa.array([run_id] * n, pa.string()),
                "rows": pa.array([rows.get(r.identity) for r in refs], pa.int64()),
                "applied_at": pa.array([now] * n, pa.timestamp("us")),
            }
        )
