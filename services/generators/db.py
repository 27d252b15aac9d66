"""One connection to the generated database and the fastest bulk path its driver has.

PostgreSQL loads with COPY (psycopg 3 `cursor.copy`), MariaDB with
`LOAD DATA LOCAL INFILE` (PyMySQL with local_infile); both read the same CSV,
written by pyarrow's C++ writer (strings always quoted, NULL as a bare word).
A server or client that refuses LOCAL INFILE gets batched multi-row INSERTs
instead, announced once in the log.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from services.generators.schema import Table, create_index_sql, create_table_sql

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

# PyMySQL error codes for "LOCAL INFILE not allowed": MySQL 5.x, client-side refusal,
# MySQL 8 (disabled on one side), MariaDB (disabled on one side).
_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 4166}


class CardDb:
    """A DBAPI connection (psycopg or PyMySQL) to the database a SQLAlchemy URL names."""

    def __init__(self, url: str, create_database: bool = False) -> None:
        from sqlalchemy.engine import make_url

        self.url: URL = make_url(url)
        backend = self.url.get_backend_name()
        self.dialect = "mysql" if backend == "mariadb" else backend
        if self.dialect not in ("postgresql", "mysql"):
            raise ValueError(
                f"unsupported database {self.dialect!r}: use postgresql+psycopg or mysql+pymysql"
            )
        if create_database:
            self._create_database()
        self.conn: Any = self._connect(self.url.database)
        self._load_data = self.dialect == "mysql"
        if self.dialect == "mysql":
            with self.conn.cursor() as cur:
                # strict: a value that does not fit fails the load instead of a silent truncation
                cur.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")

    def __enter__(self) -> CardDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    # --- plain SQL --------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        """Runs one statement; returns its row count."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return int(cur.rowcount)

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None

    def has_table(self, name: str) -> bool:
        schema = "current_schema()" if self.dialect == "postgresql" else "DATABASE()"
        where = f"table_schema = {schema} AND table_name = %s"
        return bool(self.scalar(f"SELECT COUNT(*) FROM information_schema.tables WHERE {where}", (name,)))

    def commit(self) -> None:
        self.conn.commit()

    # --- tables -----------------------------------------------------------------
    def recreate(self, table: Table) -> None:
        self.execute(f"DROP TABLE IF EXISTS {table.name}")
        self.execute(create_table_sql(table, self.dialect))
        self.commit()

    def create_indexes(self, table: Table) -> None:
        """Secondary indexes, built once after the bulk load (cheaper than maintaining them row by row)."""
        for columns in table.indexes:
            self.execute(create_index_sql(table, columns))
        if self.dialect == "postgresql":
            self.execute(f"ANALYZE {table.name}")
        self.commit()

    def create_temp_table(self, table: Table, name: str) -> None:
        self.execute(f"DROP {'TEMPORARY ' if self.dialect == 'mysql' else ''}TABLE IF EXISTS {name}")
        self.execute(create_table_sql(table, self.dialect, name=name, temporary=True))

    def load(self, table: Table, data: pa.Table, into: str | None = None) -> None:
        """Appends `data` (columns in the table's order) to the table, or to `into` (a staging table)."""
        if data.num_rows == 0:
            return
        target = into or table.name
        columns = ", ".join(data.column_names)
        if self.dialect == "postgresql":
            with (
                self.conn.cursor() as cur,
                cur.copy(f"COPY {target} ({columns}) FROM STDIN (FORMAT csv, NULL 'NULL')") as copy,
            ):
                copy.write(_csv(data))
            return
        import pymysql

        data = _mysql_values(data)
        if self._load_data:
            try:
                self._load_data_infile(target, columns, data)
                return
            except pymysql.err.MySQLError as exc:
                if not exc.args or exc.args[0] not in _LOCAL_INFILE_REFUSED:
                    raise
                self._load_data = False
                log.warning(
                    "LOAD DATA LOCAL INFILE refused by %s (%s): "
                    "loading with batched multi-row INSERTs instead (slower)",
                    self.safe_url(),
                    exc.args[-1],
                )
        self._insert(target, data)

    # --- plumbing ---------------------------------------------------------------
    def _load_data_infile(self, target: str, columns: str, data: pa.Table) -> None:
        fd, path = tempfile.mkstemp(prefix="card_db_", suffix=".csv")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_csv(data))
            with self.conn.cursor() as cur:
                # ESCAPED BY '': the CSV escapes quotes by doubling them, never with a backslash.
                cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE {target} CHARACTER SET utf8mb4"
                    " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY ''"
                    f" LINES TERMINATED BY '\\n' ({columns})",
                    (path,),
                )
                loaded = cur.rowcount
                if loaded != data.num_rows or cur.warning_count:
                    cur.execute("SHOW WARNINGS LIMIT 5")
                    problems = cur.fetchall()
                    raise RuntimeError(
                        f"LOAD DATA into {target}: {loaded} of {data.num_rows} rows, {problems}"
                    )
        finally:
            os.unlink(path)

    def _insert(self, target: str, data: pa.Table) -> None:
        rows = list(zip(*(column.to_pylist() for column in data.columns), strict=True))
        marks = ", ".join(["%s"] * data.num_columns)
        with self.conn.cursor() as cur:
            # PyMySQL's executemany packs the rows into multi-row INSERTs of up to ~1 MB each.
            cur.executemany(f"INSERT INTO {target} ({', '.join(data.column_names)}) VALUES ({marks})", rows)

    def _connect(self, database: str | None) -> Any:
        url = self.url
        if self.dialect == "postgresql":
            import psycopg

            # libpq keyword options (sslmode, ...) from the URL's query string
            options: dict[str, Any] = {k: v for k, v in url.query.items() if isinstance(v, str)}
            return psycopg.connect(
                host=url.host or "localhost",
                port=url.port or 5432,
                user=url.username,
                password=url.password,
                dbname=database,
                **options,
            )
        import pymysql

        query = dict(url.query)
        # LOCAL INFILE on unless the URL says otherwise (?local_infile=0).
        local_infile = str(query.pop("local_infile", "1")).lower() not in ("0", "false", "no")
        return pymysql.connect(
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            database=database,
            charset=str(query.pop("charset", "utf8mb4")),
            local_infile=local_infile,
            **{k: v for k, v in query.items() if isinstance(v, str)},
        )

    def _create_database(self) -> None:
        name = self.url.database
        if not name:
            raise ValueError(f"no database named in {self.safe_url()}")
        if self.dialect == "postgresql":
            admin = self._connect("postgres")
            admin.autocommit = True
            with admin:
                if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    admin.execute(f'CREATE DATABASE "{name}"')
                    log.info("created database %s", name)
            return
        admin = self._connect(None)
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        finally:
            admin.close()


def _csv(data: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    pacsv.write_csv(data, sink, pacsv.WriteOptions(include_header=False, null_string="NULL"))
    return sink.getvalue().to_pybytes()


def _mysql_values(data: pa.Table) -> pa.Table:
    """MariaDB's BOOLEAN is TINYINT(1): it takes 1/0, not the words true/false."""
    import pyarrow as pa

    for i, field in enumerate(data.schema):
        if pa.types.is_boolean(field.type):
            data = data.set_column(i, field.name, data.column(i).cast(pa.int8()))
    return data
