"""Runtime profiles: the one place that picks resource implementations.

PLATFORM_PROFILE selects a profile (read once, when the Definitions are
built, as Dagster's own examples pick resources per deployment). Everything
else a resource needs (paths, endpoints, buckets, credentials) is read when
the resource is used, so loading the code location needs no configuration.

    local     lake in a local directory, DuckDB warehouse, AWS services on moto (default)
    local-s3  as local, with the lake in a moto S3 bucket
    aws       lake in S3, BigQuery warehouse, real AWS services
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from resources import settings
from resources.aws import AwsClients
from resources.cache import RedisCache
from resources.lake import LocalLake, S3Lake
from resources.spark import ConfiguredSparkRunner
from resources.sql_source import SqlSource
from resources.warehouse import BigQueryWarehouse, DuckDBWarehouse


def _local() -> dict[str, Any]:
    aws = AwsClients(use_local_endpoint=True)
    return {
        "aws": aws,
        "lake": LocalLake(),
        "warehouse": DuckDBWarehouse(),
        "cache": RedisCache(),
        "spark": ConfiguredSparkRunner(aws=aws),
    }


def _local_s3() -> dict[str, Any]:
    resources = _local()
    resources["lake"] = S3Lake(aws=resources["aws"])
    return resources


def _aws() -> dict[str, Any]:
    aws = AwsClients()
    return {
        "aws": aws,
        "lake": S3Lake(aws=aws, bucket=dg.EnvVar("PLATFORM_LAKE_BUCKET")),
        "warehouse": BigQueryWarehouse(
            project=dg.EnvVar("PLATFORM_BIGQUERY_PROJECT"), dataset=dg.EnvVar("PLATFORM_BIGQUERY_DATASET")
        ),
        "cache": RedisCache(url=dg.EnvVar("PLATFORM_REDIS_URL")),
        "spark": ConfiguredSparkRunner(aws=aws),
    }


def sql_source(url_env: str, local_url: str) -> SqlSource:
    """A relational source: the catalog's local URL on this machine, the URL in `url_env` on AWS."""
    if settings.profile_name() == "aws":
        return SqlSource(url=dg.EnvVar(url_env))
    return SqlSource(url=local_url)


PROFILES: dict[str, Callable[[], dict[str, Any]]] = {"local": _local, "local-s3": _local_s3, "aws": _aws}


def build_resources(profile: str | None = None) -> dict[str, Any]:
    name = profile or settings.profile_name()
    if name not in PROFILES:
        raise ValueError(f"PLATFORM_PROFILE={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return PROFILES[name]()
