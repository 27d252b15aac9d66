"""On-prem table migration: registry-driven loads from relational sources into the lake.

`definitions.py` builds the domain's Definitions from the registry; the other
modules are plain functions, cheap to import on their own.
"""

DOMAIN = "migration"  # the lake domain, asset key prefix and group of everything here
