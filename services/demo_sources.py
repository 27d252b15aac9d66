"""The sample source databases of the local stack, found from their catalog files as plain data.

The stack and `dp gen-card-db` need only where a source lives (its local URL and
the variable that overrides it), not the migration domain, so they read that
much of the catalog file with the generic loader.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from assets.shared.catalog import load_yaml_model
from resources import settings

CARD_DB_CATALOG = settings.PROJECT_ROOT / "platform" / "catalogs" / "migration" / "card_db.yaml"


class SourceLocation(BaseModel):
    """Where a catalogued source database is; the rest of its file is the domain's business."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    url_env: str  # the variable holding the URL outside this machine
    local_url: str  # the embedded default


def source_location(path: Path = CARD_DB_CATALOG) -> SourceLocation:
    return load_yaml_model(path, SourceLocation, item_lists=())


def source_url(location: SourceLocation) -> str:
    """The source's URL: its url_env variable if set, else its local default."""
    return settings.env(location.url_env) or location.local_url
