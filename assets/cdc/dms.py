"""The AWS DMS S3-target file format, as the capture writes it and the loader reads it.

Layout (bucket folder `landing/cdc/<cluster>`, DatePartitionEnabled with the
default YYYYMMDD sequence and '/' delimiter; paths are built by
resources.lake.paths.dms_object_key):

    landing/cdc/<cluster>/<schema>/<table>/<YYYY>/<MM>/<DD>/20261124-1034010000.parquet   CDC
    landing/cdc/<cluster>/<schema>/<table>/<YYYY>/<MM>/<DD>/LOAD0000000A.parquet          full load

Columns of a CDC file: `Op` first (I, U or D), the commit time in
`TIMESTAMP_COLUMN` (DMS's TimestampColumnName), then every column of the row
(the after image; the before image for D). Our capture also writes
`CHANGE_SEQ`, DMS's AR_H_CHANGE_SEQ header, as the binlog coordinates of the
change: files written by a real DMS task may lack it, and the loader then
orders their rows by (file name, row index), as DMS itself does.

A full-load file has no `Op` unless IncludeOpForFullLoad; ours writes
Op = 'I' and the snapshot's coordinates in CHANGE_SEQ (the same value on
every row of one load), and key-value metadata LOAD_METADATA_* in the Parquet
footer saying which load it belongs to and, on the last file, how many parts
the load has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

OP_COLUMN = "Op"
TIMESTAMP_COLUMN = "dms_commit_ts"  # TimestampColumnName; timestamp[us, UTC]
CHANGE_SEQ_COLUMN = "AR_H_CHANGE_SEQ"  # 35-digit string, see change_seq()
CONTROL_COLUMNS = (OP_COLUMN, TIMESTAMP_COLUMN, CHANGE_SEQ_COLUMN)
OPS = ("I", "U", "D")

# Parquet footer metadata of full-load files (bytes keys and values).
LOAD_ID_METADATA = b"dp.load_id"  # the snapshot's CHANGE_SEQ
LOAD_PART_METADATA = b"dp.load_part"  # 1-based part number
LOAD_PARTS_METADATA = b"dp.load_parts"  # total parts: only on the last part

_CDC_NAME = re.compile(r"^(\d{8})-(\d{10})\.parquet$")
_LOAD_NAME = re.compile(r"^LOAD([0-9A-F]{8})\.parquet$")
SEQ_DIGITS = (10, 20, 5)


def change_seq(log_number: int, log_pos: int, row_index: int) -> str:
    """A change's place in the binlog as a fixed-width string: sorts as the binlog does.

    log_number is the binlog file's sequence number (mysql-bin.000042 -> 42),
    log_pos the position of the rows event, row_index the row within the event.
    """
    if not (0 <= log_number < 10**10 and 0 <= log_pos < 10**20 and 0 <= row_index < 10**5):
        raise ValueError(f"binlog coordinates out of range: {log_number}, {log_pos}, {row_index}")
    return f"{log_number:010d}{log_pos:020d}{row_index:05d}"


def parse_change_seq(seq: str) -> tuple[int, int, int]:
    if len(seq) != sum(SEQ_DIGITS) or not seq.isdigit():
        raise ValueError(f"{CHANGE_SEQ_COLUMN} {seq!r} is not {sum(SEQ_DIGITS)} digits")
    return int(seq[:10]), int(seq[10:30]), int(seq[30:])


def binlog_number(log_file: str) -> int:
    """mysql-bin.000042 -> 42."""
    suffix = log_file.rsplit(".", 1)[-1]
    if not suffix.isdigit():
        raise ValueError(f"binlog file name {log_file!r} does not end in a number")
    return int(suffix)


def cdc_file_name(at: datetime) -> str:
    """DMS's CDC file name for a flush at `at` (UTC): YYYYMMDD-HHMMSS plus 1/10000 s."""
    at = at.astimezone(UTC)
    return f"{at:%Y%m%d-%H%M%S}{at.microsecond // 100:04d}.parquet"


def load_file_name(counter: int) -> str:
    """DMS's full-load file name: LOAD00000001.parquet, a hexadecimal counter."""
    return f"LOAD{counter:08X}.parquet"


@dataclass(frozen=True)
class DmsFileName:
    kind: str  # "cdc" or "load"
    sort_key: str  # orders the files of one table as they were written

    @property
    def is_load(self) -> bool:
        return self.kind == "load"


def parse_file_name(name: str) -> DmsFileName:
    """Raise ValueError for a name DMS would not write."""
    if m := _CDC_NAME.match(name):
        return DmsFileName("cdc", f"{m.group(1)}-{m.group(2)}")
    if m := _LOAD_NAME.match(name):
        return DmsFileName("load", m.group(1))
    raise ValueError(
        f"{name!r} is neither a DMS CDC file (YYYYMMDD-HHMMSSffff.parquet) nor a full-load file"
        " (LOADxxxxxxxx.parquet)"
    )
