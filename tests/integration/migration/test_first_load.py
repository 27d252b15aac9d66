"""What a fresh `dp up` does to the migration domain, run in-process: the sample source dated by the
registry (partition_start to yesterday), then the runs the automation launches in order, with the
same selections and partition ranges: sources observed, raw (unpartitioned tables in one run, every
partition up to today in one range run), cleansed, then profiles and views. Every run must succeed,
today's still-empty partition included."""

from datetime import date, timedelta

import dagster as dg
import pytest

from assets.migration import DOMAIN
from assets.migration.factory import build_source_defs, table_key
from assets.migration.registry import load_registry
from resources.secrets import generate_key
from resources.warehouse import DuckDBWarehouse
from services.demo_sources import demo_window, source_location
from services.generators.card_db import generate


@pytest.fixture
def stack(pg_url, local_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("PLATFORM_PII_KEY", generate_key())
    first, last = demo_window(source_location())
    generate(pg_url, 5_000, days=(last - first).days + 1, end_date=last, progress=False)
    source = load_registry()[0].model_copy(update={"local_url": pg_url})
    defs = build_source_defs(source)
    resources = {
        **defs.resources,
        "lake": local_lake,
        "warehouse": DuckDBWarehouse(path=str(tmp_path / "wh.duckdb")),
    }
    return source, list(defs.assets), resources


def test_first_load_of_a_fresh_stack_succeeds_in_few_runs(stack):
    source, assets, resources = stack
    instance = dg.DagsterInstance.ephemeral()
    txns = source.table("card_transactions")
    today = date.today()

    def run(keys, **kwargs) -> dg.ExecuteInProcessResult:
        result = dg.materialize(assets, resources=resources, selection=keys, instance=instance, **kwargs)
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        return result

    def keys(tier, partitioned):
        return [table_key(source, t, tier) for t in source.tables if t.partitioned == partitioned]

    run(keys("source", False) + keys("source", True))
    run(keys("raw", False))
    loaded = run(
        keys("raw", True),
        tags={
            "dagster/asset_partition_range_start": str(txns.partition_start),
            "dagster/asset_partition_range_end": str(today),
        },
    )
    rows = loaded.asset_materializations_for_node(f"{DOMAIN}__{source.name}__raw__card_transactions")[0]
    by_day = rows.metadata["rows_by_partition"].value
    assert isinstance(by_day, dict)
    # Data on every day from partition_start to yesterday; today's partition exists and is empty.
    assert {d for d, n in by_day.items() if n} == {
        str(txns.partition_start + timedelta(days=i)) for i in range((today - txns.partition_start).days)
    }
    run(keys("cleansed", False))
    run(
        keys("cleansed", True),
        tags={
            "dagster/asset_partition_range_start": str(txns.partition_start),
            "dagster/asset_partition_range_end": str(today),
        },
    )
    run(
        keys("profile", False)
        + keys("profile", True)
        + [dg.AssetKey([DOMAIN, source.name, "views", v.name]) for v in source.views]
    )
