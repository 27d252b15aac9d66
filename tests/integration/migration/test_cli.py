"""`dp erase-customer`: a clear refusal for an unknown source; an unknown customer is reported as not
found (exit 1) and the request is still audited."""

from services.cli import main


def test_unknown_source_is_refused_by_name(capsys, monkeypatch):
    monkeypatch.setenv("PLATFORM_PII_KEY", "x" * 10)
    assert main(["erase-customer", "--source", "nope", "--id", "1", "--requested-by", "t"]) == 2
    assert "no source 'nope'" in capsys.readouterr().err


def test_unknown_customer_is_reported_not_found_and_still_audited(capsys, monkeypatch):
    from resources.profiles import build_resources
    from resources.secrets import generate_key

    monkeypatch.setenv("PLATFORM_PII_KEY", generate_key())
    assert main(["erase-customer", "--source", "card_db", "--id", "424242", "--requested-by", "dpo"]) == 1
    out = capsys.readouterr()
    assert "customer '424242' not found" in out.err and "nothing erased" in out.err
    assert "erased customer" not in out.out
    audit = build_resources()["warehouse"].query(
        "SELECT requested_by, rows_removed FROM migration_status.erasure_audit"
    )
    assert audit.to_pylist() == [{"requested_by": "dpo", "rows_removed": 0}]


def test_demo_window_runs_from_partition_start_to_yesterday_within_retention():
    from datetime import date

    from services.demo_sources import SourceLocation, TableDates, demo_window, source_location

    # The registry's card_db: card_transactions from 2026-11-01, kept 400 days.
    assert demo_window(source_location(), today=date(2026, 11, 24)) == (date(2026, 11, 1), date(2026, 11, 23))
    assert demo_window(source_location(), today=date(2026, 11, 1)) == (date(2026, 11, 1), date(2026, 11, 1))
    kept = SourceLocation(
        name="s",
        url_env="X",
        local_url="y",
        tables=(TableDates(name="t", partition_start=date(2026, 1, 1), retention_days=30),),
    )
    # Older days would be deleted by retention on the first load: not generated.
    assert demo_window(kept, today=date(2026, 11, 24)) == (date(2026, 10, 25), date(2026, 11, 23))


def test_gen_card_db_fills_exactly_the_partitions(pg_url, capsys):
    from datetime import date, timedelta

    import sqlalchemy as sa

    assert main(["gen-card-db", "--url", pg_url, "--scale", "2000"]) == 0
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        first, last = conn.execute(
            sa.text("SELECT min(txn_date), max(txn_date) FROM card_transactions")
        ).one()
    engine.dispose()
    assert first == date(2026, 11, 1)  # the registry's partition_start of card_transactions
    assert last == date.today() - timedelta(days=1)
