"""The automation conditions on the real migration and lake_ops assets, evaluated tick by tick with
Dagster's evaluate_automation_conditions against an in-memory instance: nothing is requested before
its parents exist, the demo source loads itself on a fresh instance in few runs, the nightly cron
takes over after, and source assets are observed at first and every 15 minutes."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.definitions.asset_daemon_cursor import AssetDaemonCursor

# Private, but these are the functions the automation sensor and the backfill daemon call to turn
# requested partitions into runs; the test shows how many runs a tick's requests become.
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests,
    build_run_requests_with_backfill_policies,
)
from dagster._core.definitions.partitions.context import partition_loading_context

from assets.lake_ops.assets import lake_inventory, landing_arrivals
from assets.migration import DOMAIN
from assets.migration.factory import build_source_defs, observation_sensor_name, table_key
from assets.migration.registry import load_registry
from assets.shared.conventions import PARTITIONS_START
from resources.profiles import build_resources

SOURCE = load_registry()[0]
TXNS = SOURCE.table("card_transactions")
assert TXNS.partition_start is not None
TXNS_START: date = TXNS.partition_start
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def defs() -> dg.Definitions:
    """The domain's Definitions with the local profile's resources (nothing connects here)."""
    return dg.Definitions.merge(build_source_defs(SOURCE), dg.Definitions(resources=build_resources()))


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def key(table: str, tier: str) -> dg.AssetKey:
    return table_key(SOURCE, SOURCE.table(table), tier)


def view(name: str) -> dg.AssetKey:
    return dg.AssetKey([DOMAIN, SOURCE.name, "views", name])


def days(first: date, last: date) -> set[str]:
    return {str(first + timedelta(days=i)) for i in range((last - first).days + 1)}


def materialized(instance: dg.DagsterInstance, asset: dg.AssetKey, partitions=(None,)) -> None:
    for partition in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


def observe_sources(instance: dg.DagsterInstance) -> None:
    for table in SOURCE.tables:
        instance.report_runless_asset_event(dg.AssetObservation(key(table.name, "source")))


class Ticks:
    """Successive evaluations of the automation sensor, carrying its cursor."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, selection=None):
        self.defs, self.instance, self.selection = defs, instance, selection
        self.cursor: AssetDaemonCursor | None = None

    def __call__(self, at: datetime):
        result = dg.evaluate_automation_conditions(
            defs=self.defs,
            instance=self.instance,
            asset_selection=self.selection,
            evaluation_time=at,
            cursor=self.cursor,
        )
        self.cursor = result.cursor
        return result


def test_registry_partitions_start_where_the_demo_data_starts():
    assert TXNS.partition_start == date(2026, 11, 1)
    assert PARTITIONS_START == "2026-11-01"
    assert landing_arrivals.partitions_def.get_first_partition_key() == PARTITIONS_START


def test_view_waits_until_every_parent_was_materialized(defs, instance):
    spend = view("customer_card_spend")  # over customers, cards and card_transactions
    tick = Ticks(defs, instance, dg.AssetSelection.assets(spend))
    assert tick(NOW).get_num_requested(spend) == 0

    # One partition materialized on demand: its cleansed tier updates, the other parents do not exist.
    materialized(instance, key("card_transactions", "cleansed"), ["2026-11-05"])
    assert tick(NOW + timedelta(seconds=30)).get_num_requested(spend) == 0
    materialized(instance, key("customers", "cleansed"))
    assert tick(NOW + timedelta(seconds=60)).get_num_requested(spend) == 0

    # The last parent: the update seen earlier is still pending, and now every parent exists.
    materialized(instance, key("cards", "cleansed"))
    assert tick(NOW + timedelta(seconds=90)).get_num_requested(spend) == 1
    assert tick(NOW + timedelta(seconds=120)).get_num_requested(spend) == 0  # handled


