"""Customers, accounts, cards and merchants: numeric columns drawn whole, text a chunk at a time.

Each entity keeps what other tables and the transactions need (ids, dates,
statuses) as numpy arrays; its `table(lo, hi, rng)` renders rows lo..hi as an
Arrow table in the schema's column order. Ids follow creation time, as a
database sequence would: customer_id grows with joined_at, account_id with
opened_at, card_id with issued_at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.generators import korean

if TYPE_CHECKING:
    from numpy.random import Generator

DAY = np.timedelta64(1, "D")
SECONDS_PER_DAY = 86_400

GRADES = ["BASIC", "SILVER", "GOLD", "VIP"]
GRADE_P = [0.70, 0.20, 0.08, 0.02]
# Credit limit range per grade, in units of 100,000 won.
LIMIT_RANGE = [(10, 50), (50, 100), (100, 300), (300, 1000)]
ACCOUNT_STATUS = ["ACTIVE", "DORMANT", "CLOSED"]
CARD_STATUS = ["ACTIVE", "SUSPENDED", "LOST", "CLOSED"]
# Brand, issuer BINs (first six digits), share of cards.
BRANDS = [
    ("VISA", (404825, 455437, 464942, 426066), 35),
    ("MASTER", (540926, 552576, 523830, 518840), 30),
    ("BC", (941092, 943150, 949013), 25),
    ("JCB", (356911, 356445), 6),
    ("UNIONPAY", (624350, 621281), 4),
]
# Category, brands, named by branch?, share of merchants, popularity, median amount (won), log-sigma.
CATEGORIES = [
    ("RESTAURANT", "김밥천국 본죽 교촌치킨 BBQ 맘스터치 새마을식당 홍콩반점", True, 24, 1.0, 15_000, 0.6),
    ("CAFE", "스타벅스 투썸플레이스 이디야커피 메가커피 빽다방 폴바셋", True, 12, 1.2, 6_500, 0.45),
    ("CONVENIENCE", "GS25 CU 세븐일레븐 이마트24", True, 12, 2.0, 6_000, 0.7),
    ("GROCERY", "이마트 홈플러스 롯데마트 코스트코 하나로마트", True, 5, 1.5, 70_000, 0.8),
    ("ONLINE", "쿠팡 11번가 G마켓 옥션 SSG닷컴 무신사 마켓컬리 배달의민족", False, 4, 3.0, 35_000, 1.0),
    ("FUEL", "SK에너지 GS칼텍스 S-OIL 현대오일뱅크", True, 6, 1.0, 60_000, 0.4),
    ("DEPARTMENT", "롯데백화점 신세계백화점 현대백화점 갤러리아", True, 2, 1.0, 150_000, 1.0),
    ("MEDICAL", "온누리약국 연세내과의원 서울치과 밝은안과 365정형외과", True, 9, 0.8, 25_000, 0.9),
    ("TRANSPORT", "카카오T 티머니 코레일 SRT", False, 2, 2.0, 12_000, 0.8),
    ("TRAVEL", "대한항공 아시아나항공 제주항공 하나투어 야놀자 여기어때", False, 3, 0.4, 300_000, 0.9),
    ("TELECOM", "SK텔레콤 KT LG유플러스", False, 1, 1.0, 55_000, 0.3),
    ("EDUCATION", "메가스터디 교보문고 영풍문고 해커스", True, 5, 0.6, 40_000, 0.8),
    ("BEAUTY", "올리브영 아리따움 이니스프리 미샤", True, 6, 0.9, 25_000, 0.7),
    ("APPAREL", "유니클로 자라 탑텐 스파오 나이키", True, 9, 0.7, 60_000, 0.7),
]  # fmt: skip
_BINS = np.array([x for b in BRANDS for x in b[1]], dtype=np.int64)
_BIN_COUNT = np.array([len(b[1]) for b in BRANDS])
_BIN_OFFSET = np.cumsum([0, *_BIN_COUNT[:-1]])
CATEGORY_NAMES = [c[0] for c in CATEGORIES]
CATEGORY_MEDIAN = np.array([c[5] for c in CATEGORIES], dtype=float)
CATEGORY_SIGMA = np.array([c[6] for c in CATEGORIES])
CATEGORY_POPULARITY = np.array([c[4] for c in CATEGORIES])


def _choice(rng: Generator, p: list[float] | np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _secs(rng: Generator, n: int, lo: int = 0, hi: int = SECONDS_PER_DAY) -> np.ndarray:
    return rng.integers(lo, hi, n).astype("timedelta64[s]")


def _between(rng: Generator, start: np.ndarray, end: np.datetime64, still: float) -> np.ndarray:
    """Timestamps after each `start` up to `end`; a share `still` never changed since (== start)."""
    span = (end - start).astype(np.int64)
    moved = (rng.random(len(start)) * span).astype(np.int64).astype("timedelta64[s]")
    return np.where(rng.random(len(start)) < still, start, start + moved)


def _ids(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.int64)


def _scramble(ids: np.ndarray, modulus: int) -> np.ndarray:
    """A bijection of ids onto 0..modulus-1 (modulus a power of ten): unique numbers that look random."""
    return (ids * 982_451_653 + 123_456_789) % modulus  # the multiplier is prime, coprime to 10


def _grouped(strings: pa.Array, sizes: list[int], sep: str = "-") -> pa.Array:
    """'5409261234567893' -> '5409-2612-3456-7893' for the given group sizes."""
    parts, at = [], 0
    for size in sizes:
        parts.append(pc.utf8_slice_codeunits(strings, at, at + size))
        at += size
    return pc.binary_join_element_wise(*parts, sep)


@dataclass
class Customers:
    ids: np.ndarray
    female: np.ndarray
    birth: np.ndarray  # datetime64[D]
    grade: np.ndarray  # index into GRADES
    active: np.ndarray
    joined: np.ndarray  # datetime64[s]
    updated: np.ndarray  # datetime64[s]

    @classmethod
    def draw(
        cls, rng: Generator, n: int, first_id: int, lo: np.datetime64, end: np.datetime64, fresh: bool = False
    ) -> Customers:
        """`n` customers who joined between days `lo` and `end` (and at 19 or older); `fresh`: all active."""
        # 19 * 366 days: at least 19 full calendar years, whatever the leap days
        age_days = np.clip(rng.normal(43, 13, n) * 365.25, 19 * 366, 85 * 365).astype(np.int64)
        birth = end - age_days.astype("timedelta64[D]")
        earliest = np.maximum(birth + 19 * 366 * DAY, lo)
        span = (end - earliest).astype(np.int64) + 1
        # u**0.6 leans toward recent joins: the customer base grows
        day = earliest + (rng.random(n) ** 0.6 * span).astype(np.int64).astype("timedelta64[D]")
        joined = np.minimum(day, end).astype("datetime64[s]") + _secs(rng, n, 8 * 3600, 22 * 3600)
        order = np.argsort(joined, kind="stable")
        joined = joined[order]
        last = end.astype("datetime64[s]") + np.timedelta64(SECONDS_PER_DAY - 1, "s")
        return cls(
            ids=_ids(first_id, n),
            female=(rng.random(n) < 0.5)[order],
            birth=birth[order],
            grade=_choice(rng, GRADE_P, n).astype(np.int8),
            active=(rng.random(n) < 0.95) | fresh,
            joined=joined,
            updated=_between(rng, joined, last, still=0.4),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, lo: int, hi: int, rng: Generator) -> pa.Table:
        female = self.female[lo:hi]
        birth = self.birth[lo:hi]
        name, surname, given1, given2 = korean.names(rng, female)
        year = birth.astype("datetime64[Y]").astype(np.int64) + 1970
        email = korean.emails(rng, surname, given1, given2, year)
        # 3% left no e-mail address
        email = pc.if_else(pa.array(rng.random(hi - lo) < 0.03), pa.scalar(None, pa.string()), email)
        return pa.table(
            {
                "customer_id": self.ids[lo:hi],
                "name": name,
                "rrn": korean.rrns(rng, birth, female),
                "phone": korean.phones(rng, hi - lo),
                "email": email,
                "birth_date": birth,
                "gender": pa.array(np.where(female, "F", "M")),
                "grade": pa.array(GRADES).take(pa.array(self.grade[lo:hi])),
                "address": korean.addresses(rng, hi - lo),
                "is_active": self.active[lo:hi],
                "joined_at": self.joined[lo:hi],
                "updated_at": self.updated[lo:hi],
            }
        )


@dataclass
class Accounts:
    ids: np.ndarray
    customer_id: np.ndarray
    status: np.ndarray  # index into ACCOUNT_STATUS
    limit_won: np.ndarray
    opened: np.ndarray  # datetime64[D]
    updated: np.ndarray  # datetime64[s]

    @classmethod
    def draw(
        cls,
        rng: Generator,
        customers: Customers,
        n: int,
        first_id: int,
        end: np.datetime64,
        fresh: bool = False,
    ) -> Accounts:
        """One account per customer, the `n - len(customers)` others to random customers, opened later.

        `fresh`: all active (accounts opened today).
        """
        owner = np.concatenate(
            [np.arange(len(customers)), rng.integers(0, len(customers), n - len(customers))]
        )
        joined = customers.joined[owner].astype("datetime64[D]")
        later = (rng.random(n) * ((end - joined).astype(np.int64) + 1)).astype(np.int64)
        opened = joined + np.where(np.arange(n) < len(customers), 0, later).astype("timedelta64[D]")
        order = np.argsort(opened, kind="stable")
        owner, opened = owner[order], opened[order]
        status = _choice(rng, [1.0, 0, 0] if fresh else [0.90, 0.06, 0.04], n)
        status[~customers.active[owner]] = 2  # a customer who left has closed accounts
        ranges = np.array(LIMIT_RANGE)[customers.grade[owner]]
        limit = rng.integers(ranges[:, 0], ranges[:, 1] + 1) * 100_000
        start = opened.astype("datetime64[s]") + _secs(rng, n, 9 * 3600, 18 * 3600)
        last = end.astype("datetime64[s]") + np.timedelta64(SECONDS_PER_DAY - 1, "s")
        return cls(
            ids=_ids(first_id, n),
            customer_id=customers.ids[owner],
            status=status.astype(np.int8),
            limit_won=limit,
            opened=opened,
            updated=_between(rng, start, last, still=0.5),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, lo: int, hi: int, rng: Generator) -> pa.Table:
        number = korean.zero_padded(_scramble(self.ids[lo:hi], 10**11), 11)
        return pa.table(
            {
                "account_id": self.ids[lo:hi],
                "customer_id": self.customer_id[lo:hi],
                "account_no": _grouped(number, [3, 6, 2]),
                "status": pa.array(ACCOUNT_STATUS).take(pa.array(self.status[lo:hi])),
                "credit_limit": pc.cast(pa.array(self.limit_won[lo:hi]), pa.string()),
                "opened_at": self.opened[lo:hi],
                "updated_at": self.updated[lo:hi],
            }
        )


def luhn_check_digit(payload: np.ndarray, width: int) -> np.ndarray:
    """The Luhn check digit for each `width`-digit integer in `payload`."""
    total = np.zeros(len(payload), dtype=np.int64)
    rest = payload.copy()
    for position in range(width):  # from the rightmost payload digit, which is doubled
        digit = rest % 10
        rest //= 10
        if position % 2 == 0:
            digit = digit * 2
            digit = np.where(digit > 9, digit - 9, digit)
        total += digit
    return (10 - total % 10) % 10


@dataclass
class Cards:
    ids: np.ndarray
    account_id: np.ndarray
    customer_id: np.ndarray
    customer_grade: np.ndarray
    brand: np.ndarray  # index into BRANDS
    bin: np.ndarray
    status: np.ndarray  # index into CARD_STATUS
    issued: np.ndarray  # datetime64[D]
    updated: np.ndarray  # datetime64[s]

    @classmethod
    def draw(
        cls,
        rng: Generator,
        accounts: Accounts,
        customers: Customers,
        n: int,
        first_id: int,
        end: np.datetime64,
        fresh: bool = False,
    ) -> Cards:
        """One card per account, the `n - len(accounts)` others to random accounts, issued within 4.5 years.

        `fresh`: all active (cards issued today).
        """
        owner = np.concatenate([np.arange(len(accounts)), rng.integers(0, len(accounts), n - len(accounts))])
        earliest = np.maximum(accounts.opened[owner], end - 1640 * DAY)
        span = (end - earliest).astype(np.int64) + 1
        issued = earliest + (rng.random(n) * span).astype(np.int64).astype("timedelta64[D]")
        order = np.argsort(issued, kind="stable")
        owner, issued = owner[order], issued[order]
        status = _choice(rng, [1.0, 0, 0, 0] if fresh else [0.92, 0.03, 0.02, 0.03], n)
        account_status = accounts.status[owner]
        status[account_status == 1] = 1  # dormant account: suspended card
        status[account_status == 2] = 3  # closed account: closed card
        brand = _choice(rng, [b[2] for b in BRANDS], n)
        bin_ = _BINS[_BIN_OFFSET[brand] + rng.integers(0, 1 << 30, n) % _BIN_COUNT[brand]]
        start = issued.astype("datetime64[s]") + _secs(rng, n, 9 * 3600, 18 * 3600)
        last = end.astype("datetime64[s]") + np.timedelta64(SECONDS_PER_DAY - 1, "s")
        customer_index = np.searchsorted(customers.ids, accounts.customer_id[owner])
        return cls(
            ids=_ids(first_id, n),
            account_id=accounts.ids[owner],
            customer_id=accounts.customer_id[owner],
            customer_grade=customers.grade[customer_index],
            brand=brand.astype(np.int8),
            bin=bin_,
            status=status.astype(np.int8),
            issued=issued,
            updated=_between(rng, start, last, still=0.6),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, lo: int, hi: int, rng: Generator) -> pa.Table:
        payload = self.bin[lo:hi] * 10**9 + _scramble(self.ids[lo:hi], 10**9)  # 15 digits, unique per card
        number = payload * 10 + luhn_check_digit(payload, 15)
        issued = self.issued[lo:hi]
        # valid through the end of the month five years on
        expires = (issued.astype("datetime64[M]") + 61).astype("datetime64[D]") - DAY
        return pa.table(
            {
                "card_id": self.ids[lo:hi],
                "account_id": self.account_id[lo:hi],
                "customer_id": self.customer_id[lo:hi],
                "card_no": _grouped(pc.cast(pa.array(number), pa.string()), [4, 4, 4, 4]),
                "brand": pa.array([b[0] for b in BRANDS]).take(pa.array(self.brand[lo:hi])),
                "status": pa.array(CARD_STATUS).take(pa.array(self.status[lo:hi])),
                "issued_at": issued,
                "expires_at": expires,
                "updated_at": self.updated[lo:hi],
            }
        )


@dataclass
class Merchants:
    ids: np.ndarray
    category: np.ndarray  # index into CATEGORIES
    registered: np.ndarray  # datetime64[D]
    updated: np.ndarray  # datetime64[s]

    @classmethod
    def draw(
        cls, rng: Generator, n: int, first_id: int, before: np.datetime64, end: np.datetime64
    ) -> Merchants:
        """`n` merchants registered since 2000 and before day `before`."""
        lo = np.datetime64("2000-01-01")
        registered = lo + (rng.random(n) ** 0.7 * (before - lo).astype(np.int64)).astype(np.int64) * DAY
        registered = np.sort(registered)
        start = registered.astype("datetime64[s]") + _secs(rng, n, 9 * 3600, 18 * 3600)
        last = end.astype("datetime64[s]") + np.timedelta64(SECONDS_PER_DAY - 1, "s")
        return cls(
            ids=_ids(first_id, n),
            category=_choice(rng, [c[3] for c in CATEGORIES], n).astype(np.int8),
            registered=registered,
            updated=_between(rng, start, last, still=0.5),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, lo: int, hi: int, rng: Generator) -> pa.Table:
        category = self.category[lo:hi]
        city, name = merchant_names(rng, category)
        return pa.table(
            {
                "merchant_id": pa.array(self.ids[lo:hi], pa.int32()),
                "name": name,
                "category": pa.array(CATEGORY_NAMES).take(pa.array(category)),
                "city": city,
                "registered_at": self.registered[lo:hi],
                "updated_at": self.updated[lo:hi],
            }
        )


def merchant_names(rng: Generator, category: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """City and name ('스타벅스 역삼점'; online and national merchants have no branch) per merchant."""
    n = len(category)
    brands = [c[1].split() for c in CATEGORIES]
    offsets = np.cumsum([0] + [len(b) for b in brands])
    sizes = np.array([len(b) for b in brands])
    brand = offsets[category] + (rng.random(n) * sizes[category]).astype(np.int64)
    brand_names = pa.array([x for b in brands for x in b]).take(pa.array(brand))
    city, branch = korean.merchant_places(rng, n)
    has_branch = np.array([c[2] for c in CATEGORIES])[category]
    name = pc.if_else(
        pa.array(has_branch), pc.binary_join_element_wise(brand_names, branch, " "), brand_names
    )
    return city, name
