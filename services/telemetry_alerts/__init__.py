"""Fleet telemetry anomaly alerts within seconds: a streaming detector over durably committed
readings (detector.py), episodes alerted once (deterministic ids), sinks that dedupe on the id
(sinks.py: the local alert log, SNS), and the feed the ingest sink hands readings to (feed.py).

The Spark job (assets/telemetry/spark/process_hour.py) stays the lake's authority on anomaly
scores; these alerts are the early warning and use the same score formula and thresholds
against a cheaper, online baseline.
"""
