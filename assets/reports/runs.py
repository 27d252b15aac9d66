"""Render runs: how the sensors group snapshots into runs of report_snapshot.

A run's process start (about 5 s on two cores: a new interpreter importing the code location) costs
more than a warm render (0.1-0.3 s), so a burst of requests is split into a few runs of up to
`PLATFORM_SNAPSHOT_BATCH_SIZE` snapshots each, not one run per snapshot. A run is for the
partition of its first snapshot and names the others in its config; it materializes each
partition it renders. Every snapshot of a run is tagged, so the sweep can tell that a snapshot
still has a run queued or in progress.
"""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from assets.reports.partitions import DOMAIN, SNAPSHOT

SNAPSHOT_TAG_PREFIX = "snapshot/"
TAG_SECTION_CHARS = 63  # Dagster's limit for each section of a tag key
SNAPSHOT_TAG_VALUE = "render"
OP_NAME = SNAPSHOT.to_python_identifier()


class SnapshotBatch(dg.Config):
    """The snapshots a run renders besides its own partition (the sensors fill this in)."""

    snapshots: list[str] = []


@dataclass(frozen=True)
class Planned:
    """A snapshot to put in a run, and what makes its run key unique (attempts, earlier runs)."""

    snapshot_id: str
    report_id: str
    key: str


def snapshot_tag(snapshot_id: str) -> str:
    """`snapshot/<id>`; an id longer than a tag section (a report id over 42 characters) keeps its
    start and its 20-character hash, which is what tells snapshots apart."""
    if len(snapshot_id) > TAG_SECTION_CHARS:
        snapshot_id = snapshot_id[: TAG_SECTION_CHARS - 21] + snapshot_id[-21:]
    return SNAPSHOT_TAG_PREFIX + snapshot_id


def split(items: Sequence[Planned], size: int) -> list[list[Planned]]:
    """Sorted by snapshot id, in as few runs of at most `size` as hold them, of even sizes (30 in
    runs of 16 at most: 15 and 15, so two runs in parallel finish together)."""
    if size < 1:
        raise ValueError(f"a render run holds at least one snapshot, not {size}")
    ordered = sorted(items, key=lambda p: p.snapshot_id)
    if not ordered:
        return []
    runs = math.ceil(len(ordered) / size)
    base, extra = divmod(len(ordered), runs)
    out, start = [], 0
    for i in range(runs):
        end = start + base + (1 if i < extra else 0)
        out.append(ordered[start:end])
        start = end
    return out


def render_run(batch: Sequence[Planned], origin: str) -> dg.RunRequest:
    """One run of report_snapshot for the batch; the run key is a digest of the batch's keys, so
    the same batch asked again (the same tick retried) is one run."""
    if not batch:
        raise ValueError("a render run needs at least one snapshot")
    digest = hashlib.sha256("\n".join(p.key for p in batch).encode()).hexdigest()[:20]
    first, rest = batch[0], [p.snapshot_id for p in batch[1:]]
    reports = sorted({p.report_id for p in batch})
    return dg.RunRequest(
        run_key=f"{origin}:{first.snapshot_id}:{len(batch)}:{digest}",
        partition_key=first.snapshot_id,
        asset_selection=[SNAPSHOT],
        run_config=dg.RunConfig(ops={OP_NAME: SnapshotBatch(snapshots=rest)}),
        tags={
            "domain": DOMAIN,
            "report": ",".join(reports) if len(reports) <= 3 else f"{len(reports)} reports",
            "snapshots": str(len(batch)),
            **{snapshot_tag(p.snapshot_id): SNAPSHOT_TAG_VALUE for p in batch},
        },
    )


def render_runs(items: Sequence[Planned], size: int, origin: str) -> list[dg.RunRequest]:
    return [render_run(batch, origin) for batch in split(items, size)]


def batch_of(partition_keys: Sequence[str], config: SnapshotBatch) -> list[str]:
    """The snapshots a run renders, in order: its partitions, then the config's others, once each."""
    seen: dict[str, None] = {}
    for key in [*partition_keys, *config.snapshots]:
        seen.setdefault(key, None)
    return list(seen)
