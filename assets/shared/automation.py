"""Automation conditions the domains share."""

import dagster as dg


def after_parent_updates() -> dg.AutomationCondition:
    """Run (per partition) once any parent has new data, and not while a parent is still running.

    Unlike eager(), it does not wait for every partition of every parent to
    exist, and it reaches partitions outside the latest time window, so a
    backfill of the parent flows on.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after parent updates")
