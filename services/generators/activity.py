"""Card transactions, a chunk at a time, and the all-string monthly customer mart built from them.

Volume per day follows the weekday, time of day a lunch-and-evening profile;
cards and merchants are drawn with Zipf-like weights, amounts log-normally
around each merchant category's median. Rows come out in created_at order, so
txn_id (assigned in row order) grows with created_at: each day's rows are
stratified over that day's time-of-day quantiles, which needs no sort across
chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.generators import korean
from services.generators.entities import CATEGORY_MEDIAN, CATEGORY_NAMES, CATEGORY_SIGMA, GRADES

if TYPE_CHECKING:
    from numpy.random import Generator

# Relative card use per hour of day, 00h..23h.
HOUR_WEIGHTS = np.array([
    0.6, 0.35, 0.2, 0.15, 0.15, 0.3, 0.8, 2.0, 3.5, 3.0, 3.2, 4.5,
    6.5, 5.0, 4.0, 4.0, 4.3, 5.0, 6.5, 6.5, 5.5, 4.0, 2.8, 1.5,
])  # fmt: skip
_SECOND_CDF = np.concatenate([[0.0], np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()])
_HOUR_EDGES = np.arange(25) * 3600.0
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.1, 0.85])  # Monday..Sunday
GRADE_USE = np.array([1.0, 1.5, 2.2, 3.5])  # higher grades use their cards more

STATUSES = ["approved", "declined", "refunded"]
STATUS_P = np.array([0.93, 0.05, 0.02])
CURRENCIES = ["KRW", "USD", "JPY", "EUR"]
WON_PER_UNIT = np.array([1.0, 1350.0, 9.0, 1450.0])
FOREIGN_P = {"TRAVEL": 0.12, "ONLINE": 0.04}  # elsewhere 0.5%
INSTALLMENTS = np.array([2, 3, 4, 5, 6, 10, 12, 24])
INSTALLMENT_P = np.array([25, 30, 8, 6, 12, 8, 8, 3]) / 100

MART_INVALID_RATE = 0.005
INVALID_NUMBERS = ["N/A", "", " ", "-"]
INVALID_DATES = [*INVALID_NUMBERS, "2024-13-45"]


def zipf_weights(rng: Generator, n: int, exponent: float) -> np.ndarray:
    """Weights 1/rank**exponent, ranks shuffled so popularity does not follow the ids."""
    return 1.0 / (rng.permutation(n) + 1.0) ** exponent


def daily_counts(rng: Generator, days: np.ndarray, total: int) -> np.ndarray:
    """`total` rows spread over `days` (datetime64[D]) by weekday, with a little day-to-day noise."""
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    weight = WEEKDAY_FACTOR[weekday] * rng.lognormal(0.0, 0.05, len(days))
    return rng.multinomial(total, weight / weight.sum())


@dataclass
class Population:
    """Who can transact: cards and merchants with their draw weights."""

    card_ids: np.ndarray
    card_customer: np.ndarray  # index of the card's customer in the caller's customer arrays
    card_weight: np.ndarray
    merchant_ids: np.ndarray
    merchant_category: np.ndarray
    merchant_weight: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.card_ids) or not len(self.merchant_ids):
            raise ValueError("no card or no merchant can transact")
        self._card_cdf = np.cumsum(self.card_weight) / self.card_weight.sum()
        self._merchant_cdf = np.cumsum(self.merchant_weight) / self.merchant_weight.sum()

    def draw(self, rng: Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Indexes of `n` cards and `n` merchants, by weight."""
        card = np.minimum(np.searchsorted(self._card_cdf, rng.random(n)), len(self.card_ids) - 1)
        merchant = np.minimum(np.searchsorted(self._merchant_cdf, rng.random(n)), len(self.merchant_ids) - 1)
        return card, merchant


@dataclass
class TxnChunk:
    table: pa.Table
    customer: np.ndarray  # customer index per row
    day: np.ndarray  # datetime64[D]
    cents: np.ndarray
    counted: np.ndarray  # approved and in won: what the mart sums


