"""Sample-data generators for the platform's sources (`dp gen-*` commands).

Modules import their heavy dependencies (numpy, pyarrow, database drivers) lazily
or only when used, so importing this package costs nothing.
"""
