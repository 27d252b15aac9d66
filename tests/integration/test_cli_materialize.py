"""`dp materialize`: runs land in the local stack's instance (PostgreSQL storage, DAGSTER_HOME under
PLATFORM_VAR_DIR), so the UI shows them; a range runs in chunks with range tags."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from services.cli import main
from services.stack import dagster_pg_env, drop_dagster_db


@pytest.fixture
def instance_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own for the instance `dp materialize` writes to, dropped afterwards."""
    name = f"dagster_cli_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    yield name
    drop_dagster_db(name)


@pytest.fixture
def stack_instance(tmp_path: Path, instance_db: str, monkeypatch: pytest.MonkeyPatch):
    """The instance as the stack's UI opens it: var/dagster_home with the DAGSTER_PG_* variables."""

    def open_instance() -> dg.DagsterInstance:
        for name, value in dagster_pg_env().items():
            monkeypatch.setenv(name, value)
        return dg.DagsterInstance.from_config(str(tmp_path / "var" / "dagster_home"))

    return open_instance


def test_materialize_writes_its_run_into_the_stack_instance(stack_instance):
    assert main(["materialize", "--select", "lake_ops/lake_inventory"]) == 0
    instance = stack_instance()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert len(runs) == 1
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].asset_selection == {dg.AssetKey(["lake_ops", "lake_inventory"])}
    event = instance.get_latest_materialization_event(dg.AssetKey(["lake_ops", "lake_inventory"]))
    assert event is not None and event.run_id == runs[0].run_id


def test_range_runs_in_chunks_into_the_stack_instance(stack_instance, capfd):
    # landing_arrivals has no BackfillPolicy: one partition per run, each run tagged with its range.
    args = [
        "materialize",
        "--select",
        "lake_ops/landing_arrivals",
        "--from",
        "2026-11-21",
        "--to",
        "2026-11-22",
    ]
    assert main(args) == 0
    instance = stack_instance()
    runs = sorted(instance.get_runs(), key=lambda r: r.tags["dagster/asset_partition_range_start"])
    assert [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in runs
    ] == [
        ("2026-11-21", "2026-11-21"),
        ("2026-11-22", "2026-11-22"),
    ]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    key = dg.AssetKey(["lake_ops", "landing_arrivals"])
    assert instance.get_materialized_partitions(key) == {"2026-11-21", "2026-11-22"}
    assert capfd.readouterr().out.count(": success") == 2  # the subprocess prints one line per run


def test_range_outside_the_partitions_is_refused(stack_instance, capfd):
    args = [
        "materialize",
        "--select",
        "lake_ops/landing_arrivals",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-02",
    ]
    assert main(args) == 2
    assert "not a range of the assets' partitions" in capfd.readouterr().err
    assert stack_instance().get_runs() == []


def test_from_needs_to():
    with pytest.raises(SystemExit) as exc:
        main(["materialize", "--select", "lake_ops/landing_arrivals", "--from", "2026-11-21"])
    assert exc.value.code == 2
