"""Where a cluster's capture got to: a JSON object in the lake, next to the cluster's change files.

    landing/cdc/<cluster>/_capture_checkpoint.json   (hidden from listings by the leading '_')

It holds the binlog file and position just after the last transaction whose
changes are all in written files (and MariaDB's GTID of that transaction). It
is written only after every file of a flush is, so a capture killed at any
moment resumes at or before its last written change: a change may be written
twice (with the same AR_H_CHANGE_SEQ), never lost.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from resources.lake.paths import dms_prefix
from resources.lake.storage import LakeStorage

CHECKPOINT_NAME = "_capture_checkpoint.json"


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    cluster: str
    log_file: str
    log_pos: int
    gtid: str | None = None  # MariaDB domain-server-sequence of the last included transaction
    saved_at: str = ""  # ISO time (UTC) of the save

    @property
    def position(self) -> str:
        return f"{self.log_file}:{self.log_pos}"


def checkpoint_key(cluster: str) -> str:
    return dms_prefix(cluster) + CHECKPOINT_NAME


def load_checkpoint(lake: LakeStorage, cluster: str) -> Checkpoint | None:
    key = checkpoint_key(cluster)
    if not lake.exists(key):
        return None
    raw = lake.get_bytes(key)
    try:
        data = json.loads(raw)
        return Checkpoint(
            cluster=str(data["cluster"]),
            log_file=str(data["log_file"]),
            log_pos=int(data["log_pos"]),
            gtid=data.get("gtid"),
            saved_at=str(data.get("saved_at", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{lake.uri(key)} is not a capture checkpoint ({exc}); fix or delete it (deleting it restarts"
            " the capture at the server's current position: run a full load after)"
        ) from None


def save_checkpoint(lake: LakeStorage, checkpoint: Checkpoint) -> Checkpoint:
    stamped = Checkpoint(
        checkpoint.cluster,
        checkpoint.log_file,
        checkpoint.log_pos,
        checkpoint.gtid,
        datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    lake.put_bytes(checkpoint_key(checkpoint.cluster), json.dumps(asdict(stamped), indent=1).encode())
    return stamped
