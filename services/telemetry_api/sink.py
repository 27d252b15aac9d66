"""Where accepted readings go: a local write-ahead log with Firehose-style buffering, or Kinesis.

LocalSink
    Every request is one JSON line appended to the current WAL segment
    (`<wal_dir>/wal-<n>.jsonl`); a writer thread group-commits the lines of all waiting requests
    with one write and one fsync, and only then are the requests answered. The readings are
    also buffered in memory per EVENT hour. The current segment is sealed when one hour's
    buffer reaches `buffer_bytes` (default 1 MB) or the segment's oldest reading waited
    `buffer_seconds` (default 60 s), and at shutdown; a sealed segment's readings are written as
    one Parquet file per event hour, `raw/telemetry/readings/.../hour=HH/part-<n>.parquet`
    (the name comes from the segment, so writing it again overwrites), and the segment file is
    deleted only after all its files are written. On start, segments left by a crash are
    replayed the same way, before any request is served.

KinesisSink
    `put_records` to the stream, one record a reading (partition key: the device), retrying the
    records a partial failure names; answered after Kinesis accepted every record.
    `KinesisConsumer` reads every shard and feeds the records into a LocalSink (its own WAL), then
    checkpoints the shard's sequence number in the lake, so the raw files are the same.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from resources.lake import LakePartition, LakeStorage, Tier, object_key

log = logging.getLogger(__name__)

DOMAIN = "telemetry"
DATASET = "readings"
HOUR = timedelta(hours=1)

RAW_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("temperature", pa.float64()),
        ("humidity", pa.float64()),
        ("pressure", pa.float64()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("metadata_version", pa.string()),
        ("metadata_source", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("batch_id", pa.string()),
    ]
)


class SinkUnavailable(Exception):
    """The readings could not be made durable (the answer is 503; nothing was acknowledged)."""


class CommitListener(Protocol):
    """Told of every request's readings once they are durable (and of a replay's, before serving);
    services/telemetry_alerts.feed.AlertFeed is one. `committed` must only queue: it runs on the
    WAL writer thread."""

    def start(self) -> None: ...
    def committed(self, readings: list[dict[str, Any]], received_at: datetime) -> None: ...
    def close(self) -> None: ...


class Sink(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...
    async def write(self, readings: list[dict[str, Any]], batch_id: str, received_at: datetime) -> None: ...
    def health(self) -> tuple[bool, str]: ...


# --- rows and files ---------------------------------------------------------------
def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)  # RFC 3339 "Z" included (Python 3.11)
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def event_hour(reading: dict[str, Any]) -> datetime:
    ts = _parse_time(reading["timestamp"])
    return ts.replace(minute=0, second=0, microsecond=0)


def raw_row(reading: dict[str, Any], batch_id: str, received_at: str) -> dict[str, Any]:
    location = reading.get("location") or {}
    metadata = reading.get("metadata") or {}

    def num(name: str) -> float | None:
        value = reading.get(name)
        return None if value is None else float(value)

    return {
        "device_id": reading["device_id"],
        "timestamp": _parse_time(reading["timestamp"]),
        "temperature": num("temperature"),
        "humidity": num("humidity"),
        "pressure": num("pressure"),
        "latitude": None if location.get("latitude") is None else float(location["latitude"]),
        "longitude": None if location.get("longitude") is None else float(location["longitude"]),
        "metadata_version": metadata.get("version"),
        "metadata_source": metadata.get("source"),
        "received_at": _parse_time(received_at),
        "batch_id": batch_id,
    }


def raw_key(hour: datetime, filename: str) -> str:
    return object_key(Tier.RAW, DOMAIN, DATASET, filename, LakePartition.for_window(hour, HOUR))


_RAW_COLUMNS = tuple(RAW_SCHEMA.names)
_RAW_TYPES = tuple(f.type for f in RAW_SCHEMA)
_RAW_WIDTH = len(_RAW_COLUMNS)


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """A raw Parquet file of raw_row dicts."""
    return parquet_bytes_from_tuples([tuple(row[name] for name in _RAW_COLUMNS) for row in rows])


def parquet_bytes_from_tuples(rows: list[tuple[Any, ...]]) -> bytes:
    """A raw Parquet file of rows given as tuples in RAW_SCHEMA's column order, built column by
    column (pyarrow's C converters: no per-row dicts)."""
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [()] * _RAW_WIDTH
    arrays = [pa.array(col, type=typ) for col, typ in zip(columns, _RAW_TYPES, strict=True)]
    table = pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy")
    return out.getvalue()


# --- the local sink: WAL + buffers ---------------------------------------------------------
# a queued request: its WAL line, readings, raw rows by event hour, received_at, and its future
_Request = tuple[bytes, list[dict[str, Any]], dict[datetime, list[tuple[Any, ...]]], datetime, Future[None]]


@dataclass
class _Segment:
    number: int
    path: Path
    first_record: float | None = None
    rows: dict[datetime, list[tuple[Any, ...]]] = field(default_factory=dict)  # RAW_SCHEMA order
    sizes: dict[datetime, int] = field(default_factory=dict)


def _segment_name(number: int) -> str:
    return f"wal-{number:010d}.jsonl"


def _file_name(number: int) -> str:
    return f"part-{number:010d}.parquet"


class LocalSink:
    """WAL then 200; buffered per event hour; Parquet to the raw tier at 1 MB / 60 s / shutdown."""

    def __init__(
        self,
        lake: LakeStorage,
        wal_dir: Path,
        buffer_bytes: int = 1_000_000,
        buffer_seconds: float = 60.0,
        file_prefix: str = "",
        listener: CommitListener | None = None,
    ):
        self.lake = lake
        self.listener = listener
        self.wal_dir = Path(wal_dir)
        self.buffer_bytes = buffer_bytes
        self.buffer_seconds = buffer_seconds
        self.file_prefix = file_prefix
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._sealed: queue.Queue[_Segment | None] = queue.Queue()
        self._segment: _Segment | None = None
        self._fh: Any = None
        self._writer: threading.Thread | None = None
        self._flusher: threading.Thread | None = None
        self._error: str | None = None
        self._flush_error: str | None = None
        self._closed = False
        self._users = 0

    # lifecycle
    def start(self) -> None:
        """Replay what a crash left, then run. Nested starts (an app started twice) share one run."""
        self._users += 1
        if self._users > 1:
            return
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        if self.listener is not None:
            self.listener.start()  # before the replay, which it is told of
        numbers = sorted(int(p.name[4:14]) for p in self.wal_dir.glob("wal-*.jsonl"))
        for number in numbers:  # a crash left these: their files are written again (same names)
            self._flush_segment(self._read_segment(number), retry=False)
        self._open_segment((numbers[-1] + 1) if numbers else 1)
        self._writer = threading.Thread(target=self._write_loop, name="telemetry-wal", daemon=True)
        self._flusher = threading.Thread(target=self._flush_loop, name="telemetry-flush", daemon=True)
        self._writer.start()
        self._flusher.start()

    def close(self) -> None:
        """Seal and flush everything buffered; the last of nested starts closes."""
        self._users -= 1
        if self._users > 0 or self._closed or self._writer is None or self._flusher is None:
            return
        self._closed = True
        self._requests.put(None)
        self._writer.join()
        self._flusher.join()
        if self.listener is not None:
            self.listener.close()

    def health(self) -> tuple[bool, str]:
        if self._error:
            return False, f"write-ahead log failed: {self._error}"
        if not os.access(self.wal_dir, os.W_OK):
            return False, f"write-ahead log directory {self.wal_dir} is not writable"
        if self._flush_error:
            return True, f"WAL writable; raw files are retried after: {self._flush_error}"
        return True, f"WAL {self.wal_dir} writable"

    async def write(self, readings: list[dict[str, Any]], batch_id: str, received_at: datetime) -> None:
        await asyncio.wrap_future(self.write_future(readings, batch_id, received_at))

    def write_future(
        self, readings: list[dict[str, Any]], batch_id: str, received_at: datetime
    ) -> Future[None]:
        """Queue the request for the next group commit; the future is done once it is fsynced."""
        fut: Future[None] = Future()
        if self._closed:
            fut.set_exception(SinkUnavailable("the sink is shutting down"))
            return fut
        received = received_at.astimezone(UTC)
        stamp = received.isoformat()
        record = {"batch_id": batch_id, "received_at": stamp, "readings": readings}
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        self._requests.put((line, readings, _rows(readings, batch_id, received), received, fut))
        return fut

    # --- the WAL writer (one thread) ---
    def _open_segment(self, number: int) -> None:
        path = self.wal_dir / _segment_name(number)
        self._fh = open(path, "ab")  # noqa: SIM115 - held open for appends
        self._segment = _Segment(number, path)
        _fsync_dir(self.wal_dir)

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Request] = []
            try:
                item = self._requests.get(timeout=min(1.0, max(self.buffer_seconds / 4, 0.05)))
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            except queue.Empty:
                pass
            while not stopping:
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            if batch:
                self._commit(batch)
            segment = self._segment
            if segment is not None and segment.first_record is not None:
                full = any(size >= self.buffer_bytes for size in segment.sizes.values())
                old = time.monotonic() - segment.first_record >= self.buffer_seconds
                if full or old or stopping:
                    self._seal()
        if self._fh is not None:
            self._fh.close()
            if self._segment is not None and self._segment.first_record is None:
                self._segment.path.unlink(missing_ok=True)
        self._sealed.put(None)

    def _commit(self, batch: list[_Request]) -> None:
        assert self._segment is not None
        try:
            self._fh.write(b"".join(item[0] for item in batch))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.error("telemetry WAL append failed: %s", self._error)
            for *_, fut in batch:
                fut.set_exception(SinkUnavailable(f"write-ahead log append failed: {exc}"))
            return
        self._error = None
        segment = self._segment
        seg_rows, sizes = segment.rows, segment.sizes
        for line, readings, rows, _, fut in batch:
            if segment.first_record is None:
                segment.first_record = time.monotonic()
            per_row = max(len(line) // max(len(readings), 1), 1)
            for hour, hour_rows in rows.items():
                held = seg_rows.get(hour)
                if held is None:
                    seg_rows[hour] = hour_rows
                else:
                    held.extend(hour_rows)
                sizes[hour] = sizes.get(hour, 0) + per_row * len(hour_rows)
            fut.set_result(None)
        self._tell([item[1] for item in batch], [item[3] for item in batch])

    def _tell(self, readings: list[list[dict[str, Any]]], received: list[datetime | None]) -> None:
        """The listener hears of durable readings after the requests were answered; its failure
        never reaches a request."""
        if self.listener is None:
            return
        try:
            for group, received_at in zip(readings, received, strict=True):
                if group and received_at is not None:
                    self.listener.committed(group, received_at)
        except Exception:
            log.exception("telemetry commit listener failed (the readings are accepted)")

    def _seal(self) -> None:
        assert self._segment is not None
        self._fh.close()
        sealed = self._segment
        self._open_segment(sealed.number + 1)
        self._sealed.put(sealed)

    # --- the flusher (one thread) ---
    def _flush_loop(self) -> None:
        while True:
            segment = self._sealed.get()
            if segment is None:
                return
            self._flush_segment(segment, retry=True)

    def _flush_segment(self, segment: _Segment, retry: bool) -> None:
        delay = 0.5
        while True:
            try:
                for hour, rows in sorted(segment.rows.items()):
                    key = raw_key(hour, self.file_prefix + _file_name(segment.number))
                    self.lake.put_bytes(key, parquet_bytes_from_tuples(rows))
                segment.path.unlink(missing_ok=True)  # every reading of it is in a written file
                self._flush_error = None
                return
            except Exception as exc:
                self._flush_error = f"{type(exc).__name__}: {exc}"
                log.error("telemetry raw flush of %s failed (kept, retried): %s", segment.path.name, exc)
                if not retry:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _read_segment(self, number: int) -> _Segment:
        segment = _Segment(number, self.wal_dir / _segment_name(number))
        with open(segment.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a torn last append: never fsynced, so never acknowledged
                record = json.loads(line)
                received = _parse_time(record["received_at"])
                for hour, rows in _rows(record["readings"], record["batch_id"], received).items():
                    segment.rows.setdefault(hour, []).extend(rows)
                self._tell([record["readings"]], [received])
        return segment


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _rows(
    readings: Iterable[dict[str, Any]], batch_id: str, received_at: datetime
) -> dict[datetime, list[tuple[Any, ...]]]:
    """The raw rows of one request (as raw_row, as tuples in RAW_SCHEMA order) by event hour;
    each timestamp parsed once."""
    out: dict[datetime, list[tuple[Any, ...]]] = {}
    for reading in readings:
        ts = _parse_time(reading["timestamp"])
        location = reading.get("location") or {}
        metadata = reading.get("metadata") or {}
        row = (
            reading["device_id"],
            ts,
            _float(reading.get("temperature")),
            _float(reading.get("humidity")),
            _float(reading.get("pressure")),
            _float(location.get("latitude")),
            _float(location.get("longitude")),
            metadata.get("version"),
            metadata.get("source"),
            received_at,
            batch_id,
        )
        hour = ts.replace(minute=0, second=0, microsecond=0)
        held = out.get(hour)
        if held is None:
            out[hour] = [row]
        else:
            held.append(row)
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_batch_ids: tuple[int, str, Iterator[int]] | None = None


def new_batch_id() -> str:
    """32 hex digits, unique: a random prefix per process (drawn again after a fork) and a counter
    (one uuid4, i.e. os.urandom, per process instead of per request)."""
    global _batch_ids
    state = _batch_ids
    pid = os.getpid()
    if state is None or state[0] != pid:
        state = _batch_ids = (pid, uuid.uuid4().hex[:16], itertools.count())
    return f"{state[1]}{next(state[2]):016x}"


def build_sink() -> tuple[Any, str]:
    """The sink the settings choose, with the profile's lake."""
    from resources import settings
    from resources.profiles import PROFILES

    kind = settings.telemetry_sink()
    resources = PROFILES[settings.profile_name()]()
    if kind == "kinesis":
        return KinesisSink(resources["aws"], settings.telemetry_stream_name()), "kinesis"
    if kind != "local":
        raise ValueError(f"PLATFORM_TELEMETRY_SINK={kind!r}: expected local or kinesis")
    lake = resources["lake"]
    sink = LocalSink(
        lake,
        settings.telemetry_wal_dir(),
        buffer_bytes=settings.telemetry_buffer_bytes(),
        buffer_seconds=settings.telemetry_buffer_seconds(),
        listener=_alert_feed(resources["aws"]),
    )
    return sink, "local"


def _alert_feed(aws: Any) -> CommitListener | None:
    """The anomaly alert feed the settings choose (services/telemetry_alerts), or None when off."""
    from services.telemetry_alerts.feed import AlertFeed
    from services.telemetry_alerts.sinks import build_alert_sink

    alert_sink = build_alert_sink(aws)
    return None if alert_sink is None else AlertFeed(alert_sink)


def build_consumer() -> KinesisConsumer:
    """`dp telemetry-consumer`: the stream into a LocalSink (its WAL and buffers) and the lake."""
    from resources import settings
    from resources.profiles import PROFILES

    resources = PROFILES[settings.profile_name()]()
    sink = LocalSink(
        resources["lake"],
        settings.telemetry_wal_dir(),
        buffer_bytes=settings.telemetry_buffer_bytes(),
        buffer_seconds=settings.telemetry_buffer_seconds(),
        listener=_alert_feed(resources["aws"]),  # the stream is sharded by device: its state is here
    )
    return KinesisConsumer(resources["aws"], settings.telemetry_stream_name(), sink, resources["lake"])


# --- the aws sink: Kinesis, and its consumer -------------------------------------------------
class KinesisSink:
    """put_records, one record a reading; the 200 only after Kinesis accepted every record."""

    def __init__(self, aws: Any, stream: str, attempts: int = 6):
        self.aws, self.stream, self.attempts = aws, stream, attempts

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def health(self) -> tuple[bool, str]:
        try:
            summary = self.aws.client("kinesis").describe_stream_summary(StreamName=self.stream)
        except Exception as exc:
            return False, f"Kinesis stream {self.stream}: {type(exc).__name__}"
        status = summary["StreamDescriptionSummary"]["StreamStatus"]
        ok = status in ("ACTIVE", "UPDATING")
        return ok, f"Kinesis stream {self.stream} is {status}"

    async def write(self, readings: list[dict[str, Any]], batch_id: str, received_at: datetime) -> None:
        await asyncio.to_thread(self.put, readings, batch_id, received_at)

    def put(self, readings: list[dict[str, Any]], batch_id: str, received_at: datetime) -> None:
        stamp = received_at.astimezone(UTC).isoformat()
        pending = [
            {
                "Data": json.dumps({"batch_id": batch_id, "received_at": stamp, "reading": r}).encode(),
                "PartitionKey": r["device_id"],
            }
            for r in readings
        ]
        client = self.aws.client("kinesis")
        delay = 0.1
        for attempt in range(self.attempts):
            try:
                response = client.put_records(StreamName=self.stream, Records=pending)
            except Exception as exc:
                if attempt == self.attempts - 1:
                    raise SinkUnavailable(f"Kinesis put_records failed: {type(exc).__name__}") from exc
            else:
                # a partial failure: only the records Kinesis names are sent again
                pending = [
                    rec for rec, res in zip(pending, response["Records"], strict=True) if res.get("ErrorCode")
                ]
                if not pending:
                    return
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise SinkUnavailable(f"Kinesis refused {len(pending)} records after {self.attempts} attempts")


class KinesisConsumer:
    """Reads every shard into a LocalSink; a shard's sequence number is checkpointed in the lake
    after the records up to it are in the sink's WAL (a crash in between replays them: at least once)."""

    def __init__(self, aws: Any, stream: str, sink: LocalSink, lake: LakeStorage, limit: int = 1000):
        self.aws, self.stream, self.sink, self.lake, self.limit = aws, stream, sink, lake, limit
        self.checkpoint_key = object_key(Tier.RAW, DOMAIN, "kinesis_checkpoints", f"{stream}.json")

    def checkpoints(self) -> dict[str, str]:
        if not self.lake.exists(self.checkpoint_key):
            return {}
        data: dict[str, str] = json.loads(self.lake.get_bytes(self.checkpoint_key))
        return data

    def poll(self) -> int:
        """Read every shard to its end once; the number of readings taken."""
        client = self.aws.client("kinesis")
        checkpoints = self.checkpoints()
        taken = 0
        shards = client.list_shards(StreamName=self.stream)["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            start: dict[str, str] = {"ShardIteratorType": "TRIM_HORIZON"}
            if shard_id in checkpoints:
                start = {
                    "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                    "StartingSequenceNumber": checkpoints[shard_id],
                }
            it = client.get_shard_iterator(StreamName=self.stream, ShardId=shard_id, **start)
            iterator = it["ShardIterator"]
            while iterator:
                response = client.get_records(ShardIterator=iterator, Limit=self.limit)
                records = response["Records"]
                if not records:
                    break
                futures = []
                for record in records:
                    item = json.loads(record["Data"])
                    received = _parse_time(item["received_at"])
                    futures.append(self.sink.write_future([item["reading"]], item["batch_id"], received))
                for fut in futures:
                    fut.result()
                taken += len(records)
                checkpoints[shard_id] = records[-1]["SequenceNumber"]
                self.lake.put_bytes(self.checkpoint_key, json.dumps(checkpoints).encode())
                iterator = response.get("NextShardIterator")
        return taken

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        self.sink.start()
        try:
            while not stop.is_set():
                if self.poll() == 0:
                    stop.wait(interval)
        finally:
            self.sink.close()
