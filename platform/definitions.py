"""The code location: every domain's Definitions, the profile's resources and the global defaults.

workspace.yaml loads this file. `platform/` is deliberately not a package (a
package named `platform` would shadow the standard library module).
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg

# Partition backfill policies and observable source assets are marked beta in
# Dagster 1.13; we rely on them knowingly, so their warnings are not repeated at every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from assets.cdc import definitions as cdc  # noqa: E402
from assets.lake_ops import definitions as lake_ops  # noqa: E402
from assets.migration import definitions as migration  # noqa: E402
from assets.reports import definitions as reports  # noqa: E402
from assets.store_sales import definitions as store_sales  # noqa: E402
from assets.telemetry import definitions as telemetry  # noqa: E402
from resources.profiles import build_resources  # noqa: E402

DOMAINS = [lake_ops, migration, cdc, store_sales, telemetry]

# Applied to every asset that does not declare its own freshness policy.
DEFAULT_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=1), warn_window=timedelta(hours=12)
)


# Dagster's default automation sensor starts stopped; these run from the first start, so assets
# with an AutomationCondition update on their own. One per domain: an automation run holds
# every asset that is due at once, and a long migration backfill must not hold back the CDC
# domain's minute-by-minute status page (or the other way round). A domain that brings its own
# (store_sales: a condition evaluated in the code server) keeps it.
def automation_sensors(domain_defs: list[dg.Definitions]) -> list[dg.AutomationConditionSensorDefinition]:
    own = {s.name for defs in domain_defs for s in defs.sensors or []}
    return [
        dg.AutomationConditionSensorDefinition(
            "platform_automation" if group == "default" else f"{group}_automation",
            target=dg.AssetSelection.groups(group),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=30,
            description=f"Evaluates the AutomationCondition of every asset in the {group} group.",
        )
        for group in _groups(domain_defs)
        if ("platform_automation" if group == "default" else f"{group}_automation") not in own
    ]


def _groups(domain_defs: list[dg.Definitions]) -> list[str]:
    """The asset groups of every domain (read off the definitions, no resources needed)."""
    groups = set()
    for defs in domain_defs:
        for item in defs.assets or []:
            specs = item.specs if isinstance(item, dg.AssetsDefinition) else [item]
            groups |= {getattr(spec, "group_name", None) or "default" for spec in specs}
    return sorted(groups)


def _partitioned_keys(domain_defs: list[dg.Definitions]) -> dict[dg.AssetKey, dg.PartitionsDefinition | None]:
    """Every asset key of the domains with its partitions (None: unpartitioned)."""
    found: dict[dg.AssetKey, dg.PartitionsDefinition | None] = {}
    for defs in domain_defs:
        for item in defs.assets or []:
            if isinstance(item, dg.AssetsDefinition):
                found.update({spec.key: spec.partitions_def for spec in item.specs})
            else:
                found[item.key] = item.partitions_def
    return found


def build_definitions() -> dg.Definitions:
    domain_defs = [domain.defs for domain in DOMAINS]
    # The report snapshots read the other domains' tables: built over their asset keys.
    domain_defs.append(reports.build_defs(_partitioned_keys(domain_defs)))
    merged = dg.Definitions.merge(
        *domain_defs,
        dg.Definitions(
            resources=build_resources(),
            executor=dg.in_process_executor,
            sensors=automation_sensors(domain_defs),
        ),
    )
    return merged.map_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, DEFAULT_FRESHNESS, overwrite_existing=False)
    )


defs = build_definitions()