def transactions(
    rng_for: Callable[[int], Generator],
    first_id: int,
    days: np.ndarray,
    counts: np.ndarray,
    population: Population,
    chunk_rows: int,
) -> Iterator[TxnChunk]:
    """`counts[i]` transactions on each of `days`, ids from `first_id`, in chunks of `chunk_rows`."""
    ends = np.cumsum(counts)
    starts = ends - counts
    total = int(ends[-1]) if len(ends) else 0
    for number, lo in enumerate(range(0, total, chunk_rows)):
        rng = rng_for(number)
        rows = np.arange(lo, min(lo + chunk_rows, total))
        n = len(rows)
        day_index = np.searchsorted(ends, rows, side="right")
        quantile = (rows - starts[day_index] + rng.random(n)) / counts[day_index]
        seconds = np.interp(quantile, _SECOND_CDF, _HOUR_EDGES).astype(np.int64)
        seconds = np.minimum(seconds, 86_399)
        day = days[day_index]
        created = day.astype("datetime64[s]") + seconds.astype("timedelta64[s]")
        # the row is written a few seconds after the purchase, never before the day began
        lag = np.minimum(rng.exponential(15.0, n).astype(np.int64), seconds)
        txn_at = created - lag.astype("timedelta64[s]")

        card, merchant = population.draw(rng, n)
        category = population.merchant_category[merchant]
        won = CATEGORY_MEDIAN[category] * np.exp(CATEGORY_SIGMA[category] * rng.standard_normal(n))
        won = np.clip(won, 100.0, 30_000_000.0)
        foreign_p = np.full(len(CATEGORY_NAMES), 0.005)
        for name, p in FOREIGN_P.items():
            foreign_p[CATEGORY_NAMES.index(name)] = p
        currency = np.where(
            rng.random(n) < foreign_p[category], rng.choice([1, 2, 3], n, p=[0.6, 0.25, 0.15]), 0
        )
        units = won / WON_PER_UNIT[currency]
        cents = np.select(
            [currency == 0, currency == 2],
            [np.round(units / 10) * 1000, np.round(units) * 100],  # won in tens, yen whole
            np.round(units * 100),
        ).astype(np.int64)
        cents = np.maximum(cents, 1)
        status = rng.choice(3, n, p=STATUS_P)
        big = (currency == 0) & (status != 1) & (won >= 50_000)
        installment = big & (rng.random(n) < np.where(won >= 200_000, 0.45, 0.2))
        months = np.where(installment, rng.choice(INSTALLMENTS, n, p=INSTALLMENT_P), 0)

        table = pa.table(
            {
                "txn_id": np.arange(first_id + lo, first_id + lo + n, dtype=np.int64),
                "card_id": population.card_ids[card],
                "merchant_id": pa.array(population.merchant_ids[merchant], pa.int32()),
                "txn_at": txn_at,
                "txn_date": day,
                "amount": decimal_strings(cents),
                "currency": pa.array(CURRENCIES).take(pa.array(currency)),
                "status": pa.array(STATUSES).take(pa.array(status)),
                "installment_months": months.astype(np.int16),
                "created_at": created,
            }
        )
        yield TxnChunk(table, population.card_customer[card], day, cents, (status == 0) & (currency == 0))