def test_fresh_instance_observes_then_loads_everything_in_few_runs(defs, instance):
    # As on the stack: the sources have their sensor, everything else the platform's (AssetSelection.all()).
    observation = Ticks(defs, instance, defs.get_sensor_def(observation_sensor_name(SOURCE)).asset_selection)
    tick = Ticks(defs, instance, dg.AssetSelection.all())
    raw = {t.name: key(t.name, "raw") for t in SOURCE.tables}

    observed = observation(NOW)  # first tick: observe every source
    assert {
        key(t.name, "source") for t in SOURCE.tables if observed.get_num_requested(key(t.name, "source"))
    } == {key(t.name, "source") for t in SOURCE.tables}
    first = tick(NOW)  # raw waits for its source
    assert first.total_requested == 0

    observe_sources(instance)
    second = tick(NOW + timedelta(seconds=30))
    every_day = days(TXNS_START, NOW.date())  # 2026-11-01 ... today
    assert second.get_requested_partitions(raw["card_transactions"]) == every_day
    for table in SOURCE.tables:
        if not table.partitioned:
            assert second.get_requested_partitions(raw[table.name]) == {None}
        assert second.get_num_requested(key(table.name, "cleansed")) == 0  # raw does not exist yet

    # What the sensor launches (emit_backfills=True, its default): the unpartitioned raw tables in
    # one run, the 24 days in one backfill, which the backfill daemon splits by the asset's
    # BackfillPolicy.multi_run(31): one run for the whole range.
    graph = defs.resolve_asset_graph()
    requests = build_run_requests(second._requested_subsets, graph, {}, emit_backfills=True)
    backfills = [r for r in requests if r.requires_backfill_daemon()]
    runs = [r for r in requests if not r.requires_backfill_daemon()]
    assert len(backfills) == 1 and len(runs) == 1
    assert set(runs[0].asset_selection or []) == {raw[t.name] for t in SOURCE.tables if not t.partitioned}
    subset = backfills[0].asset_graph_subset
    assert subset is not None
    with partition_loading_context(effective_dt=NOW, dynamic_partitions_store=instance):
        backfill_runs = build_run_requests_with_backfill_policies(
            list(subset.iterate_asset_partitions()), graph, instance
        )
    assert len(backfill_runs) == 1
    assert backfill_runs[0].tags["dagster/asset_partition_range_start"] == "2026-11-01"
    assert backfill_runs[0].tags["dagster/asset_partition_range_end"] == "2026-11-24"

    # The loads land; cleansed follows, raw is not requested again.
    for table in SOURCE.tables:
        materialized(instance, raw[table.name], sorted(every_day) if table.partitioned else [None])
    third = tick(NOW + timedelta(seconds=60))
    assert third.get_requested_partitions(key("card_transactions", "cleansed")) == every_day
    assert third.get_num_requested(key("customers", "cleansed")) == 1
    for table in SOURCE.tables:
        assert third.get_num_requested(raw[table.name]) == 0

    # The partition that appears at midnight waits for the 02:00 load of the last two days.
    after_midnight = tick(datetime(2026, 11, 25, 0, 30, tzinfo=UTC))
    assert after_midnight.get_num_requested(raw["card_transactions"]) == 0
    nightly = tick(datetime(2026, 11, 25, 2, 1, tzinfo=UTC))
    assert nightly.get_requested_partitions(raw["card_transactions"]) == {"2026-11-24", "2026-11-25"}
    assert nightly.get_requested_partitions(raw["customers"]) == {None}


def test_raw_is_not_loaded_from_a_source_never_observed(defs, instance):
    tick = Ticks(defs, instance, dg.AssetSelection.assets(key("customers", "raw")))
    for minutes in (0, 1, 2):
        assert tick(NOW + timedelta(minutes=minutes)).total_requested == 0
    instance.report_runless_asset_event(dg.AssetObservation(key("customers", "source")))
    assert tick(NOW + timedelta(minutes=3)).get_num_requested(key("customers", "raw")) == 1


def test_sources_are_observed_at_first_and_every_15_minutes(defs, instance):
    source = key("customers", "source")
    tick = Ticks(defs, instance, dg.AssetSelection.assets(source))
    start = datetime(2026, 11, 24, 10, 1, tzinfo=UTC)
    assert tick(start).get_num_requested(source) == 1
    assert tick(start + timedelta(minutes=1)).get_num_requested(source) == 0
    assert tick(start + timedelta(minutes=13)).get_num_requested(source) == 0  # 10:14
    assert tick(start + timedelta(minutes=14, seconds=30)).get_num_requested(source) == 1  # past 10:15
    assert tick(start + timedelta(minutes=15)).get_num_requested(source) == 0


def test_source_observation_has_its_own_sensor(defs):
    """AssetSelection.all() (the platform's automation sensor) leaves source assets out."""
    graph = defs.resolve_asset_graph()
    sources = {key(t.name, "source") for t in SOURCE.tables}
    assert not sources & dg.AssetSelection.all().resolve(graph)
    sensor = defs.get_sensor_def(observation_sensor_name(SOURCE))
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.asset_selection.resolve(graph) == sources


def test_lake_inventory_waits_for_a_first_day_of_arrivals(instance):
    defs = dg.Definitions(assets=[landing_arrivals, lake_inventory], resources=build_resources())
    tick = Ticks(defs, instance)
    inventory = lake_inventory.key
    assert tick(NOW).get_num_requested(inventory) == 0  # missing, but nothing has arrived
    assert tick(NOW + timedelta(seconds=30)).get_num_requested(inventory) == 0
    materialized(instance, landing_arrivals.key, ["2026-11-24"])
    assert tick(NOW + timedelta(seconds=60)).get_num_requested(inventory) == 1
