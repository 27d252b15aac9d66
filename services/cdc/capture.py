"""The binlog capture: MySQL/MariaDB row events -> AWS DMS-format change files in the lake.

One reader (a replica connection, `server_id` from the mapping's cluster) per
cluster, each in its own thread. Row changes of mapped tables are converted
(assets.cdc.types) and buffered per table; rows of the open transaction stay
pending until its commit (XidEvent, or a COMMIT/DDL query event). At a
transaction boundary, when a table's committed buffer reaches flush_rows or
about flush_bytes, or flush_seconds after its first committed change, or when
the server's heartbeat says the binlog has gone quiet (a batch no longer grows:
waiting longer would only add latency), every non-empty buffer of the cluster
is written (one Parquet file per table), and only then is the checkpoint
(binlog file and position of that boundary) saved.

Restart after a crash resumes at the checkpoint: changes after it are read
again and may be written a second time, with the same AR_H_CHANGE_SEQ (binlog
file number, the rows event's end position, the row's index in the event);
the loader drops duplicates by that column. Nothing is lost.

On stop (SIGTERM, SIGINT, --stop-after) the open transaction's rows are
dropped (they are re-read after the restart, as they would be after a crash),
the committed ones written, the checkpoint saved, and the process exits 0.

    python -m services.cdc.capture [--cluster NAME ...] [--mapping DIR] [--stop-after S]
                                   [--until FILE:POS] [--progress]
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from assets.cdc import dms
from assets.cdc.checkpoint import Checkpoint, checkpoint_key, load_checkpoint, save_checkpoint
from assets.cdc.mapping import CdcMapping, CdcTable, load_mapping
from resources.lake.paths import dms_object_key
from resources.lake.storage import LakeStorage
from services.cdc.source import CdcSourceError, connect, connection_settings, table_conversions
from services.cdc.writer import ChangeBatch, FileNamer, TableBuffer, encode_parquet

log = logging.getLogger("services.cdc.capture")

HEARTBEAT_SECONDS = 0.5  # the server's heartbeat while idle: how often an idle reader looks at its timers
IDLE_CHECKPOINT_SECONDS = 10.0  # advance the checkpoint past unmapped traffic at most this often
PROGRESS_SECONDS = 5.0
WRITE_QUEUE = 1  # flushes waiting for the writer thread beyond the one it writes: then the reader waits
_AFTER = itemgetter("after_values")
_VALUES = itemgetter("values")


class CaptureError(RuntimeError):
    pass


@dataclass
class _Flush:
    """What one flush writes (a file per table), then the checkpoint it allows."""

    files: list[tuple[CdcTable, ChangeBatch]]
    boundary: tuple[str, int]
    gtid: str | None
    reason: str


class _FileWriter:
    """The thread that converts, encodes and stores a cluster's flushes, in order, while the reader reads.

    Each flush's files are all stored before its checkpoint is saved; a failure stops the writing (no later
    file or checkpoint) and is raised to the reader at its next flush or event.
    """

    def __init__(self, capture: ClusterCapture) -> None:
        self.capture = capture
        self.error: BaseException | None = None
        self._queue: queue.Queue[_Flush | None] = queue.Queue(maxsize=WRITE_QUEUE)
        self._thread = threading.Thread(
            target=self._run, name=f"cdc-writer-{capture.cluster.name}", daemon=True
        )
        self._thread.start()

    def submit(self, flush: _Flush) -> None:
        self.check()
        self._queue.put(flush)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Write what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            flush = self._queue.get()
            if flush is None:
                return
            if self.error is not None:
                continue  # after a failure nothing more is written, no checkpoint saved
            try:
                self.capture._write(flush)
            except BaseException as exc:
                log.error("cdc capture %s: writing failed: %s", self.capture.cluster.name, exc)
                self.error = exc


@dataclass
class _TableState:
    table: CdcTable
    buffer: TableBuffer
    signature: tuple = ()  # the last TableMapEvent's column names and types
    # The last TableMapEvent's table id: the server gives a table a new id when its definition
    # changes (a new table share), so an event with the same id needs no signature (a table map
    # comes before every rows event: building the signature each time cost ~10% of the capture).
    table_id: int | None = None


def _signature(columns: list[Any]) -> tuple:
    """Names and binlog types of a TableMapEvent's columns: a retyped column changes it too."""
    return tuple(
        (str(c.name).lower(), c.type, getattr(c, "precision", None), getattr(c, "decimals", None),
         getattr(c, "unsigned", None), getattr(c, "max_length", None))
        for c in columns
    )  # fmt: skip