def decimal_strings(cents: np.ndarray) -> pa.Array:
    """Non-negative amounts in hundredths as '1234.50'."""
    return pc.binary_join_element_wise(
        pc.cast(pa.array(cents // 100), pa.string()), korean.zero_padded(cents % 100, 2), "."
    )


class MartTotals:
    """Per (month, customer): approved won transactions, their sum and the last day, summed chunk by chunk."""

    def __init__(self, first_month: np.datetime64, months: int, customers: int) -> None:
        self.first_month = first_month
        self.customers = customers
        size = months * customers
        self.count = np.zeros(size, dtype=np.int64)
        self.cents = np.zeros(size, dtype=np.int64)
        self.last_day = np.full(size, np.iinfo(np.int64).min, dtype=np.int64)

    def add(self, chunk: TxnChunk) -> None:
        keep = chunk.counted
        month = (chunk.day[keep].astype("datetime64[M]") - self.first_month).astype(np.int64)
        cell = month * self.customers + chunk.customer[keep]
        size = len(self.count)
        self.count += np.bincount(cell, minlength=size)
        # bincount sums in float64: exact for integers below 2**53 hundredths, far above any monthly total
        self.cents += np.rint(np.bincount(cell, weights=chunk.cents[keep], minlength=size)).astype(np.int64)
        np.maximum.at(self.last_day, cell, chunk.day[keep].astype(np.int64))

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """month (datetime64[M]), customer index, count, cents, last day for every non-empty cell."""
        cell = np.flatnonzero(self.count)
        month = self.first_month + (cell // self.customers)
        last = self.last_day[cell].astype("datetime64[D]")
        return month, cell % self.customers, self.count[cell], self.cents[cell], last


def mart_table(
    rng: Generator,
    month: np.ndarray,
    customer_id: np.ndarray,
    count: np.ndarray,
    cents: np.ndarray,
    last_day: np.ndarray,
    grade: np.ndarray,
    phone: pa.Array,
) -> pa.Table:
    """Mart rows as a Sqoop text import leaves them: all strings, formats mixed, a few values invalid."""
    n = len(month)
    year_month = (month.astype(np.int64) // 12 + 1970) * 100 + month.astype(np.int64) % 12 + 1
    won = cents // 100
    plain = pc.binary_join_element_wise(
        pc.cast(pa.array(won), pa.string()), korean.zero_padded(cents % 100, 2), "."
    )
    grouped = pa.array([f"{w:,}" for w in won.tolist()], pa.string())
    total = pc.if_else(pa.array(rng.random(n) < 0.4), grouped, plain)  # '1234567.00' / '1,234,567'
    iso = pc.cast(pa.array(last_day), pa.string())
    last = pc.if_else(pa.array(rng.random(n) < 0.3), pc.replace_substring(iso, "-", ""), iso)
    grade_text = pa.array(GRADES).take(pa.array(grade))
    messy = rng.choice(6, n, p=[0.9, 0.02, 0.02, 0.02, 0.02, 0.02])
    grade_text = pc.case_when(
        pc.make_struct(*[pa.array(messy == k) for k in range(1, 6)]),
        pc.binary_join_element_wise(" ", grade_text, ""),
        pc.binary_join_element_wise(grade_text, " ", ""),
        pc.binary_join_element_wise(" ", pc.utf8_lower(grade_text), " ", ""),
        pc.utf8_lower(grade_text),
        pc.utf8_capitalize(grade_text),
        grade_text,
    )
    phone = pc.if_else(pa.array(rng.random(n) < 0.15), pc.replace_substring(phone, "-", ""), phone)
    columns = {
        "base_month": pc.cast(pa.array(year_month), pa.string()),
        "customer_id": pc.cast(pa.array(customer_id), pa.string()),
        "txn_count": pc.cast(pa.array(count), pa.string()),
        "total_amount": total,
        "last_txn_date": last,
        "grade": grade_text,
        "phone": phone,
        "is_vip": pa.array(np.where(grade == GRADES.index("VIP"), "Y", "N")),
    }
    for name, invalid in (
        ("txn_count", INVALID_NUMBERS),
        ("total_amount", INVALID_NUMBERS),
        ("last_txn_date", INVALID_DATES),
    ):
        columns[name] = _spoil(rng, columns[name], invalid)
    return pa.table(columns)


def _spoil(rng: Generator, values: pa.Array, invalid: list[str]) -> pa.Array:
    """Replaces a share MART_INVALID_RATE (at least one value) with values no parser accepts."""
    n = len(values)
    if n == 0:
        return values
    k = max(1, round(n * MART_INVALID_RATE))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, k, replace=False)] = True
    return pc.replace_with_mask(values, pa.array(mask), pa.array(rng.choice(invalid, k), pa.string()))
