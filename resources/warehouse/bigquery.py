"""The warehouse in BigQuery (production), through dagster-gcp's client.

google-cloud takes seconds to import, so it and dagster_gcp are imported
inside the methods: loading the code location never pays for them.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from resources.warehouse.base import LoadMode, Warehouse, merge_batch
from resources.warehouse.sql import merge_sql, table_parts, to_dialect

if TYPE_CHECKING:
    import pyarrow as pa
    from google.cloud import bigquery

# A staging table left behind by a killed process expires on its own.
STAGING_TTL = timedelta(days=1)


class BigQueryWarehouse(Warehouse):
    """BigQuery; unqualified table names (in SQL too) resolve to `dataset` in `project`.

    `gcp_credentials` is a base64-encoded service-account JSON, as
    dagster_gcp.BigQueryResource takes it; without it the environment's
    default credentials are used.
    """

    project: str
    dataset: str
    location: str | None = None
    gcp_credentials: str | None = None

    @property
    def dialect(self) -> str:
        return "bigquery"

    @contextmanager
    def client(self) -> Iterator[bigquery.Client]:
        from dagster_gcp import BigQueryResource  # lazy: imports google-cloud

        resource = BigQueryResource(
            project=self.project, location=self.location, gcp_credentials=self.gcp_credentials
        )
        # The credentials file BigQueryResource writes lives only inside this block.
        with resource.get_client() as client:
            yield client

    def table_id(self, table: str) -> str:
        """`project.dataset.table` for table, dataset.table or project.dataset.table."""
        parts = table_parts(table)
        if len(parts) == 1:
            return f"{self.project}.{self.dataset}.{parts[0]}"
        if len(parts) == 2:
            return f"{self.project}.{parts[0]}.{parts[1]}"
        return table

    def _query_config(self) -> bigquery.QueryJobConfig:
        from google.cloud import bigquery

        return bigquery.QueryJobConfig(default_dataset=f"{self.project}.{self.dataset}")

    # --- SQL ---------------------------------------------------------------
    def query(self, sql: str) -> pa.Table:
        with self.client() as client:
            rows = client.query_and_wait(to_dialect(sql, self.dialect), job_config=self._query_config())
            return rows.to_arrow()

    def execute(self, sql: str) -> None:
        with self.client() as client:
            client.query_and_wait(to_dialect(sql, self.dialect), job_config=self._query_config())

    def table_exists(self, table: str) -> bool:
        from google.api_core.exceptions import NotFound

        with self.client() as client:
            try:
                client.get_table(self.table_id(table))
            except NotFound:
                return False
        return True

    # --- loading -----------------------------------------------------------
    def load(self, table: str, data: pa.Table, mode: LoadMode = "append", job_id: str | None = None) -> int:
        from google.cloud import bigquery

        dispositions = {
            "append": bigquery.WriteDisposition.WRITE_APPEND,
            "replace": bigquery.WriteDisposition.WRITE_TRUNCATE,
        }
        if mode not in dispositions:
            raise ValueError(f"load mode must be 'append' or 'replace', not {mode!r}")
        table_id = self.table_id(table)
        with self.client() as client:
            self._ensure_dataset(client, table_id)
            job = _load_parquet(client, table_id, data, dispositions[mode], job_id)
        return int(job.output_rows) if job.output_rows is not None else data.num_rows

    def merge(
        self, table: str, data: pa.Table, keys: list[str], delete_column: str | None = None
    ) -> dict[str, int]:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        batch = merge_batch(data, keys, delete_column)
        columns = [c for c in batch.column_names if c != delete_column]
        target_id = self.table_id(table)
        staging_id = f"{target_id}__staging_{uuid.uuid4().hex}"
        statement = merge_sql(target_id, staging_id, keys, columns, delete_column)  # validates names first
        with self.client() as client:
            self._ensure_dataset(client, target_id)
            try:
                _load_parquet(client, staging_id, batch, bigquery.WriteDisposition.WRITE_TRUNCATE)
                staging = client.get_table(staging_id)
                staging.expires = datetime.now(UTC) + STAGING_TTL
                client.update_table(staging, ["expires"])
                try:
                    client.get_table(target_id)
                except NotFound:
                    schema = [f for f in staging.schema if f.name != delete_column]
                    client.create_table(bigquery.Table(target_id, schema=schema), exists_ok=True)
                job = client.query(to_dialect(statement, self.dialect), job_config=self._query_config())
                job.result()
            finally:
                client.delete_table(staging_id, not_found_ok=True)
        stats = job.dml_stats
        if stats is None:  # not reported: only the total is known
            return {"affected": int(job.num_dml_affected_rows or 0)}
        return {
            "inserted": stats.inserted_row_count,
            "updated": stats.updated_row_count,
            "deleted": stats.deleted_row_count,
        }

    def _ensure_dataset(self, client: Any, table_id: str) -> None:
        """Create the table's dataset if missing (in `location`), as DuckDB creates a schema."""
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        dataset_id = table_id.rsplit(".", 1)[0]
        try:
            client.get_dataset(dataset_id)
        except NotFound:
            dataset = bigquery.Dataset(dataset_id)
            dataset.location = self.location
            client.create_dataset(dataset, exists_ok=True)


def _load_parquet(
    client: Any, table_id: str, data: pa.Table, disposition: str, job_id: str | None = None
) -> Any:
    """Load an Arrow table through Parquet (no pandas round trip) and wait for the job."""
    import pyarrow.parquet as pq
    from google.cloud import bigquery
    from google.cloud.bigquery.format_options import ParquetOptions

    buffer = io.BytesIO()
    # BigQuery timestamps have microsecond precision; nanoseconds are truncated.
    pq.write_table(
        data, buffer, compression="snappy", coerce_timestamps="us", allow_truncated_timestamps=True
    )
    buffer.seek(0)
    parquet_options = ParquetOptions()
    parquet_options.enable_list_inference = True  # Arrow lists load as ARRAY columns
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        write_disposition=disposition,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        parquet_options=parquet_options,
    )
    if job_id is None:
        job = client.load_table_from_file(buffer, table_id, job_config=config)
    else:
        from google.api_core.exceptions import Conflict

        try:
            job = client.load_table_from_file(buffer, table_id, job_config=config, job_id=job_id)
        except Conflict:
            # This job id ran before (a re-delivered file, a re-run): BigQuery refuses it a
            # second time, which is what makes the load exactly-once. Wait for the first.
            job = client.get_job(job_id)
    job.result()
    return job
