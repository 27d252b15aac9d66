"""The fleet telemetry domain (seed 004): ingest API, raw tier, Spark processing, hourly summary."""
