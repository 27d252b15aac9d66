"""The card-company source generator against the PostgreSQL and MariaDB servers of this machine."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url

from services.generators.card_db import apply_day2, generate
from services.generators.schema import TABLES

SCALE = 5_000
END = date(2024, 6, 14)  # mid-month: the next day updates mart rows as well as adding some
DAYS = 20
PK = {t.name: t.primary_key for t in TABLES}
INVALID = {"N/A", "", " ", "-", "2024-13-45"}


@pytest.fixture(params=["postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    return rows(engine, sql, **params)[0][0]


def snapshot(engine: Engine) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Every row of every table, keyed by primary key."""
    found = {}
    for table in TABLES:
        width = len(table.primary_key)
        found[table.name] = {
            r[:width]: r[width:]
            for r in rows(engine, f"SELECT {', '.join(table.primary_key)}, t.* FROM {table.name} t")
        }
    return found


def checksums(engine: Engine) -> dict[str, str]:
    """A digest of each table's full contents, in primary-key order."""
    sums = {}
    with engine.connect() as conn:
        mysql = engine.dialect.name == "mysql"
        if mysql:
            conn.execute(text("SET SESSION group_concat_max_len = 1073741824"))
        for table in TABLES:
            order = ", ".join(table.primary_key)
            if mysql:
                fields = ", ".join(f"COALESCE({c}, '<null>')" for c in table.column_names)
                sql = f"SELECT MD5(GROUP_CONCAT(CONCAT_WS('#', {fields}) ORDER BY {order} SEPARATOR '|')), "
            else:
                sql = f"SELECT md5(string_agg(t::text, '|' ORDER BY {order})), "
            sums[table.name] = str(conn.execute(text(sql + f"COUNT(*) FROM {table.name} t")).one())
    return sums


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def rrn_ok(rrn: str, birth: date, gender: str) -> bool:
    if not re.fullmatch(r"\d{6}-\d{7}", rrn) or rrn[:6] != birth.strftime("%y%m%d"):
        return False
    century_digit = {("M", 19): "1", ("F", 19): "2", ("M", 20): "3", ("F", 20): "4"}
    if rrn[7] != century_digit[(gender, birth.year // 100)]:
        return False
    digits = [int(d) for d in rrn.replace("-", "")]
    weights = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5]
    return (11 - sum(d * w for d, w in zip(digits, weights, strict=False)) % 11) % 10 == digits[12]


def mart_from_transactions(engine: Engine) -> dict[tuple[str, str], tuple[int, int, date]]:
    """What the mart should hold: approved won transactions per month and (still existing) customer."""
    month = (
        "to_char(t.txn_date, 'YYYYMM')"
        if engine.dialect.name == "postgresql"
        else "DATE_FORMAT(t.txn_date, '%Y%m')"
    )
    found = rows(
        engine,
        f"""SELECT {month}, c.customer_id, COUNT(*), SUM(t.amount), MAX(t.txn_date)
            FROM card_transactions t JOIN cards c ON c.card_id = t.card_id
            WHERE t.status = 'approved' AND t.currency = 'KRW'
            GROUP BY {month}, c.customer_id""",
    )
    return {(m, str(c)): (int(n), int(total), last) for m, c, n, total, last in found}


def assert_mart_matches(engine: Engine, keys: set[tuple[str, str]] | None = None) -> None:
    """Every valid mart value equals the aggregate of the transactions (for `keys`, default all)."""
    expected = mart_from_transactions(engine)
    mart = {
        (r[0], r[1]): r[2:]
        for r in rows(
            engine,
            "SELECT base_month, customer_id, txn_count, total_amount, last_txn_date FROM mart_customer_monthly",
        )
    }
    if keys is None:
        assert set(mart) == set(expected)
        keys = set(mart)
    checked = 0
    for key in keys:
        count, total, last = mart[key]
        want_count, want_total, want_last = expected[key]
        if count.strip() not in INVALID:
            assert int(count) == want_count, key
        if total.strip() not in INVALID:
            assert Decimal(total.replace(",", "")) == want_total, key
        if last not in INVALID:
            assert datetime.strptime(last.replace("-", ""), "%Y%m%d").date() == want_last, key
        checked += 1
    assert checked


# --- generate ----------------------------------------------------------------------------
def test_tables_sizes_keys_and_relations(db_url: str, engine: Engine) -> None:
    loaded = generate(db_url, SCALE, days=DAYS, end_date=END, seed=7, progress=False)

    customers = SCALE // 10
    assert loaded == {
        "customers": customers,
        "accounts": customers * 6 // 5,
        "cards": customers * 3 // 2,
        "merchants": 100,
        "card_transactions": SCALE,
        "mart_customer_monthly": loaded["mart_customer_monthly"],
    }
    # the window spans May and June: at most two mart rows per customer
    assert customers // 2 < loaded["mart_customer_monthly"] <= 2 * customers
    inspector = inspect(engine)
    for table in TABLES:
        assert scalar(engine, f"SELECT COUNT(*) FROM {table.name}") == loaded[table.name]
        assert tuple(inspector.get_pk_constraint(table.name)["constrained_columns"]) == table.primary_key
        assert [c["name"] for c in inspector.get_columns(table.name)] == table.column_names
        key = table.primary_key[0] if len(table.primary_key) == 1 else "CONCAT(base_month, '/', customer_id)"
        assert scalar(engine, f"SELECT COUNT(DISTINCT {key}) FROM {table.name}") == loaded[table.name]
    assert [ix["column_names"] for ix in inspector.get_indexes("card_transactions")] == [["txn_date"]]
    assert inspector.get_foreign_keys("cards") == []

    # no foreign keys, but every reference resolves
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM accounts a LEFT JOIN customers c USING (customer_id) WHERE c.name IS NULL",
        )
        == 0
    )
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM cards k JOIN accounts a USING (account_id) WHERE a.customer_id <> k.customer_id",
        )
        == 0
    )
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM cards k LEFT JOIN accounts a USING (account_id) WHERE a.status IS NULL",
        )
        == 0
    )
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM card_transactions t LEFT JOIN cards k USING (card_id) WHERE k.status IS NULL",
        )
        == 0
    )
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM card_transactions t LEFT JOIN merchants m USING (merchant_id) WHERE m.name IS NULL",
        )
        == 0
    )
    # every customer has an account, every account a card
    assert scalar(engine, "SELECT COUNT(DISTINCT customer_id) FROM accounts") == customers
    assert scalar(engine, "SELECT COUNT(DISTINCT account_id) FROM cards") == customers * 6 // 5

    # transactions: ids 1..n in created_at order, all inside the window, dates consistent
    first, last, low, high = rows(
        engine, "SELECT MIN(txn_id), MAX(txn_id), MIN(txn_date), MAX(txn_date) FROM card_transactions"
    )[0]
    assert (first, last, low, high) == (1, SCALE, END - timedelta(days=DAYS - 1), END)
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM (SELECT created_at, LAG(created_at) OVER (ORDER BY txn_id) AS prev FROM card_transactions) x WHERE created_at < prev",
        )
        == 0
    )
    for txn_at, txn_date, created_at in rows(
        engine, "SELECT txn_at, txn_date, created_at FROM card_transactions"
    ):
        assert txn_at <= created_at and txn_at.date() == txn_date == created_at.date()
    statuses = dict(rows(engine, "SELECT status, COUNT(*) FROM card_transactions GROUP BY status"))
    assert set(statuses) == {"approved", "declined", "refunded"} and statuses["approved"] > 0.85 * SCALE
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM card_transactions WHERE installment_months > 0 AND currency <> 'KRW'",
        )
        == 0
    )
    # a card pays only once it is issued, and only while active
    assert (
        scalar(
            engine,
            "SELECT COUNT(*) FROM card_transactions t JOIN cards k USING (card_id) WHERE k.issued_at > t.txn_date OR k.status <> 'ACTIVE'",
        )
        == 0
    )

    # the mart agrees with the transactions it summarizes
    assert_mart_matches(engine)


