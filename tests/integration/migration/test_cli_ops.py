"""`dp migration preflight | reset | resync | status`, and what `dp materialize` prints when a check
fails: run through services.cli.main against a small PostgreSQL source of the test's own.

The registry directory and the code location the CLI uses are the test's: a registry file whose
source is the test database, and a definitions file built from it, which `dp materialize` (and so
`dp migration resync`) runs in the local stack's environment and instance, as for the shipped one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from assets.migration import DOMAIN
from assets.migration.factory import build_source_defs, table_key
from assets.migration.registry import SourceSystem, load_registry
from resources.lake import LakePartition, LocalLake, Tier
from resources.lake.datasets import LoadState
from resources.lake.paths import dataset_prefix
from resources.warehouse import DuckDBWarehouse
from services import cli, migration_cli
from services.cli import main
from services.stack import dagster_pg_env, drop_dagster_db

ORDERS = "shop__orders"  # the lake dataset of shop.orders
DAYS = ["2026-02-01", "2026-02-02", "2026-02-03"]

DEFINITIONS = """
from pathlib import Path

import dagster as dg

from assets.migration.factory import build_source_defs
from assets.migration.registry import load_registry
from resources.profiles import build_resources

defs = dg.Definitions.merge(
    *(build_source_defs(source) for source in load_registry(Path({registry!r}))),
    dg.Definitions(resources=build_resources(), executor=dg.in_process_executor),
)
"""


def _registry(url: str, **orders) -> dict:
    return {
        "name": "shop",
        "description": "A small shop.",
        "url_env": "SHOP_TEST_URL",
        "local_url": url,
        "tables": [
            {
                "name": "orders",
                "description": "Orders.",
                "source_table": "orders",
                "load_mode": "append",
                "primary_key": ["order_id"],
                "watermark_column": "order_id",
                "partition_column": "order_date",
                "partition_grain": "day",
                "partition_start": "2026-02-01",
                **orders,
            },
            {
                "name": "customers",
                "description": "Customers.",
                "source_table": "customers",
                "load_mode": "overwrite",
                "primary_key": ["customer_id"],
            },
        ],
    }


def _write_registry(directory: Path, doc: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "shop.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def source_db(pg_url: str) -> str:
    """Orders on 2026-02-01..03, two a day (ids 10, 11 / 20, 21 / 30, 31), and two customers."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, order_date DATE NOT NULL,"
                " amount NUMERIC(10, 2), ref UUID, note TEXT)"
            )
        )
        for day, first in ((1, 10), (2, 20), (3, 30)):
            for order_id in (first, first + 1):
                conn.execute(
                    sa.text("INSERT INTO orders VALUES (:id, :d, 12.50, :ref, 'x')"),
                    {"id": order_id, "d": date(2026, 2, day), "ref": str(uuid.uuid4())},
                )
        conn.execute(sa.text("CREATE TABLE customers (customer_id INT PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("INSERT INTO customers VALUES (1, 'Ann'), (2, 'Bob')"))
    engine.dispose()
    return pg_url


def _late_order(url: str, order_id: int, day: date) -> None:
    """A row committed after the load with a watermark below the one loaded: append never sees it."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO orders VALUES (:id, :d, 1.00, NULL, 'late')"), {"id": order_id, "d": day}
        )
    engine.dispose()


@pytest.fixture
def shop(source_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SourceSystem:
    """The test's registry and code location, as the CLI finds them."""
    directory = tmp_path / "registry"
    _write_registry(directory, _registry(source_db))
    definitions = tmp_path / "shop_definitions.py"
    definitions.write_text(DEFINITIONS.format(registry=str(directory)))
    monkeypatch.setattr(migration_cli, "REGISTRY_DIR", directory)
    monkeypatch.setattr(cli, "DEFINITIONS_FILE", str(definitions))
    return load_registry(directory)[0]


@pytest.fixture
def instance_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own for the instance `dp materialize` writes to, dropped afterwards."""
    name = f"dagster_cli_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    yield name
    drop_dagster_db(name)


@pytest.fixture
def stack_instance(tmp_path: Path, instance_db: str, monkeypatch: pytest.MonkeyPatch):
    def open_instance() -> dg.DagsterInstance:
        for name, value in dagster_pg_env().items():
            monkeypatch.setenv(name, value)
        return dg.DagsterInstance.from_config(str(tmp_path / "var" / "dagster_home"))

    return open_instance


def _load(
    source: SourceSystem, tiers: list[str], table: str = "orders", **kwargs
) -> dg.ExecuteInProcessResult:
    """A load in this process, into the same lake and warehouse the CLI uses (under PLATFORM_VAR_DIR)."""
    defs = build_source_defs(source)
    resources = {**defs.resources, "lake": LocalLake(), "warehouse": DuckDBWarehouse()}
    keys = [table_key(source, source.table(table), tier) for tier in tiers]
    return dg.materialize(list(defs.assets), selection=keys, resources=resources, **kwargs)


def _load_days(source: SourceSystem, days: list[str]) -> None:
    for day in days:
        result = _load(source, ["raw", "cleansed"], partition_key=day)
        assert result.success


def _rows(lake: LocalLake, tier: Tier, day: str) -> list[int]:
    table = lake.read_parquet(tier, DOMAIN, ORDERS, LakePartition.from_key(day))
    return sorted(table.column("order_id").to_pylist())


# --- preflight ----------------------------------------------------------------------------------


def test_preflight_of_a_good_entry_lists_its_columns_and_casts(shop, capsys):
    assert main(["migration", "preflight", "--source", "shop"]) == 0
    out = capsys.readouterr().out
    assert "shop.orders: OK, 5 columns" in out
    assert "shop.customers: OK, 2 columns" in out
    # A uuid is read as its text, through a cast; plain columns are not listed.
    assert "ref: uuid -> string, read through a cast: ref::text" in out
    assert "order_id:" not in out
    assert "preflight: 2 of 2 tables OK" in out


def test_preflight_of_a_broken_entry_names_file_table_and_column(source_db, tmp_path, capsys):
    directory = tmp_path / "broken"
    path = _write_registry(directory, _registry(source_db, primary_key=["order_no"]))
    args = ["migration", "preflight", "--registry", str(directory)]
    assert main(args) == 1
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("shop.orders:")]
    assert line.startswith("shop.orders: FAILED:")
    assert str(path) in line and "table 'orders'" in line and "'order_no'" in line
    assert "primary_key" in line
    assert "shop.customers: OK" in out  # one bad entry does not hide the others
    assert "1 FAILED" in out

    # --table narrows to that entry (of every source); an unsupported type is refused by name.
    engine = sa.create_engine(source_db)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers ADD COLUMN home POINT"))
    engine.dispose()
    assert main([*args, "--table", "customers"]) == 1
    out = capsys.readouterr().out
    assert "shop.orders" not in out
    assert "table 'customers'" in out and "column 'home' has type 'point'" in out


def test_preflight_of_an_unreachable_source_fails_once_per_source(tmp_path, capsys):
    directory = tmp_path / "gone"
    _write_registry(directory, _registry("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_x"))
    assert main(["migration", "preflight", "--registry", str(directory)]) == 1
    out = capsys.readouterr().out
    assert "shop: FAILED:" in out and "no_such_db_x" in out
    assert "preflight: 0 of 2 tables OK, 2 FAILED" in out


def test_preflight_on_the_aws_profile_reads_the_url_from_url_env(source_db, tmp_path, monkeypatch, capsys):
    directory = tmp_path / "aws"
    # The local_url is wrong on purpose: on the aws profile the registry's url_env is the URL.
    _write_registry(directory, _registry("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db_x"))
    monkeypatch.setenv("PLATFORM_PROFILE", "aws")
    monkeypatch.delenv("SHOP_TEST_URL", raising=False)
    args = ["migration", "preflight", "--registry", str(directory)]
    assert main(args) == 1
    assert "$SHOP_TEST_URL is not set" in capsys.readouterr().out
    monkeypatch.setenv("SHOP_TEST_URL", source_db)
    assert main(args) == 0
    assert "preflight: 2 of 2 tables OK" in capsys.readouterr().out


def test_preflight_of_an_unknown_table_is_a_usage_error(shop, capsys):
    assert main(["migration", "preflight", "--table", "nope"]) == 2
    assert "shop.orders" in capsys.readouterr().err  # the known tables are named


# --- reset --------------------------------------------------------------------------------------


def test_reset_removes_the_tables_lake_objects_and_warehouse_table_and_the_next_load_starts_over(
    shop, capsys
):
    lake, warehouse = LocalLake(), DuckDBWarehouse()
    _load_days(shop, DAYS[:2])
    assert _load(shop, ["raw", "cleansed"], table="customers").success
    raw, processed = (dataset_prefix(t, DOMAIN, ORDERS) for t in (Tier.RAW, Tier.PROCESSED))
    state_key = raw + "_state.json"
    assert lake.list_objects(raw) and lake.list_objects(processed) and lake.exists(state_key)
    assert warehouse.table_exists("migration_shop.orders")

    # Without --yes: says what it would delete, deletes nothing.
    assert main(["migration", "reset", "shop.orders"]) == 1
    out = capsys.readouterr().out
    assert "would delete" in out and "2 objects" in out and "_state.json" in out
    assert "warehouse table migration_shop.orders" in out
    assert lake.exists(state_key) and warehouse.table_exists("migration_shop.orders")

    assert main(["migration", "reset", "shop.orders", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "dp migration resync shop.orders" in out
    assert lake.list_objects(raw) == [] and lake.list_objects(processed) == []
    assert not lake.exists(state_key)
    assert not warehouse.table_exists("migration_shop.orders")
    # Another table of the source is left alone.
    assert lake.list_objects(dataset_prefix(Tier.RAW, DOMAIN, "shop__customers"))
    assert warehouse.table_exists("migration_shop.customers")

    # The next load reads the partition from the start (the watermark is gone with the state).
    result = _load(shop, ["raw"], partition_key=DAYS[0])
    assert result.success
    [materialization] = result.asset_materializations_for_node(f"{DOMAIN}__shop__raw__orders")
    assert materialization.metadata["rows_written"].value == 2
    assert _rows(lake, Tier.RAW, DAYS[0]) == [10, 11]

    # A second reset finds what the load wrote; a third finds nothing.
    assert main(["migration", "reset", "shop.orders", "--yes"]) == 0
    assert main(["migration", "reset", "shop.orders", "--yes"]) == 0
    assert "nothing to reset" in capsys.readouterr().out


def test_reset_of_an_unknown_table_names_the_known_ones(shop, capsys):
    assert main(["migration", "reset", "shop.nope", "--yes"]) == 2
    assert "has no table 'nope'" in capsys.readouterr().err


# --- resync -------------------------------------------------------------------------------------


def _delete_order(url: str, order_id: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM orders WHERE order_id = :id"), {"id": order_id})
    engine.dispose()


def test_resync_reloads_only_the_range_and_clears_its_blocks(shop, source_db, stack_instance, capfd):
    lake = LocalLake()
    _load_days(shop, DAYS)
    before = {o.key: o.last_modified for o in lake.list_objects(dataset_prefix(Tier.RAW, DOMAIN, ORDERS))}
    # The source loses a row the append table holds, and gains a late one below the watermark.
    _delete_order(source_db, 21)
    _late_order(source_db, 15, date(2026, 2, 2))
    # The next load of 2026-02-02 fails its blocking check: the partition is held back.
    assert not _load(shop, ["raw"], partition_key=DAYS[1], raise_on_error=False).success
    assert LoadState(lake, DOMAIN, ORDERS).blocked(LakePartition.from_key(DAYS[1])) is not None

    code = main(["migration", "resync", "shop.orders", "--from", DAYS[1], "--to", DAYS[2]])
    out = capfd.readouterr().out
    assert code == 0, out
    assert "2026-02-02...2026-02-03 (2 partitions): deleted" in out
    assert f"{DAYS[1]}...{DAYS[2]}: success" in out
    assert "resynced" in out

    assert _rows(lake, Tier.RAW, DAYS[1]) == [15, 20]
    assert _rows(lake, Tier.PROCESSED, DAYS[1]) == [15, 20]
    assert _rows(lake, Tier.RAW, DAYS[2]) == [30, 31]
    state = LoadState(lake, DOMAIN, ORDERS)
    assert state.blocks() == {}
    assert state.watermark(LakePartition.from_key(DAYS[1])) is not None
    # The partition outside the range was not rewritten.
    after = {o.key: o.last_modified for o in lake.list_objects(dataset_prefix(Tier.RAW, DOMAIN, ORDERS))}
    assert {k: v for k, v in after.items() if "day=01" in k} == {
        k: v for k, v in before.items() if "day=01" in k
    }
    count = DuckDBWarehouse().query("SELECT count(*) AS n FROM migration_shop.orders").column("n")[0]
    assert count.as_py() == 6  # 10, 11 / 15, 20 / 30, 31

    # The runs are the stack instance's, raw and cleansed, for exactly the range.
    instance = stack_instance()
    for tier in ("raw", "cleansed"):
        key = table_key(shop, shop.table("orders"), tier)
        assert instance.get_materialized_partitions(key) == set(DAYS[1:])

    capfd.readouterr()
    assert main(["migration", "status", "shop.orders"]) == 0
    assert "shop.orders: nothing blocked" in capfd.readouterr().out


def test_resync_refuses_a_range_outside_the_partitions_and_a_range_of_an_unpartitioned_table(shop, capsys):
    assert main(["migration", "resync", "shop.orders", "--from", "2026-01-01", "--to", "2026-01-02"]) == 2
    assert "not a range of the partitions of table 'orders' (2026-02-01 to" in capsys.readouterr().err
    assert main(["migration", "resync", "shop.customers", "--from", DAYS[0], "--to", DAYS[0]]) == 2
    assert "not partitioned" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["migration", "resync", "shop.orders", "--from", DAYS[0]])


def test_resync_without_run_only_forgets_and_says_how_to_load(shop, capsys):
    lake = LocalLake()
    _load_days(shop, DAYS[:1])
    assert main(["migration", "resync", "shop.customers", "--no-run"]) == 0  # never loaded: nothing to delete
    assert main(["migration", "resync", "shop.orders", "--no-run"]) == 0  # the whole table
    out = capsys.readouterr().out
    assert "the whole table: deleted 1 raw file(s)" in out
    assert (
        "dp materialize --select migration/shop/raw/orders,migration/shop/cleansed/orders --from 2026-02-01"
        in out
    )
    assert lake.list_objects(dataset_prefix(Tier.RAW, DOMAIN, ORDERS)) == []
    assert LoadState(lake, DOMAIN, ORDERS).watermark(LakePartition.from_key(DAYS[0])) is None
    # The cleansed tier stays until the next load rewrites it.
    assert lake.list_objects(dataset_prefix(Tier.PROCESSED, DOMAIN, ORDERS))


# --- dp materialize: a failed check prints its figures --------------------------------------------


def test_materialize_prints_the_failed_checks_figures_and_the_run_failure(
    shop, source_db, stack_instance, capfd
):
    _load_days(shop, DAYS[:2])
    # The source loses a row the append table already holds: the lake keeps it, the partition differs.
    _delete_order(source_db, 21)

    code = main(["materialize", "--select", "migration/shop/raw/orders", "--partition", DAYS[1]])
    out = capfd.readouterr().out
    assert code == 1, out
    assert f"{DAYS[1]}: failed" in out
    assert "check migration/shop/raw/orders:source_row_count_matches failed (ERROR, blocking)" in out
    figures = out[out.index("source_row_count_matches failed") :]
    assert re.search(r'"source(_rows)?": 1\b', figures) and re.search(r'"lake(_rows)?": 2\b', figures)
    assert "run failure:" in out
    [run] = stack_instance().get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE

    # `dp migration status` shows the load that failed its check.
    capfd.readouterr()
    assert main(["migration", "status", "shop.orders"]) == 0
    out = capfd.readouterr().out
    assert f"raw      {DAYS[1]} check_failed" in out


def test_materialize_exits_1_when_a_non_blocking_check_fails(stack_instance, capfd):
    # An object off the lake's path conventions fails lake_inventory's (non-blocking) check.
    LocalLake().put_bytes("raw/lake_ops/misplaced.parquet", b"x")
    assert main(["materialize", "--select", "lake_ops/lake_inventory"]) == 1
    out = capfd.readouterr().out
    assert ": success, but 1 check(s) failed" in out
    assert "check lake_ops/lake_inventory:lake_paths_follow_conventions failed (ERROR)" in out
    assert "nonconforming_objects: 1" in out and "misplaced.parquet" in out


# --- status -------------------------------------------------------------------------------------


def test_status_shows_blocks_with_their_figures_and_the_latest_loads(shop, capsys):
    lake = LocalLake()
    _load_days(shop, DAYS[:1])
    state = LoadState(lake, DOMAIN, ORDERS)
    figures = {"source": 3, "lake": 2}
    state.block(LakePartition.from_key(DAYS[1]), "source_row_count_matches", "rows differ", figures)
    state.save()

    assert main(["migration", "status"]) == 0
    out = capsys.readouterr().out
    assert "shop.orders: 1 blocked partition(s)" in out
    assert f"blocked {DAYS[1]} since " in out and "check source_row_count_matches failed: rows differ" in out
    assert "source: 3" in out and "lake: 2" in out
    assert f"raw      {DAYS[0]} loaded rows=2" in out and f"cleansed {DAYS[0]} loaded rows=2" in out
    assert "shop.customers: nothing blocked" in out
    assert f"dp migration resync shop.orders --from {DAYS[1]} --to {DAYS[1]}" in out

    assert main(["migration", "status", "shop.customers"]) == 0
    out = capsys.readouterr().out
    assert "shop.orders" not in out and "dp migration resync" not in out
