"""The telemetry Spark job's pure helpers, on plain numbers (the job applies the same functions to
Spark Columns): the hour argument, lateness, the baseline window, the pooled baseline and the
data quality score."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, datetime

import pytest

from assets.telemetry.spark.process_hour import (
    JobInputError,
    baseline_window,
    celsius_to_fahrenheit,
    late_cutoff,
    parse_args,
    parse_hour,
    pooled_m2_term,
    quality_score,
)


def test_parse_hour_accepts_rfc3339_with_any_offset() -> None:
    assert parse_hour("2026-11-24T13:00:00Z") == datetime(2026, 11, 24, 13, tzinfo=UTC)
    assert parse_hour("2026-11-24T22:00:00+09:00") == datetime(2026, 11, 24, 13, tzinfo=UTC)
    assert parse_hour("2026-11-24T13:00:00Z").tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-24T13:00:00", "has no UTC offset"),
        ("2026-11-24T13:30:00Z", "is not the start of an hour"),
        ("2026-11-24T13:00:01Z", "is not the start of an hour"),
        ("yesterday", "is not an RFC 3339 timestamp"),
    ],
)
def test_parse_hour_refuses_with_a_reason(value: str, message: str) -> None:
    with pytest.raises(JobInputError, match=message) as raised:
        parse_hour(value)
    assert value in str(raised.value)


def test_late_cutoff_and_baseline_window() -> None:
    hour = datetime(2026, 11, 24, 0, tzinfo=UTC)
    assert late_cutoff(hour) == datetime(2026, 11, 24, 1, 5, tzinfo=UTC)
    assert baseline_window(hour) == (datetime(2026, 11, 23, 0, tzinfo=UTC), hour)


def test_fahrenheit() -> None:
    assert celsius_to_fahrenheit(-40.0) == -40.0
    assert celsius_to_fahrenheit(100.0) == 212.0
    assert celsius_to_fahrenheit(36.6) == pytest.approx(97.88)


def test_pooled_terms_give_the_stddev_of_all_readings() -> None:
    rng = random.Random(3)
    hours = [[rng.gauss(20 + h % 4, 1.5) for _ in range(rng.randint(1, 9))] for h in range(24)]
    counts = [len(h) for h in hours]
    means = [statistics.fmean(h) for h in hours]
    stddevs = [statistics.stdev(h) if len(h) > 1 else 0.0 for h in hours]  # the job's coalesce(s, 0)
    assert 1 in counts  # an hour with one reading (its stddev is null in the summary)
    total = sum(counts)
    grand = sum(n * m for n, m in zip(counts, means, strict=True)) / total
    m2 = sum(pooled_m2_term(n, m, s, grand) for n, m, s in zip(counts, means, stddevs, strict=True))
    everything = [t for h in hours for t in h]
    assert grand == pytest.approx(statistics.fmean(everything), rel=1e-12)
    assert math.sqrt(m2 / (total - 1)) == pytest.approx(statistics.stdev(everything), rel=1e-9)


def test_quality_score_is_completeness_times_timeliness_times_uniqueness() -> None:
    assert quality_score(arrivals=10, readings=10, complete=10, late=0, duplicates=0) == 1.0
    # 12 arrivals, 2 duplicates removed -> 10 readings; 8 complete; 1 late.
    assert quality_score(12, 10, 8, 1, 2) == pytest.approx(0.8 * 0.9 * (10 / 12))
    assert quality_score(5, 5, 0, 0, 0) == 0.0
    assert quality_score(5, 5, 5, 5, 0) == 0.0


def test_command_line_arguments() -> None:
    args = parse_args(
        [
            "--hour",
            "2026-11-24T13:00:00Z",
            "--raw",
            "s3a://lake/raw/x",
            "--processed-out",
            "p",
            "--summary-out",
            "s",
        ]
    )
    assert (args.raw, args.baseline, args.asset_key) == (["s3a://lake/raw/x"], [], "telemetry/hourly_summary")
    args = parse_args(
        [
            *("--hour", "2026-11-24T13:00:00Z", "--raw", "r", "--baseline", "b1", "--baseline", "b2"),
            *("--processed-out", "p", "--summary-out", "s", "--asset-key", "x/y"),
        ]
    )
    assert (args.baseline, args.asset_key) == (["b1", "b2"], "x/y")
    with pytest.raises(SystemExit):
        parse_args(["--hour", "2026-11-24T13:00:00Z", "--raw", "r", "--processed-out", "p"])