def test_personal_data_looks_korean_and_is_consistent(db_url: str, engine: Engine) -> None:
    generate(db_url, SCALE, days=DAYS, end_date=END, seed=11, progress=False)

    found = rows(
        engine, "SELECT name, rrn, phone, email, birth_date, gender, grade, address, joined_at FROM customers"
    )
    for name, rrn, phone, email, birth, gender, _grade, address, joined in found:
        assert re.fullmatch(r"[가-힣]{3}", name), name
        assert rrn_ok(rrn, birth, gender), (rrn, birth, gender)
        assert re.fullmatch(r"010-[2-9]\d{3}-\d{4}", phone), phone
        assert email is None or re.fullmatch(r"[a-z0-9.]+@[a-z]+\.[a-z]+", email), email
        assert re.fullmatch(r"[가-힣]+ [가-힣 ]+ [가-힣0-9]+ \d+(, \d+동 \d+호)?", address), address
        assert 19 <= (END - birth).days / 365.25 <= 86 and joined.date() - birth >= timedelta(days=19 * 365)
    assert {g for *_, g, _, _ in found} == {"BASIC", "SILVER", "GOLD", "VIP"}
    grades = dict(rows(engine, "SELECT grade, COUNT(*) FROM customers GROUP BY grade"))
    n = len(found)
    assert grades["BASIC"] > 0.6 * n and grades["SILVER"] > 0.12 * n and grades["VIP"] < 0.05 * n
    assert 0 < sum(1 for f in found if f[3] is None) < 0.1 * n  # a few without e-mail
    assert {f[5] for f in found} == {"M", "F"}

    cards = rows(engine, "SELECT card_no, brand, issued_at, expires_at FROM cards")
    for card_no, brand, issued, expires in cards:
        assert re.fullmatch(r"\d{4}-\d{4}-\d{4}-\d{4}", card_no), card_no
        assert luhn_ok(card_no.replace("-", "")), card_no
        assert brand != "VISA" or card_no.startswith("4")
        assert issued < expires and (expires + timedelta(days=1)).day == 1  # valid through a month's end
    assert scalar(engine, "SELECT COUNT(DISTINCT card_no) FROM cards") == len(cards)
    assert not any(luhn_ok(c.replace("-", "")[:-1] + str((int(c[-1]) + 1) % 10)) for c, *_ in cards[:50])
    assert scalar(engine, "SELECT COUNT(DISTINCT account_no) FROM accounts") == SCALE // 10 * 6 // 5


