"""Change traffic for the CDC sources: inserts, updates and deletes on MySQL/MariaDB tables.

    ensure_demo_schema(url, "cdc_demo", "main")    customers, orders, order_lines
    ensure_demo_schema(url, "inventory", "second") stock
    ensure_bench_schema(url, db, tables=20)        t01..t20, mixed column types
    run_traffic(url, db, tables, rate=50, seconds=60)
    demo_traffic(main_url, second_url)             ~2 changes/s on both demo servers, forever

URLs are SQLAlchemy style without a database (`mysql+pymysql://root@127.0.0.1:3306`).

The generator is open loop: change k is due at start + k / rate, whatever the
server did with the ones before, so a slow server shows up as lag, not as a
silently lower rate. A run that falls more than a second behind says so in the
log (once per episode), and TrafficStats reports the achieved rate and the
largest lag. `txn_size` changes share a transaction; at a low rate a large
transaction stays open for txn_size / rate seconds (a long transaction, as the
capture must handle). `statement_rows` > 1 makes multi-row statements
(INSERT ... VALUES (..), (..); UPDATE/DELETE ... WHERE key IN (..)) for bulk traffic.

Tables are read from information_schema, so any table with a primary key
works: values follow each column's type (bit(1), tinyint(1), decimal, dates,
times, datetime(6), enum, JSON, text), NULL now and then in nullable columns;
`<name>_id` columns take existing keys of a table `<name>s` of the same run
(orders.customer_id, order_lines.order_id). Updates and deletes pick existing
keys. Counts are the rows the server reports changed, added up at commit, so
they equal what the binlog holds: a rolled-back transaction counts nothing.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.generators.reconnect import reconnect

log = logging.getLogger(__name__)

OPS = ("insert", "update", "delete")
DEFAULT_MIX = (0.5, 0.35, 0.15)
NULL_SHARE = 0.12  # of values written to nullable columns
BEHIND_WARN_SECONDS = 1.0
_LOST = (2003, 2006, 2013, 2055)  # client errors of a connection gone

DEMO_MAIN_DATABASE = "cdc_demo"
DEMO_SECOND_DATABASE = "inventory"
DEMO_TABLES = {"main": ["customers", "orders", "order_lines"], "second": ["stock"]}

_DEMO_DDL = {
    "main": [
        """CREATE TABLE IF NOT EXISTS customers (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(100) NOT NULL,
            email VARCHAR(200) NULL,
            is_active BIT(1) NOT NULL DEFAULT b'1',
            vip TINYINT(1) NOT NULL DEFAULT 0,
            balance DECIMAL(12,2) NOT NULL DEFAULT 0,
            birth_date DATE NULL,
            created_at DATETIME(6) NOT NULL,
            profile JSON NULL,
            updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS orders (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            customer_id BIGINT NOT NULL,
            status ENUM('new','paid','shipped','cancelled') NOT NULL DEFAULT 'new',
            total DECIMAL(14,4) NOT NULL,
            placed_at DATETIME(6) NOT NULL,
            note TEXT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS order_lines (
            order_id BIGINT NOT NULL,
            line_no INT NOT NULL,
            sku VARCHAR(32) NOT NULL,
            qty INT NOT NULL,
            price DECIMAL(10,2) NOT NULL,
            PRIMARY KEY (order_id, line_no)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    ],
    "second": [
        """CREATE TABLE IF NOT EXISTS stock (
            sku VARCHAR(32) NOT NULL PRIMARY KEY,
            qty INT NOT NULL,
            price DECIMAL(10,2) NOT NULL,
            updated_at DATETIME(6) NOT NULL,
            flags BIT(1) NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    ],
}

_BENCH_DDL = """CREATE TABLE IF NOT EXISTS {name} (
    id BIGINT NOT NULL PRIMARY KEY,
    flag BIT(1) NOT NULL,
    active TINYINT(1) NOT NULL,
    amount DECIMAL(18,4) NOT NULL,
    fee DECIMAL(18,4) NULL,
    happened_at DATETIME(6) NOT NULL,
    due_on DATE NULL,
    opens_at TIME NULL,
    code VARCHAR(40) NOT NULL,
    note VARCHAR(200) NULL,
    attrs JSON NULL,
    counter INT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""


class TrafficError(RuntimeError):
    """The traffic cannot run: a server, database or table is missing or unsuitable."""


# --- connections ------------------------------------------------------------------
def _connect(url: str, database: str | None = None, *, autocommit: bool = False) -> Any:
    import pymysql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        raise TrafficError(f"{url!r} is not a MySQL/MariaDB URL (mysql+pymysql://user@host:port)")
    where = f"{parsed.host or '127.0.0.1'}:{parsed.port or 3306}"
    try:
        conn = pymysql.connect(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 3306,
            user=parsed.username or "root",
            password=parsed.password or "",
            database=database or parsed.database or None,
            autocommit=autocommit,
            charset="utf8mb4",
            connect_timeout=5,
        )
    except pymysql.err.OperationalError as exc:
        raise TrafficError(f"MySQL/MariaDB at {where} is not reachable: {exc.args[-1]}") from exc
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")
        cur.execute("SET SESSION time_zone = '+00:00'")
    return conn


def _server_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=None).render_as_string(hide_password=False)


def _check_name(kind: str, name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_$]+", name):
        raise TrafficError(f"{kind} {name!r} must be letters, digits, '_' or '$'")
    return name


def _create_database(url: str, database: str) -> None:
    conn = _connect(_server_url(url), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{_check_name('database', database)}` CHARACTER SET utf8mb4"
            )
    finally:
        conn.close()


def _run_ddl(url: str, database: str, statements: Sequence[str]) -> None:
    _create_database(url, database)
    conn = _connect(_server_url(url), database, autocommit=True)
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
    finally:
        conn.close()


def ensure_demo_schema(url: str, database: str, kind: str) -> list[str]:
    """Create the database and the demo tables of one kind ('main' or 'second') if missing; their names."""
    if kind not in _DEMO_DDL:
        raise TrafficError(f"demo schema kind {kind!r} is not one of {sorted(_DEMO_DDL)}")
    _run_ddl(url, database, _DEMO_DDL[kind])
    return list(DEMO_TABLES[kind])


def bench_table_names(tables: int = 20) -> list[str]:
    width = max(2, len(str(tables)))
    return [f"t{i:0{width}d}" for i in range(1, tables + 1)]


def ensure_bench_schema(url: str, database: str, tables: int = 20) -> list[str]:
    """Create the database and tables t01..tNN (bigint key, mixed column types) if missing; their names."""
    if tables < 1:
        raise TrafficError(f"tables must be at least 1, got {tables}")
    names = bench_table_names(tables)
    _run_ddl(url, database, [_BENCH_DDL.format(name=n) for n in names])
    return names


# --- table descriptions, read from the server --------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # information_schema DATA_TYPE, lower case
    column_type: str  # the full type, e.g. decimal(12,2), enum('a','b'), tinyint(1)
    nullable: bool
    auto_increment: bool
    server_set: bool  # DEFAULT/ON UPDATE CURRENT_TIMESTAMP or generated: the server writes it
    max_length: int | None
    precision: int | None
    scale: int | None


@dataclass
class TableModel:
    name: str
    columns: list[Column]
    key: list[Column]
    written: list[Column]  # columns an INSERT sets (not auto-increment, not server-set)
    updatable: list[Column]  # non-key columns an UPDATE may set
    keys: list[tuple[Any, ...]] = field(default_factory=list)  # existing keys, as known
    index: dict[tuple[Any, ...], int] = field(default_factory=dict)  # key -> position in keys
    next_value: int = 1  # the next new value of an integer key's first column
    children: dict[Any, int] = field(default_factory=dict)  # composite key: prefix -> last number used

    @property
    def auto_key(self) -> bool:
        return len(self.key) == 1 and self.key[0].auto_increment

    def add_key(self, key: tuple[Any, ...]) -> None:
        if key not in self.index:
            self.index[key] = len(self.keys)
            self.keys.append(key)

    def remove_key(self, key: tuple[Any, ...]) -> None:
        pos = self.index.pop(key, None)
        if pos is None:
            return
        last = self.keys.pop()
        if pos < len(self.keys):
            self.keys[pos] = last
            self.index[last] = pos


def _describe(cur: Any, database: str, table: str) -> TableModel:
    cur.execute(
        """SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, EXTRA, COLUMN_DEFAULT,
                  CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, COLUMN_KEY
           FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s
           ORDER BY ORDINAL_POSITION""",
        (database, table),
    )
    rows = cur.fetchall()
    if not rows:
        raise TrafficError(f"table {database}.{table} does not exist")
    columns = []
    for name, dtype, ctype, nullable, extra, default, max_len, prec, scale, _ in rows:
        extra = (extra or "").lower()
        default = str(default or "").lower()
        columns.append(
            Column(
                name=name,
                data_type=dtype.lower(),
                column_type=ctype.lower(),
                nullable=nullable == "YES",
                auto_increment="auto_increment" in extra,
                server_set="on update" in extra
                or "generated" in extra
                or "virtual" in extra
                or "stored" in extra
                or default.startswith("current_timestamp"),
                max_length=int(max_len) if max_len is not None else None,
                precision=int(prec) if prec is not None else None,
                scale=int(scale) if scale is not None else None,
            )
        )
    cur.execute(
        """SELECT COLUMN_NAME FROM information_schema.STATISTICS
           WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX""",
        (database, table),
    )
    key_names = [r[0] for r in cur.fetchall()]
    if not key_names:
        raise TrafficError(f"table {database}.{table} has no primary key: updates and deletes need one")
    by_name = {c.name: c for c in columns}
    key = [by_name[n] for n in key_names]
    if len(key) > 1 and key[-1].data_type not in _INT_RANGES:
        raise TrafficError(
            f"table {database}.{table}: a composite key must end in an integer column"
            f" (numbered within the others), not {key[-1].name} {key[-1].column_type}"
        )
    if any(c.auto_increment for c in key) and len(key) > 1:
        raise TrafficError(f"table {database}.{table}: auto-increment in a composite key is not supported")
    written = [c for c in columns if not c.auto_increment and not c.server_set]
    updatable = [c for c in written if c.name not in key_names]
    if not updatable:
        raise TrafficError(f"table {database}.{table} has no column an update could change")
    return TableModel(table, columns, key, written, updatable)


def _load_keys(cur: Any, model: TableModel) -> None:
    cols = ", ".join(f"`{c.name}`" for c in model.key)
    cur.execute(f"SELECT {cols} FROM `{model.name}`")
    model.keys.clear()
    model.index.clear()
    model.children.clear()
    for row in cur.fetchall():
        model.add_key(tuple(row))
    first = model.key[0]
    if first.data_type in _INT_RANGES:
        cur.execute(f"SELECT COALESCE(MAX(`{first.name}`), 0) FROM `{model.name}`")
        model.next_value = int(cur.fetchone()[0]) + 1
    else:
        model.next_value = len(model.keys) + 1
    if len(model.key) > 1:
        for key in model.keys:
            prefix = key[:-1]
            model.children[prefix] = max(model.children.get(prefix, 0), int(key[-1]))


# --- values ------------------------------------------------------------------------
_INT_RANGES = {
    "tinyint": 127,
    "smallint": 32_767,
    "mediumint": 8_388_607,
    "int": 2_147_483_647,
    "integer": 2_147_483_647,
    "bigint": 9_223_372_036_854_775_807,
}
_SURNAMES = ["kim", "lee", "park", "choi", "jung", "kang", "cho", "yoon", "jang", "lim", "han", "oh"]
_GIVEN = ["minjun", "seoyeon", "doyun", "jiwoo", "haeun", "siwoo", "yerin", "jihoon", "sua", "eunwoo"]
_WORDS = ["fast", "blue", "quiet", "red", "early", "late", "small", "large", "north", "south"]
_WORDS += ["ready", "fresh", "dry", "warm", "cold", "bright", "plain"]
_EPOCH = datetime(2018, 1, 1)
_TIMESTAMP_LIMIT = datetime(2027, 12, 31)


class _Values:
    """Random column values by type; names give a few columns plausible content."""

    def __init__(self, rng: random.Random, models: dict[str, TableModel]) -> None:
        self.rng = rng
        self.models = models
        self.serial = 0

    def _ref(self, column: Column) -> TableModel | None:
        if not column.name.endswith("_id"):
            return None
        target = self.models.get(column.name[:-3] + "s")
        return target if target is not None and len(target.key) == 1 else None

    def value(self, column: Column, *, allow_null: bool = True) -> Any:
        rng = self.rng
        if allow_null and column.nullable and rng.random() < NULL_SHARE:
            return None
        dtype, name = column.data_type, column.name.lower()
        ref = self._ref(column)
        if ref is not None and ref.keys:
            return rng.choice(ref.keys)[0]
        if dtype == "bit":
            bits = int(re.search(r"\d+", column.column_type).group()) if "(" in column.column_type else 1  # type: ignore[union-attr]
            return rng.getrandbits(bits)
        if dtype == "tinyint" and column.column_type.startswith("tinyint(1)"):
            return rng.random() < 0.5
        if dtype in _INT_RANGES and name in ("qty", "quantity", "count", "counter"):
            return rng.randint(0, 500)
        if dtype in _INT_RANGES:
            top = _INT_RANGES[dtype]
            if "unsigned" in column.column_type:
                return rng.randint(0, min(top, 1_000_000))
            return rng.randint(-min(top, 1000), min(top, 1_000_000))
        if dtype == "decimal":
            precision, scale = column.precision or 10, column.scale or 0
            digits = min(precision - scale, 6)
            units = rng.randint(0, 10**digits - 1) if digits > 0 else 0
            cents = rng.randint(0, 10**scale - 1) if scale else 0
            sign = -1 if rng.random() < 0.05 else 1
            return sign * (Decimal(units) + Decimal(cents).scaleb(-scale))
        if dtype in ("float", "double"):
            return round(rng.uniform(-1e6, 1e6), 6)
        if dtype == "date":
            return date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 70))
        if dtype in ("datetime", "timestamp"):
            when = _EPOCH + timedelta(seconds=rng.uniform(0, (_TIMESTAMP_LIMIT - _EPOCH).total_seconds()))
            if "(" not in column.column_type:
                when = when.replace(microsecond=0)
            return when
        if dtype == "time":
            return timedelta(seconds=rng.randint(0, 86_399), microseconds=0)
        if dtype == "year":
            return rng.randint(1990, 2030)
        if dtype == "enum":
            choices = re.findall(r"'((?:[^']|'')*)'", column.column_type)
            return rng.choice(choices).replace("''", "'")
        if dtype == "json" or (dtype == "longtext" and name in ("profile", "attrs", "payload", "json")):
            return json.dumps(self._json())
        if dtype in ("char", "varchar", "text", "tinytext", "mediumtext", "longtext"):
            return self._text(column)
        if dtype in ("binary", "varbinary", "blob", "tinyblob", "mediumblob", "longblob"):
            return rng.randbytes(min(column.max_length or 16, 16))
        raise TrafficError(f"column {column.name} {column.column_type}: no generator for this type")

    def _json(self) -> dict[str, Any]:
        rng = self.rng
        doc: dict[str, Any] = {
            "tier": rng.choice(["bronze", "silver", "gold"]),
            "score": round(rng.random() * 100, 2),
            "tags": rng.sample(_WORDS, rng.randint(0, 3)),
        }
        if rng.random() < 0.5:
            doc["address"] = {
                "city": rng.choice(["Seoul", "Busan", "Incheon"]),
                "zip": f"{rng.randint(0, 99999):05d}",
            }
        if rng.random() < 0.2:
            doc["note"] = None
        return doc

    def _text(self, column: Column) -> str:
        rng, name = self.rng, column.name.lower()
        limit = column.max_length or 200
        self.serial += 1
        if "email" in name:
            text = f"{rng.choice(_GIVEN)}.{rng.choice(_SURNAMES)}{self.serial}@example.com"
        elif name == "name" or name.endswith("_name"):
            text = f"{rng.choice(_SURNAMES).title()} {rng.choice(_GIVEN).title()}"
        elif "sku" in name or "code" in name:
            text = f"{name[:3].upper()}-{rng.randint(0, 99_999_999):08d}"
        else:
            words = rng.choices(_WORDS, k=rng.randint(1, 12 if limit > 100 else 4))
            text = " ".join(words)
            if rng.random() < 0.1:
                text += " 한글 ü 'quote' 100%"
        return text[:limit]

    def new_key(self, model: TableModel) -> tuple[Any, ...] | None:
        """A key not in use (None: auto-increment, the server picks it)."""
        if model.auto_key:
            return None
        if len(model.key) == 1:
            while True:
                candidate = (self._key_value(model.key[0], model),)
                if candidate not in model.index:
                    return candidate
        # composite: a prefix (an existing parent's key when the first column references one), then
        # the next number within it
        ref = self._ref(model.key[0])
        open_prefixes = list(model.children)
        if ref is not None and ref.keys and self.rng.random() < 0.8:
            prefix: tuple[Any, ...] = (
                self.rng.choice(ref.keys)[0],
                *[self.value(c, allow_null=False) for c in model.key[1:-1]],
            )
        elif open_prefixes and self.rng.random() < 0.5:
            prefix = open_prefixes[-1]
        else:
            prefix = (
                self._key_value(model.key[0], model),
                *[self.value(c, allow_null=False) for c in model.key[1:-1]],
            )
        number = model.children.get(prefix, 0) + 1
        return (*prefix, number)

    def _key_value(self, column: Column, model: TableModel) -> Any:
        n = model.next_value
        model.next_value += 1
        if column.data_type in _INT_RANGES:
            return n
        if column.data_type in ("char", "varchar"):
            prefix = column.name[:3].upper()
            text = f"{prefix}-{n:08d}"
            limit = column.max_length or 32
            return text if len(text) <= limit else str(n)[-limit:]
        return self.value(column, allow_null=False)


# --- the traffic -------------------------------------------------------------------
@dataclass
class TrafficStats:
    """What a run committed: rows changed per table and op, and how well it kept the pace."""

    database: str
    target_rate: float  # changes/s asked (inf: as fast as possible)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> op -> rows
    transactions: int = 0
    statements: int = 0
    seconds: float = 0.0
    max_lag: float = 0.0  # the most the run was behind its schedule, seconds
    reconnects: int = 0

    @property
    def changes(self) -> int:
        return sum(sum(ops.values()) for ops in self.counts.values())

    @property
    def achieved_rate(self) -> float:
        return self.changes / self.seconds if self.seconds > 0 else 0.0

    def total(self, op: str) -> int:
        return sum(ops.get(op, 0) for ops in self.counts.values())

    def net_rows(self, table: str) -> int:
        """Rows this run added to a table: inserts minus deletes."""
        ops = self.counts.get(table, {})
        return ops.get("insert", 0) - ops.get("delete", 0)

    def summary(self) -> str:
        target = "max" if math.isinf(self.target_rate) else f"{self.target_rate:g}/s"
        return (
            f"{self.database}: {self.changes:,} changes ({self.total('insert'):,} inserts,"
            f" {self.total('update'):,} updates, {self.total('delete'):,} deletes) in"
            f" {self.transactions:,} transactions, {self.seconds:.1f} s: {self.achieved_rate:,.1f}/s"
            f" (target {target}, max lag {self.max_lag:.1f} s)"
        )


class _Stop:
    """A stop request: an Event, a callable, or nothing."""

    def __init__(self, stop: threading.Event | Callable[[], bool] | None) -> None:
        self.stop = stop

    def __call__(self) -> bool:
        if self.stop is None:
            return False
        if isinstance(self.stop, threading.Event):
            return self.stop.is_set()
        return bool(self.stop())

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when stopped meanwhile."""
        if isinstance(self.stop, threading.Event):
            return self.stop.wait(seconds)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self():
                return True
            time.sleep(min(left, 0.25))
        return self()


def run_traffic(
    url: str,
    database: str,
    tables: list[str],
    *,
    rate: float,
    seconds: float | None = None,
    changes: int | None = None,
    mix: tuple[float, float, float] = DEFAULT_MIX,
    txn_size: int = 1,
    statement_rows: int = 1,
    seed: int = 0,
    progress: bool = False,
    on_commit: Callable[[TrafficStats], None] | None = None,
    stop: threading.Event | Callable[[], bool] | None = None,
) -> TrafficStats:
    """Insert, update and delete rows of `tables` at `rate` changes/s until `seconds` or `changes`
    (or `stop`, or forever when none is given).

    mix: shares of insert, update, delete statements (an update or delete on a table without rows
    inserts instead). txn_size: statements per transaction. statement_rows: rows per statement.
    rate: row changes per second; math.inf for as fast as the server goes. on_commit is called
    with the running stats after each commit. A lost connection is re-opened (the open
    transaction is lost and not counted) and the run goes on.
    """
    if not tables:
        raise TrafficError("no tables to change")
    if not rate > 0:
        raise TrafficError(f"rate must be positive (math.inf: unpaced), got {rate}")
    if len(mix) != 3 or any(m < 0 for m in mix) or sum(mix) <= 0:
        raise TrafficError(f"mix must be three non-negative shares (insert, update, delete), got {mix}")
    if txn_size < 1 or statement_rows < 1:
        raise TrafficError("txn_size and statement_rows must be at least 1")
    if changes is not None and changes < 0:
        raise TrafficError(f"changes must not be negative, got {changes}")
    import pymysql

    rng = random.Random(seed)
    stopped = _Stop(stop)
    stats = TrafficStats(database, rate, {t: dict.fromkeys(OPS, 0) for t in tables})
    conn = _connect(_server_url(url), database)
    models: dict[str, TableModel] = {}
    with conn.cursor() as cur:
        for t in tables:
            models[t] = _describe(cur, database, _check_name("table", t))
            _load_keys(cur, models[t])
        cur.execute("SELECT @@auto_increment_increment")
        increment = int(cur.fetchone()[0])
    conn.commit()
    values = _Values(rng, models)
    weights = [m / sum(mix) for m in mix]

    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=changes, desc=f"{database}", unit=" chg", file=sys.stderr, dynamic_ncols=True)

    interval = 0.0 if math.isinf(rate) else 1.0 / rate
    start = time.monotonic()
    done = 0  # changes committed or pending: the schedule's clock
    behind_since: float | None = None
    pending: dict[tuple[str, str], int] = {}
    in_txn = 0

    def finished() -> bool:
        if stopped():
            return True
        if changes is not None and stats.changes + sum(pending.values()) >= changes:
            return True
        return seconds is not None and time.monotonic() - start >= seconds

    def commit() -> None:
        nonlocal in_txn
        conn.commit()
        for (t, op), n in pending.items():
            stats.counts[t][op] += n
        pending.clear()
        stats.transactions += 1
        in_txn = 0
        if bar is not None:
            bar.n = stats.changes
            bar.set_postfix_str(f"max lag {stats.max_lag:.1f} s", refresh=False)
            bar.refresh()
        if on_commit is not None:
            on_commit(stats)

    try:
        while not finished():
            # pace: the next change is due at start + done / rate
            if interval:
                due = start + done * interval
                now = time.monotonic()
                if due > now:
                    if in_txn == 0 and stopped.wait(due - now):
                        break
                    if in_txn:
                        time.sleep(due - now)
                    behind_since = None
                else:
                    lag = now - due
                    stats.max_lag = max(stats.max_lag, lag)
                    if lag > BEHIND_WARN_SECONDS and behind_since is None:
                        behind_since = now
                        log.warning(
                            "%s: change traffic is %.1f s behind its schedule (target %g changes/s,"
                            " achieved %.1f/s so far)",
                            database,
                            lag,
                            rate,
                            done / max(now - start, 1e-9),
                        )
            want = statement_rows
            if changes is not None:
                want = min(want, changes - stats.changes - sum(pending.values()))
            if want <= 0:
                break
            table = rng.choice(tables)
            op = rng.choices(OPS, weights)[0]
            try:
                with conn.cursor() as cur:
                    op, n = _statement(cur, models[table], values, op, want, increment, rng)
                stats.statements += 1
                if n:
                    pending[(table, op)] = pending.get((table, op), 0) + n
                done += max(n, 1)
                in_txn += 1
                if in_txn >= txn_size:
                    commit()
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                if isinstance(exc, pymysql.err.OperationalError) and exc.args[0] not in _LOST:
                    raise
                log.warning("%s: connection lost (%s); the open transaction is lost", database, exc)
                pending.clear()
                in_txn = 0
                conn = _reconnect(url, database, models, stopped, stats)
                if conn is None:
                    break
        if in_txn:
            commit()
    finally:
        stats.seconds = time.monotonic() - start
        if bar is not None:
            bar.close()
        try:
            conn.rollback()
            conn.close()
        except Exception:  # a connection already gone has nothing to close
            pass
    return stats


def _reconnect(
    url: str, database: str, models: dict[str, TableModel], stopped: _Stop, stats: TrafficStats
) -> Any:
    """A new connection after a lost one, its tables' keys reloaded; None when stopped first."""

    def connect() -> Any:
        conn = _connect(_server_url(url), database)
        with conn.cursor() as cur:
            for model in models.values():
                _load_keys(cur, model)
        conn.commit()
        return conn

    return reconnect(connect, stopped.wait, stats, name=database, log=log, retry_on=TrafficError)


def _statement(
    cur: Any,
    model: TableModel,
    values: _Values,
    op: str,
    rows: int,
    increment: int,
    rng: random.Random,
) -> tuple[str, int]:
    """One INSERT, UPDATE or DELETE of up to `rows` rows; (op done, rows the server changed)."""
    if op != "insert" and not model.keys:
        op = "insert"
    table = f"`{model.name}`"
    if op == "insert":
        keys: list[tuple[Any, ...] | None] = []
        for _ in range(rows):
            key = values.new_key(model)
            if key is not None:
                # reserve it now: the next key of this statement must differ
                model.add_key(key)
                if len(model.key) > 1:
                    model.children[key[:-1]] = int(key[-1])
            keys.append(key)
        cols = model.written
        names = ", ".join(f"`{c.name}`" for c in cols)
        key_names = {c.name for c in model.key}
        params: list[Any] = []
        for key in keys:
            by_key = dict(zip([c.name for c in model.key], key or (), strict=False))
            for c in cols:
                params.append(by_key[c.name] if c.name in key_names else values.value(c))
        marks = "(" + ", ".join(["%s"] * len(cols)) + ")"
        n = cur.execute(f"INSERT INTO {table} ({names}) VALUES {', '.join([marks] * rows)}", params)
        if model.auto_key:
            first = cur.lastrowid
            for i in range(rows):
                model.add_key((first + i * increment,))
        return op, int(n)

    chosen = rng.sample(model.keys, min(rows, len(model.keys)))
    where, params = _key_filter(model, chosen)
    if op == "update":
        picked = rng.sample(model.updatable, rng.randint(1, min(3, len(model.updatable))))
        if all(_is_flag(c) for c in picked):  # a flag re-set to its value changes nothing
            others = [c for c in model.updatable if not _is_flag(c)]
            if others:
                picked.append(rng.choice(others))
        sets = ", ".join(f"`{c.name}` = %s" for c in picked)
        n = cur.execute(
            f"UPDATE {table} SET {sets} WHERE {where}", [values.value(c) for c in picked] + params
        )
        return op, int(n)
    n = cur.execute(f"DELETE FROM {table} WHERE {where}", params)
    for key in chosen:
        model.remove_key(key)
    return op, int(n)


def _is_flag(column: Column) -> bool:
    return column.data_type in ("bit", "enum") or column.column_type.startswith("tinyint(1)")


def _key_filter(model: TableModel, keys: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    params = [v for key in keys for v in key]
    if len(model.key) == 1:
        return f"`{model.key[0].name}` IN ({', '.join(['%s'] * len(keys))})", params
    cols = ", ".join(f"`{c.name}`" for c in model.key)
    one = "(" + ", ".join(["%s"] * len(model.key)) + ")"
    return f"({cols}) IN ({', '.join([one] * len(keys))})", params


# --- the demo ----------------------------------------------------------------------
def demo_traffic(
    main_url: str,
    second_url: str | None,
    rate: float = 2.0,
    progress: bool = False,
    *,
    seconds: float | None = None,
    stop: threading.Event | None = None,
) -> dict[str, TrafficStats]:
    """Gentle traffic on the demo mapping's tables, `rate` changes/s in all, until stopped (Ctrl-C).

    The main server (cdc_demo: customers, orders, order_lines) gets its share by table count, the
    second (inventory: stock) the rest; a second server that is unreachable is skipped with a
    message. Schemas are created first when missing. Returns each server's stats.
    """
    plans: list[tuple[str, str, str, list[str]]] = []
    plans.append(
        ("main", main_url, DEMO_MAIN_DATABASE, ensure_demo_schema(main_url, DEMO_MAIN_DATABASE, "main"))
    )
    if second_url:
        try:
            tables = ensure_demo_schema(second_url, DEMO_SECOND_DATABASE, "second")
            plans.append(("second", second_url, DEMO_SECOND_DATABASE, tables))
        except TrafficError as exc:
            message = f"second cluster skipped: {exc} (start it with scripts/mariadb2.sh)"
            log.warning(message)
            print(message, flush=True)
    total_tables = sum(len(p[3]) for p in plans)
    stop = stop or threading.Event()
    results: dict[str, TrafficStats] = {}
    errors: dict[str, BaseException] = {}

    def one(name: str, url: str, database: str, tables: list[str], seed: int) -> None:
        try:
            results[name] = run_traffic(
                url,
                database,
                tables,
                rate=rate * len(tables) / total_tables,
                seconds=seconds,
                seed=seed,
                progress=progress,
                stop=stop,
            )
        except BaseException as exc:
            errors[name] = exc
            stop.set()

    threads = [
        threading.Thread(target=one, args=(*plan, seed), name=f"cdc-traffic-{plan[0]}", daemon=True)
        for seed, plan in enumerate(plans, start=int(time.time()))
    ]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if errors:
        name, error = next(iter(errors.items()))
        raise TrafficError(f"demo traffic on {name} failed: {error}") from error
    for stats in results.values():
        log.info(stats.summary())
    return results
