"""A sample card-company customer database: the on-prem source of the migration domain (seed 001).

`generate()` drops and recreates six tables (customers, accounts, cards,
merchants, card_transactions and the all-string mart_customer_monthly) and
bulk-loads them in chunks; `apply_day2()` then moves the same database one day
on, with inserts, updates, hard deletes and one more day of transactions, so
incremental and upsert loads have something to find. PostgreSQL and MariaDB,
through a SQLAlchemy URL.

Sizes follow `scale`, the number of transactions: customers = scale // 10,
accounts = 1.2x and cards = 1.5x the customers, merchants = max(100, scale // 100).
The same seed and end date give the same data.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from services.generators.activity import (
    GRADE_USE,
    MartTotals,
    Population,
    daily_counts,
    mart_table,
    transactions,
    zipf_weights,
)
from services.generators.db import CardDb
from services.generators.entities import (
    CATEGORY_NAMES,
    CATEGORY_POPULARITY,
    GRADES,
    Accounts,
    Cards,
    Customers,
    Merchants,
)
from services.generators.schema import (
    ACCOUNTS,
    CARD_TRANSACTIONS,
    CARDS,
    CUSTOMERS,
    MART_CUSTOMER_MONTHLY,
    MERCHANTS,
    TABLES,
    Table,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from numpy.random import Generator
    from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK_ROWS = 200_000
FIRST_JOIN = np.datetime64("2005-01-01")
CARD_EXPONENT = 0.6  # Zipf exponents: a few cards and merchants take much of the volume
MERCHANT_EXPONENT = 0.9
# Stream names for seeding: each table draws from its own stream, so one table's
# sizes never shift another's values.
_CUSTOMERS, _ACCOUNTS, _CARDS, _MERCHANTS, _TXNS, _MART, _DAY2 = range(1, 8)


def sizes(scale: int) -> dict[str, int]:
    """Rows per table (the mart's count depends on the data) for `scale` transactions."""
    customers = scale // 10
    return {
        "customers": customers,
        "accounts": customers + customers // 5,
        "cards": customers + customers // 2,
        "merchants": max(100, scale // 100),
        "card_transactions": scale,
    }


def generate(
    url: str,
    scale: int,
    days: int = 30,
    end_date: date | None = None,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, int]:
    """Drops, recreates and fills the six tables; returns rows per table.

    Transactions cover `days` days ending on `end_date` (default: yesterday);
    the database is created if it does not exist.
    """
    if scale < 100:
        raise ValueError(f"scale must be at least 100 transactions, not {scale}")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    end = np.datetime64(end_date or date.today() - timedelta(days=1), "D")
    start = end - (days - 1)
    n = sizes(scale)

    def rng(*key: int) -> Generator:
        return np.random.default_rng([seed, *key])

    customers = Customers.draw(rng(_CUSTOMERS), n["customers"], 1, FIRST_JOIN, end)
    accounts = Accounts.draw(rng(_ACCOUNTS), customers, n["accounts"], 1, end)
    cards = Cards.draw(rng(_CARDS), accounts, customers, n["cards"], 1, end)
    merchants = Merchants.draw(rng(_MERCHANTS), n["merchants"], 1, start, end)

    # Cards that could pay during the whole window: active, and issued before it began.
    can_pay = (cards.status == 0) & (cards.issued < start)
    if not can_pay.any():  # a tiny database: let any card pay
        can_pay[:] = True
    card_weight = zipf_weights(rng(_TXNS, 0), len(cards), CARD_EXPONENT) * GRADE_USE[cards.customer_grade]
    merchant_weight = (
        zipf_weights(rng(_TXNS, 1), len(merchants), MERCHANT_EXPONENT)
        * CATEGORY_POPULARITY[merchants.category]
    )
    population = Population(
        card_ids=cards.ids[can_pay],
        card_customer=np.searchsorted(customers.ids, cards.customer_id[can_pay]),
        card_weight=card_weight[can_pay],
        merchant_ids=merchants.ids,
        merchant_category=merchants.category,
        merchant_weight=merchant_weight,
    )
    window = np.arange(start, end + 1)

    loaded: dict[str, int] = {}
    with CardDb(url, create_database=True) as db:
        log.info("generating the card database (%s transactions) into %s", f"{scale:,}", db.safe_url())
        for table in TABLES:
            db.recreate(table)
        phones: list[pa.Array] = []
        for table, entity, stream in (
            (CUSTOMERS, customers, _CUSTOMERS),
            (ACCOUNTS, accounts, _ACCOUNTS),
            (CARDS, cards, _CARDS),
            (MERCHANTS, merchants, _MERCHANTS),
        ):
            with _bar(table, len(entity), progress) as bar:
                for number, lo in enumerate(range(0, len(entity), CHUNK_ROWS)):
                    data = entity.table(lo, min(lo + CHUNK_ROWS, len(entity)), rng(stream, 1 + number))
                    db.load(table, data)
                    if table is CUSTOMERS:
                        phones.append(data.column("phone").combine_chunks())
                    bar.update(data.num_rows)
            db.commit()
            loaded[table.name] = len(entity)

        totals = MartTotals(window[0].astype("datetime64[M]"), _months(window), len(customers))
        counts = daily_counts(rng(_TXNS, 2), window, scale)
        with _bar(CARD_TRANSACTIONS, scale, progress) as bar:
            for txns in transactions(lambda k: rng(_TXNS, 3 + k), 1, window, counts, population, CHUNK_ROWS):
                db.load(CARD_TRANSACTIONS, txns.table)
                totals.add(txns)
                bar.update(txns.table.num_rows)
        db.commit()
        db.create_indexes(CARD_TRANSACTIONS)
        loaded[CARD_TRANSACTIONS.name] = scale

        import pyarrow as pa

        month, customer, count, cents, last = totals.cells()
        phone = pa.concat_arrays(phones)
        with _bar(MART_CUSTOMER_MONTHLY, len(month), progress) as bar:
            for number, lo in enumerate(range(0, len(month), CHUNK_ROWS)):
                part = slice(lo, lo + CHUNK_ROWS)
                who = customer[part]
                data = mart_table(
                    rng(_MART, number),
                    month[part],
                    customers.ids[who],
                    count[part],
                    cents[part],
                    last[part],
                    customers.grade[who],
                    phone.take(pa.array(who)),
                )
                db.load(MART_CUSTOMER_MONTHLY, data)
                bar.update(data.num_rows)
        db.commit()
        loaded[MART_CUSTOMER_MONTHLY.name] = len(month)
    return loaded


# --- the next day --------------------------------------------------------------------
_CUSTOMER_CHANGES = Table(
    "stage_customer_changes",
    (("customer_id", "BIGINT"), ("grade", "VARCHAR(10)"), ("phone", "VARCHAR(20)"),
     ("address", "VARCHAR(200)"), ("updated_at", "TIMESTAMP")),
    ("customer_id",),
)  # fmt: skip
_MERCHANT_CHANGES = Table(
    "stage_merchant_changes",
    (("merchant_id", "INT"), ("name", "VARCHAR(100)"), ("city", "VARCHAR(30)"), ("updated_at", "TIMESTAMP")),
    ("merchant_id",),
)
_CUSTOMER_IDS = Table("stage_customer_ids", (("customer_id", "BIGINT"),), ("customer_id",))
_MART_ROWS = "stage_mart_rows"
DELETE_SHARE = 0.01
MERCHANT_UPDATE_SHARE = 0.4  # of `share`


def apply_day2(
    url: str, seed: int = 42, share: float = 0.05, progress: bool = False
) -> dict[str, dict[str, int]]:
    """Moves a generated database one day on (the day after its last transaction), in one transaction.

    New customers (`share` of the current count) with their accounts and cards;
    `share` of the customers updated (grade, phone and/or address); ~1% hard-deleted
    with their accounts and cards (their past transactions and mart rows stay, as
    in a ledger); some merchants renamed or moved; one more day of transactions
    (txn_id continuing); the mart's rows of that month re-aggregated for the
    customers who paid that day. Applying it again adds the day after, and so on.

    Returns {table: {"inserted": n, "updated": n, "deleted": n}}.
    """
    import pyarrow as pa

    from services.generators import korean
    from services.generators.entities import merchant_names

    if not 0 < share <= 0.5:
        raise ValueError(f"share must be in (0, 0.5], not {share}")
    summary = {t.name: {"inserted": 0, "updated": 0, "deleted": 0} for t in TABLES}
    with CardDb(url) as db:
        last_day = db.has_table("card_transactions") and db.scalar(
            "SELECT MAX(txn_date) FROM card_transactions"
        )
        if not last_day:
            raise ValueError(f"{db.safe_url()} has no transactions: run generate() first")
        day = np.datetime64(last_day, "D") + 1
        day_ts = day.astype("datetime64[s]")

        def rng(*key: int) -> Generator:
            return np.random.default_rng([seed, _DAY2, int(day.astype(np.int64)), *key])

        def stamps(r: Generator, k: int) -> np.ndarray:
            return day_ts + r.integers(8 * 3600, 22 * 3600, k).astype("timedelta64[s]")

        # Ids continue after the largest ever handed out, as from a sequence: read before the deletes.
        next_id = {
            t: int(db.scalar(f"SELECT MAX({key}) FROM {t}") or 0) + 1
            for t, key in (("customers", "customer_id"), ("accounts", "account_id"), ("cards", "card_id"))
        }

        # customers: delete ~1%, update `share` of the rest
        found = db.rows("SELECT customer_id, grade, phone FROM customers ORDER BY customer_id")
        ids = np.array([r[0] for r in found], dtype=np.int64)
        grade = np.array([GRADES.index(r[1]) for r in found], dtype=np.int8)
        phone = np.array([r[2] for r in found], dtype=object)
        r = rng(1)
        gone = r.choice(len(ids), max(1, round(len(ids) * DELETE_SHARE)), replace=False)
        db.create_temp_table(_CUSTOMER_IDS, _CUSTOMER_IDS.name)
        db.load(_CUSTOMER_IDS, pa.table({"customer_id": ids[gone]}), into=_CUSTOMER_IDS.name)
        where = f"customer_id IN (SELECT customer_id FROM {_CUSTOMER_IDS.name})"
        summary["cards"]["deleted"] = db.execute(f"DELETE FROM cards WHERE {where}")
        summary["accounts"]["deleted"] = db.execute(f"DELETE FROM accounts WHERE {where}")
        summary["customers"]["deleted"] = db.execute(f"DELETE FROM customers WHERE {where}")
        keep = np.ones(len(ids), dtype=bool)
        keep[gone] = False
        ids, grade, phone = ids[keep], grade[keep], phone[keep]

        k = round(len(ids) * share)
        chosen = np.sort(r.choice(len(ids), k, replace=False))
        fields = r.random((k, 3)) < 0.5
        fields[np.arange(k), r.integers(0, 3, k)] = True  # at least one field changes
        step = np.where(grade[chosen] == 0, 1, np.where(grade[chosen] == 3, -1, r.choice([-1, 1], k)))
        new_grade = np.where(fields[:, 0], grade[chosen] + step, grade[chosen]).astype(np.int8)
        new_phone = np.array(korean.phones(r, k).to_pylist(), dtype=object)
        same = new_phone == phone[chosen]
        new_phone[same] = [p[:-4] + f"{(int(p[-4:]) + 1) % 10_000:04d}" for p in new_phone[same]]
        new_phone = np.where(fields[:, 1], new_phone, phone[chosen])
        changes = pa.table(
            {
                "customer_id": ids[chosen],
                "grade": _where(fields[:, 0], pa.array(np.array(GRADES)[new_grade])),
                "phone": _where(fields[:, 1], pa.array(new_phone.tolist(), pa.string())),
                "address": _where(fields[:, 2], korean.addresses(r, k)),
                "updated_at": stamps(r, k),
            }
        )
        summary["customers"]["updated"] = _update_from(
            db, CUSTOMERS, "customer_id", _CUSTOMER_CHANGES, changes
        )
        grade[chosen], phone[chosen] = new_grade, new_phone

        # new customers, each with one account and one card at least
        n_new = round(len(ids) * share)
        if n_new:
            new = Customers.draw(rng(2), n_new, next_id["customers"], day, day, fresh=True)
            accounts = Accounts.draw(rng(3), new, n_new + n_new // 5, next_id["accounts"], day, fresh=True)
            cards = Cards.draw(rng(4), accounts, new, n_new + n_new // 2, next_id["cards"], day, fresh=True)
            for table, entity, stream in ((CUSTOMERS, new, 5), (ACCOUNTS, accounts, 6), (CARDS, cards, 7)):
                data = entity.table(0, len(entity), rng(stream))
                db.load(table, data)
                summary[table.name]["inserted"] = data.num_rows
                if table is CUSTOMERS:
                    ids = np.concatenate([ids, new.ids])
                    grade = np.concatenate([grade, new.grade])
                    phone = np.concatenate([phone, np.array(data.column("phone").to_pylist(), dtype=object)])

        # merchants: renamed, or moved to another city
        m = db.rows("SELECT merchant_id, category FROM merchants ORDER BY merchant_id")
        merchant_ids = np.array([row[0] for row in m], dtype=np.int64)
        category = np.array([CATEGORY_NAMES.index(row[1]) for row in m], dtype=np.int8)
        r = rng(8)
        k = max(1, round(len(merchant_ids) * share * MERCHANT_UPDATE_SHARE))
        chosen = np.sort(r.choice(len(merchant_ids), k, replace=False))
        city, name = merchant_names(r, category[chosen])
        moved = r.random(k) < 0.5
        changes = pa.table(
            {
                "merchant_id": pa.array(merchant_ids[chosen], pa.int32()),
                "name": name,
                "city": _where(moved, city),
                "updated_at": stamps(r, k),
            }
        )
        summary["merchants"]["updated"] = _update_from(
            db, MERCHANTS, "merchant_id", _MERCHANT_CHANGES, changes
        )

        # one more day of transactions, by the cards and merchants that were busy so far
        c = db.rows("SELECT card_id, customer_id, status, issued_at FROM cards ORDER BY card_id")
        card_ids = np.array([row[0] for row in c], dtype=np.int64)
        card_owner = np.array([row[1] for row in c], dtype=np.int64)
        can_pay = np.array([row[2] == "ACTIVE" and row[3] < last_day + timedelta(days=1) for row in c])
        usage = _counts_by(db, "card_id", card_ids)
        popularity = _counts_by(db, "merchant_id", merchant_ids)
        order = np.argsort(ids)
        ids, grade, phone = ids[order], grade[order], phone[order]
        population = Population(
            card_ids=card_ids[can_pay],
            card_customer=np.searchsorted(ids, card_owner[can_pay]),
            card_weight=usage[can_pay] + 0.5,
            merchant_ids=merchant_ids,
            merchant_category=category,
            merchant_weight=popularity + 0.5,
        )
        stats = db.rows("SELECT COUNT(*), COUNT(DISTINCT txn_date), MAX(txn_id) FROM card_transactions")[0]
        n_txn = max(1, round(stats[0] / stats[1]))
        paid: list[np.ndarray] = []
        with _bar(CARD_TRANSACTIONS, n_txn, progress) as bar:
            for chunk in transactions(
                lambda k: rng(9, k),
                int(stats[2]) + 1,
                np.array([day]),
                np.array([n_txn]),
                population,
                CHUNK_ROWS,
            ):
                db.load(CARD_TRANSACTIONS, chunk.table)
                paid.append(chunk.customer[chunk.counted])
                bar.update(chunk.table.num_rows)
        summary["card_transactions"]["inserted"] = n_txn

        # the mart's month of `day`, re-aggregated for the customers who paid today
        who = np.unique(np.concatenate(paid))
        summary[MART_CUSTOMER_MONTHLY.name] = _refresh_mart(
            db, rng(10), day, ids[who], grade[who], phone[who]
        )
        db.commit()
    log.info("day %s applied: %s", day, summary)
    return summary


def _refresh_mart(
    db: CardDb, r: Generator, day: np.datetime64, ids: np.ndarray, grade: np.ndarray, phone: np.ndarray
) -> dict[str, int]:
    import pyarrow as pa

    month = day.astype("datetime64[M]")
    base_month = f"{month.astype(object):%Y%m}"
    db.create_temp_table(_CUSTOMER_IDS, _CUSTOMER_IDS.name)
    db.load(_CUSTOMER_IDS, pa.table({"customer_id": ids}), into=_CUSTOMER_IDS.name)
    rows = db.rows(
        f"""SELECT c.customer_id, COUNT(*), SUM(t.amount), MAX(t.txn_date)
            FROM card_transactions t
            JOIN cards c ON c.card_id = t.card_id
            JOIN {_CUSTOMER_IDS.name} s ON s.customer_id = c.customer_id
            WHERE t.txn_date >= %s AND t.txn_date <= %s AND t.status = 'approved' AND t.currency = 'KRW'
            GROUP BY c.customer_id ORDER BY c.customer_id""",
        (month.astype("datetime64[D]").astype(object), day.astype(object)),
    )
    if [row[0] for row in rows] != ids.tolist():  # both in customer_id order
        raise RuntimeError(f"mart refresh found {len(rows)} of {len(ids)} customers who paid on {day}")
    existing = {
        row[0]
        for row in db.rows(
            f"SELECT customer_id FROM {MART_CUSTOMER_MONTHLY.name} WHERE base_month = %s", (base_month,)
        )
    }
    data = mart_table(
        r,
        np.full(len(rows), month),
        ids,
        np.array([row[1] for row in rows], dtype=np.int64),
        np.array([int(row[2] * 100) for row in rows], dtype=np.int64),
        np.array([row[3] for row in rows], dtype="datetime64[D]"),
        grade,
        pa.array(phone.tolist(), pa.string()),
    )
    db.create_temp_table(MART_CUSTOMER_MONTHLY, _MART_ROWS)
    db.load(MART_CUSTOMER_MONTHLY, data, into=_MART_ROWS)
    db.execute(
        f"DELETE FROM {MART_CUSTOMER_MONTHLY.name} WHERE base_month = %s"
        f" AND customer_id IN (SELECT customer_id FROM {_MART_ROWS})",
        (base_month,),
    )
    db.execute(f"INSERT INTO {MART_CUSTOMER_MONTHLY.name} SELECT * FROM {_MART_ROWS}")
    updated = sum(1 for i in ids.tolist() if str(i) in existing)
    return {"inserted": len(ids) - updated, "updated": updated, "deleted": 0}


def _where(mask: np.ndarray, values: pa.Array) -> pa.Array:
    """`values` where `mask`, NULL (keep the current value) elsewhere."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), values, pa.scalar(None, pa.string()))


def _update_from(db: CardDb, target: Table, key: str, stage: Table, changes: pa.Table) -> int:
    """UPDATE target from a staged table of changes; a NULL in the stage keeps the current value."""
    db.create_temp_table(stage, stage.name)
    db.load(stage, changes, into=stage.name)
    columns = [c for c in stage.column_names if c != key]
    if db.dialect == "postgresql":
        sets = ", ".join(f"{c} = COALESCE(s.{c}, t.{c})" for c in columns)
        sql = f"UPDATE {target.name} AS t SET {sets} FROM {stage.name} AS s WHERE t.{key} = s.{key}"
    else:
        sets = ", ".join(f"t.{c} = COALESCE(s.{c}, t.{c})" for c in columns)
        sql = f"UPDATE {target.name} AS t JOIN {stage.name} AS s ON t.{key} = s.{key} SET {sets}"
    return db.execute(sql)


def _counts_by(db: CardDb, column: str, ids: np.ndarray) -> np.ndarray:
    """Transactions so far per id in `ids` (sorted)."""
    counts = np.zeros(len(ids), dtype=float)
    found = db.rows(f"SELECT {column}, COUNT(*) FROM card_transactions GROUP BY {column}")
    if found:
        key = np.array([row[0] for row in found], dtype=np.int64)
        at = np.searchsorted(ids, key)
        hit = (at < len(ids)) & (ids[np.minimum(at, len(ids) - 1)] == key)
        counts[at[hit]] = np.array([row[1] for row in found], dtype=float)[hit]
    return counts


def _months(days: np.ndarray) -> int:
    return int((days[-1].astype("datetime64[M]") - days[0].astype("datetime64[M]")).astype(np.int64)) + 1


@contextmanager
def _bar(table: Table, total: int, enabled: bool) -> Iterator[tqdm | Any]:
    from tqdm import tqdm

    with tqdm(
        total=total,
        desc=f"{table.name:<21}",
        unit=" rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not enabled,
    ) as bar:
        yield bar
