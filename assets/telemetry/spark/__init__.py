"""The telemetry domain's Spark job (`process_hour.py`), runnable with spark-submit and importable.

`process_hour.py` depends only on pyspark (and, optionally, dagster_pipes), so it can be shipped
to a cluster as a single file.
"""
