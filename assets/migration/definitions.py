"""The migration domain's Definitions: every registered source system's assets, checks and source resource."""

import dagster as dg

from assets.migration.factory import build_source_defs
from assets.migration.registry import load_registry

defs = dg.Definitions.merge(*(build_source_defs(source) for source in load_registry()))
