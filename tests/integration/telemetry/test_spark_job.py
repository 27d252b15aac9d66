"""The telemetry Spark job (assets/telemetry/spark/process_hour.py) in local mode, on a raw hour
written here with pyarrow, against an independent computation in plain Python over the same rows.

The expected values never call the job's helpers: deduplication, lateness, the pooled baseline
(from the readings behind the baseline summaries, with `statistics`), anomaly scores and the
data quality score are computed here from the generated readings.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resources.lake.paths import LakePartition, Tier, partition_prefix

REPO = Path(__file__).resolve().parents[3]
JOB = REPO / "assets" / "telemetry" / "spark" / "process_hour.py"
HOUR = datetime(2026, 11, 24, 13, tzinfo=UTC)  # a Tuesday
LATE_CUTOFF = HOUR + timedelta(minutes=65)

from assets.telemetry.sql_catalog import summary_schema  # noqa: E402
from services.telemetry_api.sink import RAW_SCHEMA  # noqa: E402  (the raw tier's contract)

# The curated tier's declared contract (the SQL views read it): the job's output must match it.
SUMMARY_SCHEMA = summary_schema()
PROCESSED_COLUMNS = [
    "device_id",
    "temperature",
    "humidity",
    "pressure",
    "timestamp",
    "temperature_fahrenheit",
    "anomaly_flag",
    "anomaly_score",
    "hour",
    "day_of_week",
    "is_weekend",
    "is_late",
]


def hour_dir(root: Path, tier: Tier, dataset: str, start: datetime) -> Path:
    return root / partition_prefix(
        tier, "telemetry", dataset, LakePartition.for_window(start, timedelta(hours=1))
    )


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("test-telemetry-spark")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


# --- the data: a raw hour, and the readings behind 24+ hours of baseline summaries ------------
BASELINE_MEANS = {"dev-a": 20.0, "dev-b": -5.0, "dev-c": 40.0, "dev-d": 10.0}
THIN_BASELINE = "dev-e"  # summaries with only 20 readings in the window: below the minimum of 30


def make_baseline(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Summary rows (as the job writes them) and, per device, the readings of the 24 hours before
    HOUR that they summarize. Rows outside the window carry wild values that must not count."""
    rows: list[dict[str, Any]] = []
    window: dict[str, list[float]] = defaultdict(list)

    def summarize(device: str, start: datetime, temps: list[float]) -> dict[str, Any]:
        return {
            "device_id": device,
            "hour": start,
            "record_count": len(temps),
            "avg_temperature": statistics.fmean(temps),
            "min_temperature": min(temps),
            "max_temperature": max(temps),
            "temp_stddev": statistics.stdev(temps) if len(temps) > 1 else None,
            "anomaly_count": 0,
            "data_quality_score": 1.0,
            "late_count": 0,
            "duplicate_count": 0,
        }

    for device, mean in BASELINE_MEANS.items():
        for back in range(1, 25):
            start = HOUR - timedelta(hours=back)
            count = 1 if (device == "dev-a" and back == 7) else rng.randint(3, 8)
            temps = [round(rng.gauss(mean + 0.3 * (back % 3), 1.0), 3) for _ in range(count)]
            window[device].extend(temps)
            rows.append(summarize(device, start, temps))
        # Outside the window: 25 hours back and this very hour (a stale summary being replaced).
        rows.append(summarize(device, HOUR - timedelta(hours=25), [mean + 50.0, mean - 50.0]))
        rows.append(summarize(device, HOUR, [mean + 30.0, mean + 31.0]))
    for back in (2, 5):
        temps = [round(rng.gauss(15.0, 1.0), 3) for _ in range(10)]
        window[THIN_BASELINE].extend(temps)
        rows.append(summarize(THIN_BASELINE, HOUR - timedelta(hours=back), temps))
    return rows, dict(window)


