"""How the report sensors group snapshots into render runs (assets/reports/runs.py)."""

from __future__ import annotations

import warnings

import dagster as dg
import pytest

from assets.reports.partitions import SNAPSHOT
from assets.reports.runs import Planned, SnapshotBatch, batch_of, render_run, render_runs, snapshot_tag, split
from services.snapshots.ids import snapshot_id


def planned(n: int, report: str = "store_sales_windows") -> list[Planned]:
    ids = [snapshot_id(report, {"store_id": i}, {"a/b": "1"}) for i in range(n)]
    return [Planned(s, report, f"{s}:0") for s in ids]


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [
        (1, 16, [1]),
        (16, 16, [16]),
        (17, 16, [9, 8]),
        (30, 16, [15, 15]),
        (50, 8, [8, 7, 7, 7, 7, 7, 7]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_split_into_as_few_runs_as_hold_them_of_even_sizes(count, size, sizes):
    items = planned(count)
    runs = split(list(reversed(items)), size)
    assert [len(r) for r in runs] == sizes
    flat = [p.snapshot_id for r in runs for p in r]
    assert flat == sorted(p.snapshot_id for p in items)  # each once, in id order


def test_split_refuses_a_size_below_one_and_keeps_nothing_from_nothing():
    assert split([], 4) == []
    with pytest.raises(ValueError, match="at least one snapshot"):
        split(planned(2), 0)


def test_a_render_run_is_for_its_first_snapshot_and_names_the_others():
    batch = sorted(planned(3), key=lambda p: p.snapshot_id)
    request = render_run(batch, "request")
    assert request.partition_key == batch[0].snapshot_id
    assert request.asset_selection == [SNAPSHOT]
    [op] = request.run_config["ops"].values()
    assert op["config"]["snapshots"] == [p.snapshot_id for p in batch[1:]]
    assert {k for k, v in request.tags.items() if v == "render"} == {
        snapshot_tag(p.snapshot_id) for p in batch
    }
    assert request.tags["snapshots"] == "3" and request.tags["report"] == "store_sales_windows"


def test_run_keys_are_the_same_for_the_same_batch_and_differ_by_attempt():
    batch = planned(4)
    assert render_run(batch, "sweep").run_key == render_run(list(batch), "sweep").run_key
    retried = [Planned(p.snapshot_id, p.report_id, f"{p.snapshot_id}:1") for p in batch]
    assert render_run(retried, "sweep").run_key != render_run(batch, "sweep").run_key
    assert render_run(batch, "request").run_key != render_run(batch, "sweep").run_key
    keys = [r.run_key for r in render_runs(planned(40), 16, "request")]
    assert len(keys) == len(set(keys)) == 3


def test_snapshot_tags_are_keys_dagster_accepts_even_for_the_longest_report_id():
    long_report = "r" * 64  # the longest report id ids.py allows
    ids = [snapshot_id(long_report, {"n": i}, {}) for i in range(2)]
    tags = [snapshot_tag(s) for s in ids]
    assert tags[0] != tags[1]  # the hash that tells them apart is kept
    assert all(len(t.split("/", 1)[1]) == 63 for t in tags)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Dagster warns on a non-compliant tag key
        render_run([Planned(s, long_report, s) for s in ids], "request")
    short = snapshot_id("store_sales_windows", {}, {})
    assert snapshot_tag(short) == f"snapshot/{short}"


def test_batch_of_is_the_partitions_then_the_others_once_each():
    assert batch_of(["a"], SnapshotBatch(snapshots=["b", "a", "c", "b"])) == ["a", "b", "c"]
    assert batch_of(["a", "b"], SnapshotBatch()) == ["a", "b"]  # a range run from the UI
    assert isinstance(SnapshotBatch(), dg.Config)