def run_capture(
    mapping: CdcMapping,
    lake: LakeStorage,
    clusters: list[str] | None = None,
    *,
    stop: threading.Event | None = None,
    stop_after_seconds: float | None = None,
    until: tuple[str, int] | None = None,
    progress: bool = False,
) -> int:
    """Capture the clusters' binlogs until `stop` is set or the time is up; return the changes written.

    `until` (binlog file, position; one cluster only, positions are per server): stop once the saved
    checkpoint has reached it, i.e. everything before it is in files (`stop` is set then).

    An error in one cluster's reader stops the others (they write what they
    hold and save their checkpoints) and is raised.
    """
    names = list(clusters) if clusters else sorted(mapping.clusters)
    unknown = [n for n in names if n not in mapping.clusters]
    if unknown:
        raise CaptureError(f"clusters {unknown} are not in the mapping (known: {sorted(mapping.clusters)})")
    if until is not None and len(names) != 1:
        raise CaptureError(f"until {until} is a position of one server: name one cluster, not {names}")
    stop = stop or threading.Event()
    deadline = None if stop_after_seconds is None else time.monotonic() + stop_after_seconds
    readers = []
    for name in names:
        if not mapping.for_cluster(name):
            log.info("cdc capture %s: no enabled tables in the mapping; not reading its binlog", name)
            continue
        readers.append(ClusterCapture(mapping, name, lake, stop, deadline, progress, until))
    if not readers:
        return 0
    threads = [
        threading.Thread(target=r.run_guarded, name=f"cdc-capture-{r.cluster.name}", daemon=True)
        for r in readers
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
            if any(r.error is not None for r in readers):
                stop.set()
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
    errors = [r.error for r in readers if r.error is not None]
    if errors:
        raise errors[0]
    return sum(r.written for r in readers)


class ClusterCapture:
    """One cluster's binlog reader and its buffers."""

    def __init__(
        self,
        mapping: CdcMapping,
        cluster: str,
        lake: LakeStorage,
        stop: threading.Event,
        deadline: float | None,
        progress: bool = False,
        until: tuple[str, int] | None = None,
    ) -> None:
        self.mapping = mapping
        self.cluster = mapping.clusters[cluster]
        self.tables = mapping.for_cluster(cluster)
        self.lake = lake
        self.stop = stop
        self.deadline = deadline
        self.progress = progress
        self.defaults = mapping.defaults
        self.until = None if until is None else (dms.binlog_number(until[0]), until[1])
        # Only the stores run in parallel (an S3 PUT is a round trip); the files are encoded one by one
        # on the writer thread, so encoding takes at most one core from the reader.
        self._uploads = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"cdc-upload-{cluster}")
        self.written = 0
        self.error: BaseException | None = None
        self.namer = FileNamer()
        self.states: dict[tuple[str, str], _TableState] = {}
        self.ctl: Any = None
        # the last transaction boundary read: (binlog file, position after it), its GTID
        self.boundary: tuple[str, int] = ("", 0)
        self.boundary_gtid: str | None = None
        self.saved: tuple[str, int] = ("", 0)
        self.saved_at = 0.0
        self.in_txn = False
        self.gtid: str | None = None
        self.writer: _FileWriter | None = None
        self._seq_file = ""
        self._seq_number = 0

    # --- lifecycle ----------------------------------------------------------------------
    def run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by run_capture, which stops the other clusters
            log.error("cdc capture %s: %s", self.cluster.name, exc)
            self.error = exc

    def run(self) -> int:
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import (
            DeleteRowsEvent,
            TableMapEvent,
            UpdateRowsEvent,
            WriteRowsEvent,
        )

        self.ctl = connect(self.cluster)
        try:
            self._check_server()
            for t in self.tables:
                names, convs = table_conversions(t, self.ctl)
                if not names:
                    log.warning(
                        "cdc capture %s: %s.%s does not exist (yet); its columns are read when it appears",
                        self.cluster.name,
                        t.database,
                        t.table,
                    )
                self.states[(t.database.lower(), t.table.lower())] = _TableState(
                    t, TableBuffer(t, names, convs)
                )
            start = self._start_position()
            self.boundary = self.saved = (start.log_file, start.log_pos)
            self.boundary_gtid = start.gtid
            self.saved_at = time.monotonic()
            settings = connection_settings(self.cluster)
            stream = BinLogStreamReader(
                connection_settings=settings,
                ctl_connection_settings=dict(settings),
                server_id=self.cluster.server_id,
                resume_stream=True,
                blocking=True,
                log_file=start.log_file,
                log_pos=start.log_pos,
                only_schemas=sorted({t.database for t in self.tables}),
                only_tables=sorted({t.table for t in self.tables}),
                only_events=[
                    RotateEvent,
                    GtidEvent,
                    MariadbGtidEvent,
                    QueryEvent,
                    XidEvent,
                    TableMapEvent,
                    WriteRowsEvent,
                    UpdateRowsEvent,
                    DeleteRowsEvent,
                    HeartbeatLogEvent,
                ],
                # TableMapEvents are decoded every time: a column added at the source must be seen
                freeze_schema=False,
                slave_heartbeat=HEARTBEAT_SECONDS,
            )
            log.info(
                "cdc capture %s: reading %s:%d as replica %d (%d tables)",
                self.cluster.name,
                start.log_file,
                start.log_pos,
                self.cluster.server_id,
                len(self.tables),
            )
            last_progress = time.monotonic()
            writer = self.writer = _FileWriter(self)
            try:
                while not self._should_stop():
                    writer.check()
                    event = stream.fetchone()
                    if event is None:  # the server ended the stream (it only does when not blocking)
                        break
                    if isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                        self._rows(event, stream.log_file)
                    elif isinstance(event, TableMapEvent):
                        self._table_map(event)
                    elif isinstance(event, XidEvent):
                        self._commit(stream.log_file, stream.log_pos, event.timestamp)
                    elif isinstance(event, QueryEvent):
                        query = event.query.strip().upper() if isinstance(event.query, str) else ""
                        if query == "BEGIN" or query.startswith("XA "):
                            self.in_txn = True
                        else:  # COMMIT of a non-transactional engine, or a DDL (its own transaction)
                            self._commit(stream.log_file, stream.log_pos, event.timestamp)
                    elif isinstance(event, (GtidEvent, MariadbGtidEvent)):
                        self.in_txn = True
                        self.gtid = event.gtid
                    elif isinstance(event, RotateEvent) and not self.in_txn:
                        self.boundary = (event.next_binlog, event.position)
                    if not self.in_txn:
                        self._maybe_flush(idle=isinstance(event, HeartbeatLogEvent))
                    if self.progress and time.monotonic() - last_progress >= PROGRESS_SECONDS:
                        last_progress = time.monotonic()
                        self._report_progress(stream.log_file, stream.log_pos)
                # Stopping: the open transaction is read again after a restart; the rest is written.
                for state in self.states.values():
                    state.buffer.rollback()
                self._flush("stop")
            finally:
                stream.close()
                writer.close()  # what is queued is written (whole flushes, each then its checkpoint)
            writer.check()
            return self.written
        finally:
            self.ctl.close()

    def _should_stop(self) -> bool:
        if self.stop.is_set():
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline

    # --- start ----------------------------------------------------------------------------
    def _check_server(self) -> None:
        with self.ctl.cursor() as cur:
            cur.execute("SELECT @@server_id, @@log_bin, @@binlog_format, @@binlog_row_image")
            server_id, log_bin, fmt, image = cur.fetchone()
            cur.execute("SHOW VARIABLES LIKE 'binlog_row_metadata'")
            row = cur.fetchone()
        metadata = row[1] if row else "(not supported)"
        where = f"cluster {self.cluster.name!r}"
        if not int(log_bin):
            raise CdcSourceError(f"{where}: the binary log is off (log_bin); the capture reads it")
        problems = [
            f"{name}={value} (needs {need})"
            for name, value, need in (
                ("binlog_format", fmt, "ROW"),
                ("binlog_row_image", image, "FULL"),
                ("binlog_row_metadata", metadata, "FULL"),
            )
            if str(value).upper() != need
        ]
        if problems:
            raise CdcSourceError(
                f"{where}: {', '.join(problems)}; column names and full row images come from these settings"
            )
        if int(server_id) == self.cluster.server_id:
            raise CdcSourceError(
                f"{where}: server_id {self.cluster.server_id} in the mapping is the server's own id; give the"
                " capture a replica id no server or replica of this cluster uses"
            )

    def _binary_logs(self) -> list[str]:
        with self.ctl.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            return [str(r[0]) for r in cur.fetchall()]

    def _start_position(self) -> Checkpoint:
        checkpoint = load_checkpoint(self.lake, self.cluster.name)
        if checkpoint is None:
            with self.ctl.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
            if row is None:
                raise CdcSourceError(
                    f"cluster {self.cluster.name!r}: SHOW MASTER STATUS is empty (binlog off?)"
                )
            checkpoint = Checkpoint(self.cluster.name, str(row[0]), int(row[1]))
            log.warning(
                "cdc capture %s: no checkpoint at %s: starting at the server's current position %s"
                " (changes made before are not captured: run a full load for them)",
                self.cluster.name,
                self.lake.uri(checkpoint_key(self.cluster.name)),
                checkpoint.position,
            )
            # Saved before reading: a crash before the first flush resumes here, not at a later "now".
            return save_checkpoint(self.lake, checkpoint)
        logs = self._binary_logs()
        if checkpoint.log_file not in logs:
            oldest = logs[0] if logs else "(none)"
            raise CaptureError(
                f"cluster {self.cluster.name!r}: checkpoint"
                f" {self.lake.uri(checkpoint_key(self.cluster.name))} is at {checkpoint.position}, but that"
                f" binlog is no longer on the server (oldest binlog: {oldest}): changes in between"
                " were purged. Run a full load of the cluster's tables,"
                " then delete the checkpoint to restart the capture at the current position."
            )
        log.info("cdc capture %s: resuming at checkpoint %s", self.cluster.name, checkpoint.position)
        return checkpoint

    # --- events -----------------------------------------------------------------------------
    def _state(self, schema: str, table: str) -> _TableState | None:
        return self.states.get((schema.lower(), table.lower()))

    def _table_map(self, event: Any) -> None:
        state = self._state(event.schema, event.table)
        if state is None or (event.table_id == state.table_id and state.signature):
            return
        state.table_id = event.table_id
        names = [c.name for c in event.columns]
        if any(not n or str(n).startswith("UNKNOWN_COL") for n in names):
            raise CdcSourceError(
                f"cluster {self.cluster.name!r}: {event.schema}.{event.table}: the binlog carries no column"
                " names (binlog_row_metadata must be FULL when the change is written)"
            )
        signature = _signature(list(event.columns))
        if names == state.buffer.names and signature == state.signature:
            return
        first_map = not state.signature
        state.signature = signature
        if names == state.buffer.names and first_map:
            return  # the types read at start are the catalog's current ones
        buffer = state.buffer
        if len(buffer) > buffer.committed:
            raise CaptureError(  # a table's columns cannot change inside a transaction (DDL commits)
                f"cluster {self.cluster.name!r}: {event.schema}.{event.table} changed columns inside a"
                " transaction"
            )
        if buffer.committed:
            self._flush("schema change")  # the buffered rows have the old columns: a file of their own
        self.ctl.ping(reconnect=True)
        new_names, convs = table_conversions(state.table, self.ctl, list(event.columns), strict=False)
        if buffer.names:
            log.info(
                "cdc capture %s: %s.%s columns changed: %s -> %s",
                self.cluster.name,
                event.schema,
                event.table,
                buffer.names,
                new_names,
            )
        state.buffer = TableBuffer(state.table, new_names, convs)

    def _rows(self, event: Any, log_file: str) -> None:
        from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent

        state = self._state(event.schema, event.table)
        if state is None:
            return
        if not state.buffer.names:
            log.warning(
                "cdc capture %s: %s.%s: a change without a known column list is skipped (dropped table?)",
                self.cluster.name,
                event.schema,
                event.table,
            )
            return
        if log_file != self._seq_file:
            self._seq_file, self._seq_number = log_file, dms.binlog_number(log_file)
        rows = event.rows
        # AR_H_CHANGE_SEQ of row i: the binlog file number and the event's end position, then i
        prefix = dms.change_seq(self._seq_number, event.packet.log_pos, 0)[: -dms.SEQ_DIGITS[2]]
        size = max(1, event.event_size // max(1, len(rows)))
        if isinstance(event, UpdateRowsEvent):
            state.buffer.add_rows("U", prefix, list(map(_AFTER, rows)), size)
        else:
            op = "D" if isinstance(event, DeleteRowsEvent) else "I"
            state.buffer.add_rows(op, prefix, list(map(_VALUES, rows)), size)

    def _commit(self, log_file: str, log_pos: int, timestamp: int) -> None:
        at = datetime.fromtimestamp(timestamp, UTC)
        now = time.monotonic()
        for state in self.states.values():
            state.buffer.commit(at, now)
        self.in_txn = False
        self.boundary = (log_file, log_pos)
        self.boundary_gtid = self.gtid

    # --- flushing -----------------------------------------------------------------------
    def _maybe_flush(self, idle: bool = False) -> None:
        d = self.defaults
        now = time.monotonic()
        due = False
        for state in self.states.values():
            b = state.buffer
            if not b.committed:
                continue
            if (
                idle
                or b.committed >= d.flush_rows
                or b.committed_bytes >= d.flush_bytes
                or (b.first_committed_at is not None and now - b.first_committed_at >= d.flush_seconds)
            ):
                due = True
        if due:
            self._flush("idle" if idle else "due")
        elif (
            self.boundary != self.saved
            and now - self.saved_at >= IDLE_CHECKPOINT_SECONDS
            and not any(s.buffer.committed for s in self.states.values())
        ):
            self._save()  # only unmapped traffic since the last save: don't re-read it after a restart

    def _flush(self, reason: str) -> None:
        """Hand every table's committed rows to the writer: it stores them, then the checkpoint."""
        files = [
            (state.table, state.buffer.take()) for state in self.states.values() if state.buffer.committed
        ]
        if not files and self.boundary == self.saved:
            return
        self._submit(_Flush(files, self.boundary, self.boundary_gtid, reason))

    def _save(self) -> None:
        self._submit(_Flush([], self.boundary, self.boundary_gtid, "checkpoint"))

    def _submit(self, flush: _Flush) -> None:
        if self.writer is None:  # not reading (yet): write here
            self._write(flush)
        else:
            self.writer.submit(flush)
        self.saved = flush.boundary
        self.saved_at = time.monotonic()

    def _write(self, flush: _Flush) -> None:
        """Convert and store the flush's files, then save its checkpoint (the writer thread)."""
        tables = [(t, batch.first_commit_day(), batch.to_table()) for t, batch in flush.files]
        # All converted and encoded first: a value that fails writes none of them. The files are
        # stored in parallel (one PUT each on S3, where a round trip, not the bytes, is the cost),
        # and the checkpoint is saved only once every one of them is.
        cluster = self.cluster.name
        files = [
            (
                dms_object_key(cluster, t.database, t.table, day, self.namer.next(t.database, t.table)),
                encode_parquet(table),
            )
            for t, day, table in tables
        ]
        list(self._uploads.map(lambda item: self.lake.put_bytes(*item), files))  # raises the first failure
        save_checkpoint(self.lake, Checkpoint(cluster, flush.boundary[0], flush.boundary[1], flush.gtid))
        if self.until is not None and (dms.binlog_number(flush.boundary[0]), flush.boundary[1]) >= self.until:
            self.stop.set()
        if tables:
            changes = sum(table.num_rows for _, _, table in tables)
            self.written += changes
            log.info(
                "cdc capture %s: %d files, %d changes, position %s:%d (%s)",
                cluster,
                len(tables),
                changes,
                flush.boundary[0],
                flush.boundary[1],
                flush.reason,
            )

    def _report_progress(self, log_file: str, log_pos: int) -> None:
        buffered = sum(len(s.buffer) for s in self.states.values())
        log.info(
            "cdc capture %s: at %s:%d, %d changes written, %d buffered",
            self.cluster.name,
            log_file,
            log_pos,
            self.written,
            buffered,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dp cdc capture", description="Capture MySQL/MariaDB binlogs into DMS-format change files."
    )
    parser.add_argument(
        "--cluster", action="append", help="a cluster of the mapping (repeatable; default: all)"
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=None,
        help="mapping directory (default: $PLATFORM_CDC_MAPPING)",
    )
    parser.add_argument(
        "--stop-after", type=float, default=None, metavar="SECONDS", help="stop after this long"
    )
    parser.add_argument(
        "--until",
        default=None,
        metavar="FILE:POS",
        help="stop once everything before this binlog position is in files (e.g. mysql-bin.000042:1234)",
    )
    parser.add_argument("--progress", action="store_true", help="log the position every few seconds")
    args = parser.parse_args(argv)
    until = None
    if args.until:
        file, _, pos = args.until.rpartition(":")
        if not file or not pos.isdigit():
            parser.error(f"--until {args.until!r}: expected BINLOG_FILE:POSITION, e.g. mysql-bin.000042:1234")
        until = (file, int(pos))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # The binlog library logs its connection parameters at INFO on every start.
    logging.getLogger("pymysqlreplication").setLevel(logging.WARNING)

    from resources.profiles import build_resources

    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("cdc capture: %s: writing what is buffered, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        mapping = load_mapping(args.mapping)
        lake = build_resources()["lake"]
        written = run_capture(
            mapping,
            lake,
            args.cluster,
            stop=stop,
            stop_after_seconds=args.stop_after,
            until=until,
            progress=args.progress,
        )
    except Exception as exc:
        print(f"dp cdc capture: {exc}", file=sys.stderr)
        return 1
    print(f"dp cdc capture: {written} changes written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