def write_baseline(root: Path, rows: list[dict[str, Any]]) -> list[Path]:
    by_hour: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_hour[row["hour"]].append(row)
    dirs = []
    for start, hour_rows in sorted(by_hour.items()):
        directory = hour_dir(root, Tier.CURATED, "hourly_summary", start)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(hour_rows, schema=SUMMARY_SCHEMA), directory / "part-0.parquet")
        dirs.append(directory)
    return dirs


def reading(
    device: str, ts: datetime, temp: float | None, received: datetime, batch: str, **extra: Any
) -> dict[str, Any]:
    row = {
        "device_id": device,
        "timestamp": ts,
        "temperature": temp,
        "humidity": 55.0,
        "pressure": 1013.0,
        "latitude": 37.5,
        "longitude": 127.0,
        "metadata_version": "1.2",
        "metadata_source": "test",
        "received_at": received,
        "batch_id": batch,
    }
    row.update(extra)
    return row


def make_raw(rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    centers = {**BASELINE_MEANS, THIN_BASELINE: 15.0, "dev-f": 25.0, "dev-g": 30.0}
    for device, center in centers.items():
        seconds = sorted(rng.sample(range(3600), 40))
        for i, second in enumerate(seconds):
            ts = HOUR + timedelta(seconds=second, microseconds=rng.randrange(1_000_000))
            temp: float | None = round(center + max(-2.0, min(2.0, rng.gauss(0.0, 0.8))), 3)
            extra: dict[str, Any] = {}
            if i % 11 == 3:
                temp = None  # a sensor fault
            if i % 7 == 5:
                extra["humidity"] = None
            if i % 13 == 6:
                extra.update(latitude=None, longitude=None)
            received = ts + timedelta(milliseconds=rng.randint(200, 5000))
            rows.append(reading(device, ts, temp, received, f"b-{device}-{i // 10}", **extra))

    def pick(device: str, index: int) -> dict[str, Any]:
        return [r for r in rows if r["device_id"] == device][index]

    # Spikes against the baseline, and the physical fallback without one.
    pick("dev-a", 0)["temperature"] = 30.0
    pick("dev-b", 1)["temperature"] = -11.0
    pick("dev-c", 2)["temperature"] = 86.5  # also outside the physical range
    pick(THIN_BASELINE, 0)["temperature"] = 25.0  # no baseline (too thin): not an anomaly
    pick("dev-f", 0)["temperature"] = 95.0
    pick("dev-f", 1)["temperature"] = -45.0
    pick("dev-g", 0)["temperature"] = 70.0  # far from its neighbours, but no baseline
    # Late readings (one exactly at the cutoff is not late).
    for index in (4, 8, 9):
        row = pick("dev-b", index)
        row["received_at"] = LATE_CUTOFF + timedelta(minutes=index)
        row["batch_id"] = "b-late"
    pick("dev-d", 4)["received_at"] = LATE_CUTOFF
    pick("dev-g", 8)["received_at"] = HOUR + timedelta(hours=5)
    # Duplicates: later copies with other values (the first arrival is kept), a triplicate, and a
    # copy that arrived earlier than the row listed first.
    dups = []
    for device, index, delay in (("dev-a", 10, 3), ("dev-a", 12, 60), ("dev-a", 12, 90), ("dev-f", 5, 4)):
        original = pick(device, index)
        copy = dict(original)
        copy["received_at"] = original["received_at"] + timedelta(seconds=delay)
        copy["temperature"] = (original["temperature"] or 0.0) + 1.0
        copy["batch_id"] = "b-retry"
        dups.append(copy)
    original = pick("dev-c", 7)
    earlier = dict(original)
    earlier["received_at"] = original["received_at"] - timedelta(milliseconds=150)
    earlier["humidity"] = None
    earlier["batch_id"] = "b-early"
    dups.append(earlier)
    rows.extend(dups)
    # Other hours in the same files, and a device that only has other hours.
    rows.append(reading("dev-a", HOUR - timedelta(microseconds=1), 21.0, HOUR + timedelta(seconds=2), "b-x"))
    rows.append(
        reading("dev-a", HOUR + timedelta(hours=1), 21.0, HOUR + timedelta(hours=1, seconds=1), "b-x")
    )
    rows.append(
        reading(
            "dev-h", HOUR + timedelta(hours=1, minutes=3), 22.0, HOUR + timedelta(hours=1, minutes=4), "b-x"
        )
    )
    rows.append(reading("dev-h", HOUR - timedelta(hours=2), 22.0, HOUR + timedelta(minutes=4), "b-x"))
    # Both edges of the hour belong to it.
    rows.append(reading("dev-g", HOUR, 29.0, HOUR + timedelta(seconds=1), "b-edge"))
    rows.append(
        reading(
            "dev-g", HOUR + timedelta(hours=1, microseconds=-1), 29.5, HOUR + timedelta(hours=1), "b-edge"
        )
    )
    rng.shuffle(rows)
    return rows


def write_raw(directory: Path, rows: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    third = len(rows) // 3
    for n, chunk in enumerate((rows[:third], rows[third : 2 * third], rows[2 * third :])):
        pq.write_table(pa.Table.from_pylist(chunk, schema=RAW_SCHEMA), directory / f"part-{n:04d}.parquet")


# --- the independent computation --------------------------------------------------------------
def expected(raw: list[dict[str, Any]], window: dict[str, list[float]]) -> tuple[dict, dict]:
    baseline = {
        device: (statistics.fmean(temps), statistics.stdev(temps))
        for device, temps in window.items()
        if len(temps) >= 30
    }
    groups: dict[tuple[str, datetime], list[dict[str, Any]]] = defaultdict(list)
    for row in raw:
        if HOUR <= row["timestamp"] < HOUR + timedelta(hours=1):
            groups[(row["device_id"], row["timestamp"])].append(row)
    processed: dict[tuple[str, datetime], dict[str, Any]] = {}
    per_device: dict[str, list[tuple[dict[str, Any], int]]] = defaultdict(list)
    for key, copies in groups.items():
        kept = min(copies, key=lambda r: r["received_at"])
        temp = kept["temperature"]
        score = None
        if temp is not None and kept["device_id"] in baseline:
            mean, sd = baseline[kept["device_id"]]
            score = abs(temp - mean) / max(sd, 0.5)
        flag = temp is not None and ((score is not None and score >= 4) or temp < -40 or temp > 85)
        processed[key] = {
            "temperature": temp,
            "humidity": kept["humidity"],
            "temperature_fahrenheit": None if temp is None else temp * 1.8 + 32,
            "anomaly_score": score,
            "anomaly_flag": flag,
            "is_late": kept["received_at"] > LATE_CUTOFF,
            "hour": 13,
            "day_of_week": 2,
            "is_weekend": False,
        }
        per_device[key[0]].append(
            (
                processed[key]
                | {
                    "complete": all(
                        kept[c] is not None
                        for c in ("temperature", "humidity", "pressure", "latitude", "longitude")
                    )
                },
                len(copies) - 1,
            )
        )
    summary = {}
    for device, items in per_device.items():
        temps = [p["temperature"] for p, _ in items if p["temperature"] is not None]
        n = len(items)
        dups = sum(d for _, d in items)
        late = sum(p["is_late"] for p, _ in items)
        complete = sum(p["complete"] for p, _ in items)
        summary[device] = {
            "record_count": n,
            "avg_temperature": statistics.fmean(temps),
            "min_temperature": min(temps),
            "max_temperature": max(temps),
            "temp_stddev": statistics.stdev(temps),
            "anomaly_count": sum(p["anomaly_flag"] for p, _ in items),
            "late_count": late,
            "duplicate_count": dups,
            "data_quality_score": (complete / n) * (1 - late / n) * (1 - dups / (n + dups)),
        }
    return processed, summary


def close(actual: float | None, wanted: float | None, tol: float = 1e-9) -> bool:
    if actual is None or wanted is None:
        return actual is wanted
    return math.isclose(actual, wanted, rel_tol=tol, abs_tol=tol)


@pytest.fixture(scope="module")
def hour_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = random.Random(20261124)
    root = tmp_path_factory.mktemp("lake")
    baseline_rows, window = make_baseline(rng)
    baseline_dirs = write_baseline(root, baseline_rows)
    raw = make_raw(rng)
    raw_dir = hour_dir(root, Tier.RAW, "readings", HOUR)
    write_raw(raw_dir, raw)
    processed, summary = expected(raw, window)
    return {
        "root": root,
        "raw": raw,
        "raw_dir": str(raw_dir),
        "baseline": [str(d) for d in baseline_dirs],
        # Outputs under another root: the baseline's lake keeps a stale summary of this hour.
        "processed_out": str(hour_dir(root / "out", Tier.PROCESSED, "readings", HOUR)),
        "summary_out": str(hour_dir(root / "out", Tier.CURATED, "hourly_summary", HOUR)),
        "expected_processed": processed,
        "expected_summary": summary,
    }


def read_dir(directory: str) -> pa.Table:
    files = sorted(Path(directory).glob("part-*.parquet"))
    assert len(files) == 1, f"one Parquet file expected in {directory}, found {files}"
    return pq.read_table(files[0])


def run_job(spark: Any, case: dict[str, Any]) -> dict[str, Any]:
    from assets.telemetry.spark.process_hour import run

    return run(
        spark,
        "2026-11-24T13:00:00Z",
        case["raw_dir"],
        case["baseline"],
        case["processed_out"],
        case["summary_out"],
    )


def test_summary_and_processed_match_an_independent_computation(
    spark: Any, hour_case: dict[str, Any]
) -> None:
    want_summary = hour_case["expected_summary"]
    want_processed = hour_case["expected_processed"]
    # The case exercises what it claims to.
    assert set(want_summary) == {"dev-a", "dev-b", "dev-c", "dev-d", "dev-e", "dev-f", "dev-g"}
    assert want_summary["dev-a"]["duplicate_count"] == 3 and want_summary["dev-b"]["late_count"] == 3
    assert {d for d, s in want_summary.items() if s["anomaly_count"]} == {"dev-a", "dev-b", "dev-c", "dev-f"}

    metrics = run_job(spark, hour_case)

    summary = read_dir(hour_case["summary_out"])
    assert summary.schema.names == SUMMARY_SCHEMA.names
    for name in ("hour", "record_count", "anomaly_count", "late_count", "duplicate_count"):
        assert summary.schema.field(name).type == SUMMARY_SCHEMA.field(name).type, name
    got = {row["device_id"]: row for row in summary.to_pylist()}
    assert set(got) == set(want_summary)
    for device, want in want_summary.items():
        row = got[device]
        assert row["hour"] == HOUR
        for name in ("record_count", "anomaly_count", "late_count", "duplicate_count"):
            assert row[name] == want[name], (device, name, row[name], want[name])
        for name in ("avg_temperature", "min_temperature", "max_temperature", "temp_stddev"):
            assert close(row[name], want[name]), (device, name, row[name], want[name])
        assert math.isclose(row["data_quality_score"], want["data_quality_score"], abs_tol=5.01e-5), device
        assert row["data_quality_score"] == round(row["data_quality_score"], 4)
        assert 0.0 <= row["data_quality_score"] <= 1.0

    processed = read_dir(hour_case["processed_out"])
    assert processed.schema.names == PROCESSED_COLUMNS
    assert processed.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    rows = processed.to_pylist()
    assert len(rows) == len(want_processed)
    keys = [(r["device_id"], r["timestamp"]) for r in rows]
    assert keys == sorted(want_processed), "rows sorted by device and time, one per reading"
    for row in rows:
        want = want_processed[(row["device_id"], row["timestamp"])]
        for name in (
            "temperature",
            "humidity",
            "anomaly_flag",
            "is_late",
            "hour",
            "day_of_week",
            "is_weekend",
        ):
            assert row[name] == want[name], (row["device_id"], row["timestamp"], name)
        for name in ("temperature_fahrenheit", "anomaly_score"):
            assert close(row[name], want[name]), (row["device_id"], row["timestamp"], name)

    in_hour = sum(1 for r in hour_case["raw"] if HOUR <= r["timestamp"] < HOUR + timedelta(hours=1))
    assert metrics["rows_read"] == len(hour_case["raw"])
    assert metrics["rows_in"] == in_hour
    assert metrics["rows_other_hours"] == len(hour_case["raw"]) - in_hour == 4
    assert metrics["rows_out"] == len(want_processed)
    assert metrics["duplicates"] == sum(s["duplicate_count"] for s in want_summary.values()) == 5
    assert metrics["late"] == sum(s["late_count"] for s in want_summary.values())
    assert metrics["anomalies"] == sum(s["anomaly_count"] for s in want_summary.values())
    assert metrics["devices"] == 7 and metrics["devices_with_baseline"] == 4


def test_rerunning_the_hour_gives_identical_output(spark: Any, hour_case: dict[str, Any]) -> None:
    run_job(spark, hour_case)
    first = (read_dir(hour_case["processed_out"]), read_dir(hour_case["summary_out"]))
    second_metrics = run_job(spark, hour_case)
    second = (read_dir(hour_case["processed_out"]), read_dir(hour_case["summary_out"]))
    assert second[0].num_rows == len(hour_case["expected_processed"])
    _assert_same_rows(first[0], second[0], ("device_id", "timestamp"))
    _assert_same_rows(first[1], second[1], ("device_id", "hour"))
    assert second_metrics["rows_out"] == second[0].num_rows


def _assert_same_rows(a: Any, b: Any, key: tuple[str, ...]) -> None:
    """Same schema and rows; doubles equal to 1e-9 (Spark may sum partial aggregates in another
    order on a re-run, which moves the last bits of a mean or a stddev)."""
    assert a.schema == b.schema
    rows_a = sorted(a.to_pylist(), key=lambda r: tuple(r[k] for k in key))
    rows_b = sorted(b.to_pylist(), key=lambda r: tuple(r[k] for k in key))
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.keys() == rb.keys()
        for name in ra:
            if isinstance(ra[name], float) and isinstance(rb[name], float):
                assert ra[name] == pytest.approx(rb[name], rel=1e-9, abs=1e-12), (name, ra, rb)
            else:
                assert ra[name] == rb[name], (name, ra, rb)


def test_missing_raw_directory_is_refused_by_name(spark: Any, tmp_path: Path) -> None:
    from assets.telemetry.spark.process_hour import JobInputError, run

    missing = tmp_path / "raw" / "hour=13"
    with pytest.raises(JobInputError, match=r"--raw: .*hour=13 does not exist"):
        run(spark, "2026-11-24T13:00:00Z", str(missing), None, str(tmp_path / "p"), str(tmp_path / "s"))
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_an_hour_with_only_other_hours_readings_writes_empty_outputs(spark: Any, tmp_path: Path) -> None:
    from assets.telemetry.spark.process_hour import run

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    rows = [
        reading("dev-a", HOUR - timedelta(minutes=1), 20.0, HOUR + timedelta(minutes=70), "b1"),
        reading("dev-a", HOUR + timedelta(hours=1), 20.0, HOUR + timedelta(hours=1), "b1"),
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), raw_dir / "part-0.parquet")
    metrics = run(spark, HOUR, str(raw_dir), [], str(tmp_path / "p"), str(tmp_path / "s"))
    assert (metrics["rows_read"], metrics["rows_other_hours"], metrics["rows_in"], metrics["devices"]) == (
        2,
        2,
        0,
        0,
    )
    processed, summary = read_dir(str(tmp_path / "p")), read_dir(str(tmp_path / "s"))
    assert (processed.num_rows, summary.num_rows) == (0, 0)
    assert processed.schema.names == PROCESSED_COLUMNS and summary.schema.names == SUMMARY_SCHEMA.names


SUNDAY = datetime(2026, 11, 29, 23, tzinfo=UTC)


def write_sunday_hour(tmp_path: Path) -> list[str]:
    """A small Sunday hour (dev-x: 10 readings and a late duplicate; dev-y: one late reading at
    120 degC) and the job's arguments for it; no baseline exists yet."""
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    rows = [
        reading(
            "dev-x",
            SUNDAY + timedelta(minutes=m),
            20.0 + m / 10,
            SUNDAY + timedelta(minutes=m, seconds=1),
            "b1",
        )
        for m in range(0, 60, 6)
    ]
    rows.append(dict(rows[0], received_at=SUNDAY + timedelta(minutes=90), batch_id="b2"))  # a late duplicate
    rows.append(reading("dev-y", SUNDAY + timedelta(minutes=1), 120.0, SUNDAY + timedelta(hours=2), "b3"))
    pq.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), raw_dir / "part-0.parquet")
    return [
        str(JOB),
        "--hour",
        "2026-11-30T08:00:00+09:00",  # 23:00 UTC on Sunday
        "--raw",
        str(raw_dir),
        "--baseline",
        str(tmp_path / "no-summaries-yet"),
        "--processed-out",
        str(tmp_path / "processed"),
        "--summary-out",
        str(tmp_path / "summary"),
    ]


