"""The sample source databases of the local stack, found from their catalog files as plain data.

The stack and `dp gen-card-db` need only where a source lives (its local URL and
the variable that overrides it), not the migration domain, so they read that
much of the catalog file with the generic loader.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from assets.shared.catalog import load_yaml_model
from resources import settings

CARD_DB_CATALOG = settings.PROJECT_ROOT / "platform" / "catalogs" / "migration" / "card_db.yaml"


class TableDates(BaseModel):
    """A table's partition start and retention, what the sample data's dates must fit."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    partition_start: date | None = None
    retention_days: int | None = None


class SourceLocation(BaseModel):
    """Where a catalogued source database is; the rest of its file is the domain's business."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    url_env: str  # the variable holding the URL outside this machine
    local_url: str  # the embedded default
    tables: tuple[TableDates, ...] = ()


def source_location(path: Path = CARD_DB_CATALOG) -> SourceLocation:
    return load_yaml_model(path, SourceLocation, item_lists=())


def source_url(location: SourceLocation) -> str:
    """The source's URL: its url_env variable if set, else its local default."""
    return settings.env(location.url_env) or location.local_url


def demo_window(location: SourceLocation, today: date | None = None) -> tuple[date, date]:
    """First and last day of the sample transactions: from the partitioned tables' partition_start
    (or the oldest day their retention keeps, if later) to yesterday, so every partition can fill
    and no data lies before the first partition or where retention would delete it.

    Before the start date has passed, the window is that one day.
    """
    today = today or date.today()
    starts = [t.partition_start for t in location.tables if t.partition_start]
    if not starts:
        raise ValueError(f"{location.name} has no partitioned table to date its sample data by")
    first = min(starts)
    for table in location.tables:
        if table.partition_start and table.retention_days:
            first = max(first, today - timedelta(days=table.retention_days))
    last = max(today - timedelta(days=1), first)
    return first, last
