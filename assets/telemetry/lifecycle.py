"""The telemetry tiers and their lifecycle: which datasets age, when, and where they go.

In an S3 lake the bucket's lifecycle configuration does the tiering: each dataset's objects move
to Standard-IA after 30 days and to Glacier after 365 (the seed's tiers), and expire after the
tier's retention (resources.settings.telemetry_retention_days). A transition that would come
after the expiration is left out (S3 refuses it), so raw (90 days) goes to Standard-IA only.
In a local lake the `telemetry/archive` asset (archive.py) does the same job.

Rules are per dataset prefix, not per `<tier>/telemetry/`: the raw tier also holds the Kinesis
consumer's checkpoints (raw/telemetry/kinesis_checkpoints/), which must never expire.

One more rule collects what a Spark run killed between staging and cleanup leaves under the lake's
`_staging/` (resources.lake.paths.STAGING_ROOT): objects there expire after a day (S3's minimum),
and multipart uploads left incomplete there are aborted after a day. Every staging job is named
uniquely per run, so a day-old object there belongs to a run that is over (or has outlived a day).
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from assets.shared.automation import initial_load
from assets.shared.conventions import domain_asset_args
from resources import settings
from resources.lake import LakeStorage, S3Lake, Tier, dataset_prefix
from resources.lake.paths import STAGING_ROOT

DOMAIN = "telemetry"
IA_AFTER_DAYS = 30
GLACIER_AFTER_DAYS = 365
RULE_ID_PREFIX = "telemetry-tiers-"  # every rule of ours, and only ours, has an ID starting so
STAGING_RULE_ID = f"{RULE_ID_PREFIX}staging"  # no clash with the datasets': "staging" is not a Tier
STAGING_EXPIRE_DAYS = 1  # S3's minimum; the local archive asset sweeps staging at the same age


@dataclass(frozen=True)
class TieredDataset:
    """A telemetry dataset that ages: hourly partitions in `tier`, archived by day."""

    tier: Tier
    dataset: str

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.tier, DOMAIN, self.dataset)

    @property
    def archived_dataset(self) -> str:
        # The source tier is part of the name: raw and processed both call their dataset "readings".
        return f"{self.tier.value}_{self.dataset}"

    @property
    def rule_id(self) -> str:
        return f"{RULE_ID_PREFIX}{self.tier.value}-{self.dataset}"

    def retention_days(self) -> int:
        return settings.telemetry_retention_days(self.tier.value)


TIERED_DATASETS = (
    TieredDataset(Tier.RAW, "readings"),
    TieredDataset(Tier.PROCESSED, "readings"),
    TieredDataset(Tier.CURATED, "hourly_summary"),
)


def lake_in_s3(lake: LakeStorage) -> bool:
    """The one switch of this domain's tiering and SQL access: S3 (lifecycle, Glue) or local
    (archive asset, DuckDB views)."""
    return isinstance(lake, S3Lake)


def s3_prefix(lake: S3Lake, key: str) -> str:
    """A lake key as the bucket's object key (under the lake's root prefix)."""
    return lake.uri(key).removeprefix(f"s3://{lake.bucket_name}/")


def lifecycle_rules(lake: S3Lake) -> list[dict[str, Any]]:
    """The bucket lifecycle rules of the telemetry datasets and of the lake's staging prefix, as
    boto3 takes them."""
    rules = []
    for ds in TIERED_DATASETS:
        retention = ds.retention_days()
        transitions = [
            {"Days": days, "StorageClass": cls}
            for days, cls in ((IA_AFTER_DAYS, "STANDARD_IA"), (GLACIER_AFTER_DAYS, "GLACIER"))
            if days < retention
        ]
        rule: dict[str, Any] = {
            "ID": ds.rule_id,
            "Filter": {"Prefix": s3_prefix(lake, ds.prefix)},
            "Status": "Enabled",
            "Expiration": {"Days": retention},
        }
        if transitions:
            rule["Transitions"] = transitions
        rules.append(rule)
    rules.append(staging_rule(lake))
    return rules


def staging_rule(lake: S3Lake) -> dict[str, Any]:
    """The rule that collects leftover `_staging/<job>/` prefixes (objects and incomplete uploads)."""
    return {
        "ID": STAGING_RULE_ID,
        "Filter": {"Prefix": s3_prefix(lake, f"{STAGING_ROOT}/")},
        "Status": "Enabled",
        "Expiration": {"Days": STAGING_EXPIRE_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": STAGING_EXPIRE_DAYS},
    }


def lifecycle_configuration(lake: S3Lake) -> dict[str, Any]:
    """The `LifecycleConfiguration` argument of put_bucket_lifecycle_configuration (ours only)."""
    return {"Rules": lifecycle_rules(lake)}


def current_rules(lake: S3Lake) -> list[dict[str, Any]]:
    """The bucket's lifecycle rules; [] when it has none."""
    from botocore.exceptions import ClientError

    try:
        got = lake.aws.client("s3").get_bucket_lifecycle_configuration(Bucket=lake.bucket_name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
            return []
        raise
    return list(got.get("Rules", []))


def apply_lifecycle(lake: S3Lake) -> dict[str, Any]:
    """Put our rules on the lake's bucket, keeping every rule of anyone else (idempotent).

    S3 has one lifecycle configuration per bucket, replaced whole by a put, so the current one is
    read first and only rules with our IDs are replaced. Returns the configuration put.
    """
    ours = lifecycle_rules(lake)
    ids = {r["ID"] for r in ours}
    others = [r for r in current_rules(lake) if r.get("ID") not in ids]
    config = {"Rules": others + ours}
    lake.aws.client("s3").put_bucket_lifecycle_configuration(
        Bucket=lake.bucket_name, LifecycleConfiguration=config
    )
    return config


def _normalized(rule: dict[str, Any]) -> dict[str, Any]:
    """The parts of a rule we set, in one shape (S3 may answer with a top-level Prefix or extras)."""
    flt = rule.get("Filter") or {}
    return {
        "ID": rule.get("ID"),
        "Status": rule.get("Status"),
        "Prefix": flt.get("Prefix", rule.get("Prefix")),
        "Transitions": sorted((t.get("Days"), t.get("StorageClass")) for t in rule.get("Transitions", [])),
        "Expiration": (rule.get("Expiration") or {}).get("Days"),
        "AbortIncompleteMultipartUpload": (rule.get("AbortIncompleteMultipartUpload") or {}).get(
            "DaysAfterInitiation"
        ),
    }


def lifecycle_differences(lake: S3Lake) -> list[str]:
    """How the bucket's lifecycle differs from ours: one line per missing or different rule."""
    present = {r.get("ID"): _normalized(r) for r in current_rules(lake)}
    problems = []
    for rule in lifecycle_rules(lake):
        want = _normalized(rule)
        got = present.get(rule["ID"])
        if got is None:
            problems.append(f"rule {rule['ID']} is missing")
        elif got != want:
            problems.append(f"rule {rule['ID']} is {got}, expected {want}")
    return problems


@dg.asset(
    key=[DOMAIN, "lake_lifecycle"],
    description=(
        "S3 lake: puts the telemetry tiers' lifecycle rules on the bucket (Standard-IA at 30 days,"
        " Glacier at 365, expiry at retention) and one expiring leftover `_staging/` objects and"
        " incomplete uploads after a day, keeping other rules. Local lake: nothing to put;"
        " telemetry/archive does the tiering and the staging sweep."
    ),
    automation_condition=initial_load() | dg.AutomationCondition.on_cron("30 2 * * *"),
    **domain_asset_args(DOMAIN),
)
def lake_lifecycle(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
    if not lake_in_s3(lake):
        return dg.MaterializeResult(metadata={"mode": "local", "rules": 0})
    assert isinstance(lake, S3Lake)
    config = apply_lifecycle(lake)
    ours = [r for r in config["Rules"] if str(r.get("ID", "")).startswith(RULE_ID_PREFIX)]
    context.log.info(f"lifecycle on s3://{lake.bucket_name}: {len(ours)} telemetry rules")
    return dg.MaterializeResult(
        metadata={
            "mode": "s3",
            "bucket": lake.bucket_name,
            "rules": len(ours),
            "other_rules_kept": len(config["Rules"]) - len(ours),
            "configuration": dg.MetadataValue.json(ours),
        }
    )


@dg.asset_check(asset=lake_lifecycle, description="S3 lake: the bucket's lifecycle has our rules, unchanged.")
def lifecycle_matches(lake: LakeStorage) -> dg.AssetCheckResult:
    if not lake_in_s3(lake):
        return dg.AssetCheckResult(passed=True, metadata={"mode": "local", "applies": False})
    assert isinstance(lake, S3Lake)
    problems = lifecycle_differences(lake)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"mode": "s3", "bucket": lake.bucket_name, "problems": dg.MetadataValue.json(problems)},
    )


ASSETS = [lake_lifecycle]
CHECKS = [lifecycle_matches]