def test_command_line_without_pipes_prints_the_metrics_json(tmp_path: Path) -> None:
    """spark-submit style: its own process and JVM; a Sunday hour; no Pipes context."""
    args = write_sunday_hour(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["hour"] == "2026-11-29T23:00:00Z"
    assert (metrics["rows_in"], metrics["duplicates"], metrics["rows_out"]) == (12, 1, 11)
    assert (metrics["late"], metrics["anomalies"], metrics["devices"]) == (1, 1, 2)
    assert metrics["devices_with_baseline"] == 0
    processed = {
        (r["device_id"], r["timestamp"]): r for r in read_dir(str(tmp_path / "processed")).to_pylist()
    }
    first = processed[("dev-x", SUNDAY)]
    assert (first["hour"], first["day_of_week"], first["is_weekend"], first["is_late"]) == (
        23,
        7,
        True,
        False,
    )
    assert processed[("dev-y", SUNDAY + timedelta(minutes=1))]["anomaly_flag"] is True
    assert processed[("dev-y", SUNDAY + timedelta(minutes=1))]["anomaly_score"] is None


def test_under_dagster_pipes_it_reports_one_materialization(tmp_path: Path) -> None:
    """Launched by Dagster's PipesSubprocessClient: logs and the metrics as the materialization's
    metadata, for the asset key of --asset-key."""
    from dagster import DagsterInstance, PipesSubprocessClient, asset, materialize

    args = write_sunday_hour(tmp_path)

    # Unannotated (a local import under `from __future__ import annotations`): the client is
    # asked for by resource key.
    @asset(key=["telemetry", "hourly_summary_test"], required_resource_keys={"pipes"})
    def summary(context):
        command = [sys.executable, *args, "--asset-key", "telemetry/hourly_summary_test"]
        return context.resources.pipes.run(command=command, context=context).get_materialize_result()

    with DagsterInstance.ephemeral() as instance:
        result = materialize([summary], resources={"pipes": PipesSubprocessClient()}, instance=instance)
        assert result.success
        (materialization,) = result.asset_materializations_for_node("telemetry__hourly_summary_test")
        metadata = {name: value.value for name, value in materialization.metadata.items()}
        logs = [
            e.message
            for e in instance.all_logs(result.run_id)
            if "processing telemetry hour" in (e.message or "")
        ]
    assert materialization.asset_key.path == ["telemetry", "hourly_summary_test"]
    assert (metadata["rows_in"], metadata["duplicates"], metadata["late"]) == (12, 1, 1)
    assert (metadata["anomalies"], metadata["devices"], metadata["rows_out"]) == (1, 2, 11)
    assert metadata["seconds"] > 0
    assert logs, "the job's Pipes log line reached the run's logs"


def test_command_line_refuses_an_hour_that_is_not_on_the_hour(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(JOB),
            "--hour",
            "2026-11-24T13:30:00Z",
            "--raw",
            str(tmp_path),
            "--processed-out",
            "p",
            "--summary-out",
            "s",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--hour: '2026-11-24T13:30:00Z' is not the start of an hour" in proc.stderr
