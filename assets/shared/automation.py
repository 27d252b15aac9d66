"""Automation conditions the domains share.

Every condition here that can start a run carries `parents_materialized()`: the
automation sensor never launches a run whose parents have never been
materialized (or, for an observed source, never observed), so a view over
tables that do not exist yet waits instead of failing.
"""

from datetime import timedelta

import dagster as dg


def parents_materialized() -> dg.AutomationCondition:
    """True where every parent has at least one materialized partition (observed, for a source asset).

    `all_deps_match` maps the candidate partitions onto each parent and back: for
    an unpartitioned child of a partitioned parent, one materialized partition of
    the parent is enough; for identically partitioned assets it is per partition.
    True for an asset without parents.
    """
    return dg.AutomationCondition.all_deps_match(~dg.AutomationCondition.missing()).with_label(
        "all parents materialized"
    )


def after_parent_updates() -> dg.AutomationCondition:
    """Run (per partition) once any parent has new data, and not while a parent is still running.

    Unlike eager(), it does not wait for every partition of every parent to
    exist, and it reaches partitions outside the latest time window, so a
    backfill of the parent flows on. It does wait until every parent has been
    materialized at least once: a parent update stays pending until then.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & parents_materialized()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after parent updates")


def daily_at(cron: str, lookback_days: int = 2) -> dg.AutomationCondition:
    """Once per cron tick, for the partitions of the last `lookback_days` days (or the whole
    asset when unpartitioned), so yesterday's partition is completed after midnight."""
    ticked: dg.AutomationCondition = dg.AutomationCondition.cron_tick_passed(cron)
    return (
        dg.AutomationCondition.in_latest_time_window(timedelta(days=lookback_days))
        & ticked.since_last_handled()
        & parents_materialized()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"on {cron}")


def initial_load(within: timedelta | None = None) -> dg.AutomationCondition:
    """The first load of whatever was never materialized, without waiting for a cron tick.

    Unpartitioned: the asset until its first materialization. Partitioned: every
    missing partition older than the latest time window (with `within`, only
    those that recent, e.g. inside a retention period), plus the partitions that
    existed when the condition was first evaluated; so on a fresh instance every
    partition up to today loads (several partitions of one tick go to one
    backfill, split into runs by the asset's BackfillPolicy), while the partition
    that appears each midnight waits for the asset's cron like any other day.
    A partition whose load failed is not retried here (the cron or a person
    does that), so a broken source does not start a failing run every tick.
    """
    ac = dg.AutomationCondition
    first_partitions = (
        ac.initial_evaluation().since(ac.newly_updated()).with_label("present at first evaluation")
    )
    condition = (
        ac.missing()
        & (~ac.in_latest_time_window(timedelta(days=1)) | first_partitions)
        & ~ac.execution_failed()
        & parents_materialized()
        & ~ac.in_progress()
    )
    if within is not None:
        condition = ac.in_latest_time_window(within) & condition
    return condition.with_label("initial load")


def observe_every(cron: str) -> dg.AutomationCondition:
    """For an observable source asset: observe on the first evaluation and at every cron tick.

    Source assets are outside `AssetSelection.all()`, so the sensor evaluating
    this must target them explicitly.
    """
    ac = dg.AutomationCondition
    return ((ac.cron_tick_passed(cron) | ac.initial_evaluation()) & ~ac.in_progress()).with_label(
        f"observe at first and on {cron}"
    )
