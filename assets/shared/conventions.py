"""What every asset of a domain carries: its group, its owner team and a domain tag."""

from __future__ import annotations

from typing import Any


def domain_asset_args(domain: str) -> dict[str, Any]:
    """Keyword arguments for @asset / AssetSpec that place an asset in its domain."""
    return {"group_name": domain, "owners": [f"team:{domain}"], "tags": {"domain": domain}}


# Where the platform's own daily partitions begin (lake_ops). A fixed, recent date:
# the local stack's data starts then, and a partition before any data could never fill.
PARTITIONS_START = "2026-11-01"
