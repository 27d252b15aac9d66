"""The fleet telemetry ingest API (issue 10): FastAPI, a write-ahead log, Firehose-style raw files."""
