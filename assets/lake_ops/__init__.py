"""Lake operations: what landed, and an inventory of every tier. Definitions in `definitions.py`."""