def test_mart_is_all_strings_with_some_invalid_values(db_url: str, engine: Engine) -> None:
    loaded = generate(db_url, SCALE, days=DAYS, end_date=END, seed=7, progress=False)

    columns = inspect(engine).get_columns("mart_customer_monthly")
    assert all(type(c["type"]).__name__ == "VARCHAR" for c in columns), columns
    mart = rows(
        engine,
        "SELECT base_month, customer_id, txn_count, total_amount, last_txn_date, grade, phone, is_vip FROM mart_customer_monthly",
    )
    assert all(isinstance(v, str) for r in mart for v in r)
    assert {r[0] for r in mart} == {"202405", "202406"}
    invalid = [sum(1 for r in mart if r[i] in INVALID) for i in (2, 3, 4)]
    assert all(k >= 1 for k in invalid) and sum(invalid) < 0.02 * 3 * len(mart), invalid
    assert any(r[4] == "2024-13-45" or r[4].strip() in INVALID for r in mart)
    totals = [r[3] for r in mart if r[3] not in INVALID]
    assert any(re.fullmatch(r"\d+\.\d\d", t) for t in totals) and any(
        re.fullmatch(r"\d{1,3}(,\d{3})+", t) for t in totals
    )
    dates = [r[4] for r in mart if r[4] not in INVALID]
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in dates) and any(
        re.fullmatch(r"\d{8}", d) for d in dates
    )
    grades = {r[5] for r in mart}
    assert {g.strip().upper() for g in grades} <= {"BASIC", "SILVER", "GOLD", "VIP"}
    assert any(g != g.strip() for g in grades) and any(g.strip() != g.strip().upper() for g in grades)
    assert all((r[7] == "Y") == (r[5].strip().upper() == "VIP") for r in mart)
    assert all(re.fullmatch(r"010-?\d{4}-?\d{4}", r[6]) for r in mart)
    assert len(mart) == loaded["mart_customer_monthly"]


