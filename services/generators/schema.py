"""The card-company customer database: one column list, DDL for PostgreSQL and MariaDB.

Columns are declared once with their SQL types; the only dialect difference is
TIMESTAMP, which MariaDB spells DATETIME (its own TIMESTAMP is a UTC-converted,
1970-2038, auto-updating type, not the SQL standard's timestamp without time zone).
No foreign keys: they slow bulk loads, and the on-prem source has none to rely on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, SQL type)
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]


CUSTOMERS = Table(
    "customers",
    (
        ("customer_id", "BIGINT"),
        ("name", "VARCHAR(50)"),
        ("rrn", "CHAR(14)"),
        ("phone", "VARCHAR(20)"),
        ("email", "VARCHAR(100)"),
        ("birth_date", "DATE"),
        ("gender", "CHAR(1)"),
        ("grade", "VARCHAR(10)"),
        ("address", "VARCHAR(200)"),
        ("is_active", "BOOLEAN"),
        ("joined_at", "TIMESTAMP"),
        ("updated_at", "TIMESTAMP"),
    ),
    ("customer_id",),
)
ACCOUNTS = Table(
    "accounts",
    (
        ("account_id", "BIGINT"),
        ("customer_id", "BIGINT"),
        ("account_no", "VARCHAR(20)"),
        ("status", "VARCHAR(10)"),
        ("credit_limit", "NUMERIC(14,2)"),
        ("opened_at", "DATE"),
        ("updated_at", "TIMESTAMP"),
    ),
    ("account_id",),
)
CARDS = Table(
    "cards",
    (
        ("card_id", "BIGINT"),
        ("account_id", "BIGINT"),
        ("customer_id", "BIGINT"),
        ("card_no", "VARCHAR(19)"),
        ("brand", "VARCHAR(10)"),
        ("status", "VARCHAR(10)"),
        ("issued_at", "DATE"),
        ("expires_at", "DATE"),
        ("updated_at", "TIMESTAMP"),
    ),
    ("card_id",),
)
MERCHANTS = Table(
    "merchants",
    (
        ("merchant_id", "INT"),
        ("name", "VARCHAR(100)"),
        ("category", "VARCHAR(30)"),
        ("city", "VARCHAR(30)"),
        ("registered_at", "DATE"),
        ("updated_at", "TIMESTAMP"),
    ),
    ("merchant_id",),
)
CARD_TRANSACTIONS = Table(
    "card_transactions",
    (
        ("txn_id", "BIGINT"),
        ("card_id", "BIGINT"),
        ("merchant_id", "INT"),
        ("txn_at", "TIMESTAMP"),
        ("txn_date", "DATE"),
        ("amount", "NUMERIC(12,2)"),
        ("currency", "CHAR(3)"),
        ("status", "VARCHAR(10)"),
        ("installment_months", "SMALLINT"),
        ("created_at", "TIMESTAMP"),
    ),
    ("txn_id",),
    indexes=(("txn_date",),),
)
# Every column a string, as a Sqoop text import leaves a mart table.
MART_CUSTOMER_MONTHLY = Table(
    "mart_customer_monthly",
    (
        ("base_month", "VARCHAR(6)"),
        ("customer_id", "VARCHAR(20)"),
        ("txn_count", "VARCHAR(20)"),
        ("total_amount", "VARCHAR(30)"),
        ("last_txn_date", "VARCHAR(10)"),
        ("grade", "VARCHAR(20)"),
        ("phone", "VARCHAR(20)"),
        ("is_vip", "VARCHAR(1)"),
    ),
    ("base_month", "customer_id"),
)

TABLES: tuple[Table, ...] = (
    CUSTOMERS,
    ACCOUNTS,
    CARDS,
    MERCHANTS,
    CARD_TRANSACTIONS,
    MART_CUSTOMER_MONTHLY,
)


def sql_type(sql: str, dialect: str) -> str:
    return "DATETIME" if dialect == "mysql" and sql == "TIMESTAMP" else sql


def create_table_sql(table: Table, dialect: str, name: str | None = None, temporary: bool = False) -> str:
    columns = ", ".join(f"{col} {sql_type(typ, dialect)}" for col, typ in table.columns)
    keyword = "CREATE TEMPORARY TABLE" if temporary else "CREATE TABLE"
    # utf8mb4: Hangul names and addresses (MariaDB's older defaults cannot hold every character).
    suffix = " DEFAULT CHARSET = utf8mb4" if dialect == "mysql" else ""
    return f"{keyword} {name or table.name} ({columns}, PRIMARY KEY ({', '.join(table.primary_key)})){suffix}"


def create_index_sql(table: Table, columns: tuple[str, ...]) -> str:
    return f"CREATE INDEX ix_{table.name}_{'_'.join(columns)} ON {table.name} ({', '.join(columns)})"
