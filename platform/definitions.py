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
from resources.profiles import build_resources  # noqa: E402

DOMAINS = [lake_ops, migration, cdc]

# Applied to every asset that does not declare its own freshness policy.
DEFAULT_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=1), warn_window=timedelta(hours=12)
)


# Dagster's default automation sensor starts stopped; this one runs from the first start,
# so assets with an AutomationCondition update on their own.
AUTOMATION = dg.AutomationConditionSensorDefinition(
    "platform_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's AutomationCondition.",
)


def build_definitions() -> dg.Definitions:
    merged = dg.Definitions.merge(
        *(domain.defs for domain in DOMAINS),
        dg.Definitions(resources=build_resources(), executor=dg.in_process_executor, sensors=[AUTOMATION]),
    )
    return merged.map_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, DEFAULT_FRESHNESS, overwrite_existing=False)
    )


defs = build_definitions()
