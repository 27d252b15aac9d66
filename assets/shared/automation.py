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


def daily_at(cron: str, lookback_days: int = 2) -> dg.AutomationCondition:
    """Once per cron tick, for the partitions of the last `lookback_days` days (or the whole
    asset when unpartitioned), so yesterday's partition is completed after midnight."""
    from datetime import timedelta

    ticked: dg.AutomationCondition = dg.AutomationCondition.cron_tick_passed(cron)
    return (
        dg.AutomationCondition.in_latest_time_window(timedelta(days=lookback_days))
        & ticked.since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"on {cron}")