def test_distributions_are_skewed(db_url: str, engine: Engine) -> None:
    generate(db_url, SCALE, days=DAYS, end_date=END, seed=7, progress=False)

    def top_tenth_share(column: str, population: int) -> float:
        counts = sorted(
            (c for (c,) in rows(engine, f"SELECT COUNT(*) FROM card_transactions GROUP BY {column}")),
            reverse=True,
        )
        return sum(counts[: population // 10]) / SCALE

    assert top_tenth_share("merchant_id", 100) > 0.30
    assert top_tenth_share("card_id", SCALE // 10 * 3 // 2) > 0.25
    amounts = sorted(
        float(a) for (a,) in rows(engine, "SELECT amount FROM card_transactions WHERE currency = 'KRW'")
    )
    median, mean = amounts[len(amounts) // 2], sum(amounts) / len(amounts)
    assert mean > 1.5 * median  # log-normal: a long right tail
    assert amounts[int(len(amounts) * 0.99)] > 10 * median
    # more spending at lunch and in the evening than at night
    hours = [t.hour for (t,) in rows(engine, "SELECT txn_at FROM card_transactions")]
    assert hours.count(12) > 5 * hours.count(4) and hours.count(19) > 5 * hours.count(3)


def test_same_seed_same_data(db_url: str, engine: Engine) -> None:
    generate(db_url, SCALE, days=DAYS, end_date=END, seed=5, progress=False)
    first = checksums(engine)
    generate(db_url, SCALE, days=DAYS, end_date=END, seed=5, progress=False)
    assert checksums(engine) == first
    generate(db_url, SCALE, days=DAYS, end_date=END, seed=6, progress=False)
    other = checksums(engine)
    assert all(other[t] != first[t] for t in first)


def test_creates_the_database_if_missing(db_url: str, engine: Engine) -> None:
    url = make_url(db_url)
    missing = url.set(database=f"{url.database}_{uuid.uuid4().hex[:6]}")
    target = missing.render_as_string(hide_password=False)
    try:
        assert generate(target, 200, days=3, end_date=END, seed=1, progress=False)["card_transactions"] == 200
        check = create_engine(target)
        assert scalar(check, "SELECT COUNT(*) FROM card_transactions") == 200
        check.dispose()
    finally:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f'DROP DATABASE IF EXISTS "{missing.database}" WITH (FORCE)'))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{missing.database}`"))


def test_mariadb_without_local_infile_falls_back_to_inserts(
    mariadb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(mariadb_url)
    try:
        generate(mariadb_url, 2_000, days=5, end_date=END, seed=3, progress=False)
        fast = checksums(engine)
        with caplog.at_level(logging.WARNING, logger="services.generators.db"):
            generate(mariadb_url + "?local_infile=0", 2_000, days=5, end_date=END, seed=3, progress=False)
        refusals = [
            r.getMessage() for r in caplog.records if "LOAD DATA LOCAL INFILE refused" in r.getMessage()
        ]
        assert len(refusals) == 1 and "batched multi-row INSERTs" in refusals[0]
        assert checksums(engine) == fast
    finally:
        engine.dispose()


# --- the next day -----------------------------------------------------------------------
def changes(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, set]]:
    """Per table, the keys inserted, updated (any column differs) and deleted between two snapshots."""
    found = {}
    for table, old in before.items():
        new = after[table]
        found[table] = {
            "inserted": new.keys() - old.keys(),
            "updated": {k for k in old.keys() & new.keys() if old[k] != new[k]},
            "deleted": old.keys() - new.keys(),
        }
    return found


def counts(diff: dict[str, dict[str, set]]) -> dict[str, dict[str, int]]:
    return {table: {action: len(keys) for action, keys in actions.items()} for table, actions in diff.items()}


COLUMNS = {t.name: t.column_names for t in TABLES}


def value(table: str, row: tuple[Any, ...], column: str) -> Any:
    return row[COLUMNS[table].index(column)]


def test_day2_changes_exactly_what_it_reports(db_url: str, engine: Engine) -> None:
    end = date(2024, 6, 29)  # the next day still in June, the one after in July
    generate(db_url, SCALE, days=DAYS, end_date=end, seed=7, progress=False)
    before = snapshot(engine)

    summary = apply_day2(db_url, seed=7, share=0.05)

    after = snapshot(engine)
    diff = changes(before, after)
    assert summary == counts(diff)
    day = end + timedelta(days=1)
    customers = len(before["customers"])
    deleted = customers // 100
    assert summary["customers"] == {
        "inserted": round((customers - deleted) * 0.05),
        "updated": round((customers - deleted) * 0.05),
        "deleted": deleted,
    }
    assert summary["accounts"]["inserted"] > summary["customers"]["inserted"] > 0
    assert summary["cards"]["inserted"] > summary["accounts"]["inserted"]
    assert summary["accounts"]["deleted"] >= deleted and summary["cards"]["deleted"] >= deleted
    assert summary["accounts"]["updated"] == summary["cards"]["updated"] == 0
    assert summary["merchants"] == {"inserted": 0, "updated": 2, "deleted": 0}
    assert summary["card_transactions"] == {"inserted": round(SCALE / DAYS), "updated": 0, "deleted": 0}
    assert (
        summary["mart_customer_monthly"]["updated"] > 0 and summary["mart_customer_monthly"]["deleted"] == 0
    )

    # changed and new rows carry the new day
    gone = {k[0] for k in diff["customers"]["deleted"]}
    new_customers = {k[0] for k in diff["customers"]["inserted"]}
    assert min(new_customers) > max(k[0] for k in before["customers"])
    for key in diff["customers"]["inserted"] | diff["customers"]["updated"]:
        assert value("customers", after["customers"][key], "updated_at").date() == day
    for key in diff["customers"]["updated"]:
        old, new = before["customers"][key], after["customers"][key]
        assert any(
            value("customers", new, c) != value("customers", old, c) for c in ("grade", "phone", "address")
        )
        assert all(
            value("customers", new, c) == value("customers", old, c) for c in ("name", "rrn", "joined_at")
        )
    for key in diff["customers"]["inserted"]:
        row = after["customers"][key]
        assert value("customers", row, "joined_at").date() == day and value("customers", row, "is_active")
    for key in diff["merchants"]["updated"]:
        assert value("merchants", after["merchants"][key], "updated_at").date() == day
    # deleted customers took their accounts and cards along; new ones came with theirs
    for table in ("accounts", "cards"):
        assert {value(table, before[table][k], "customer_id") for k in diff[table]["deleted"]} == gone
        assert not any(value(table, r, "customer_id") in gone for r in after[table].values())
        assert {
            value(table, after[table][k], "customer_id") for k in diff[table]["inserted"]
        } == new_customers
        assert all(value(table, after[table][k], "status") == "ACTIVE" for k in diff[table]["inserted"])
    # transactions: ids continue, all on the new day
    new_txns = sorted(k[0] for k in diff["card_transactions"]["inserted"])
    assert new_txns == list(range(SCALE + 1, SCALE + 1 + len(new_txns)))
    for txn_id in new_txns:
        row = after["card_transactions"][(txn_id,)]
        assert value("card_transactions", row, "txn_date") == day
        assert value("card_transactions", row, "created_at").date() == day
    # the mart: only June rows changed, and they agree with the transactions
    touched = diff["mart_customer_monthly"]["inserted"] | diff["mart_customer_monthly"]["updated"]
    assert {k[0] for k in touched} == {"202406"}
    assert_mart_matches(engine, keys=touched)

    # once more: the day after, the first of July
    again = apply_day2(db_url, seed=7, share=0.05)
    third = snapshot(engine)
    assert again == counts(changes(after, third))
    assert scalar(engine, "SELECT MAX(txn_date) FROM card_transactions") == date(2024, 7, 1)
    first_july = scalar(
        engine, "SELECT MIN(txn_id) FROM card_transactions WHERE txn_date = :d", d=date(2024, 7, 1)
    )
    assert first_july == SCALE + len(new_txns) + 1
    assert again["customers"]["deleted"] == round(len(after["customers"]) * 0.01)
    assert again["mart_customer_monthly"]["inserted"] > 0 and again["mart_customer_monthly"]["updated"] == 0
    assert {k[0] for k in third["mart_customer_monthly"].keys() - after["mart_customer_monthly"].keys()} == {
        "202407"
    }


def test_day2_needs_a_generated_database(db_url: str) -> None:
    with pytest.raises(ValueError, match=r"has no transactions: run generate\(\) first"):
        apply_day2(db_url)
