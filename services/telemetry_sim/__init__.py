"""The fleet telemetry device simulator (seed 004): readings posted to the telemetry ingest API.

fleet.py   Fleet: N devices with daily temperature cycles, drift, noise, sensor faults, anomaly
           episodes, late and duplicated readings; the ground truth as JSONL (read_truth)
driver.py  run_telemetry_sim: open-loop batches at a rate, 429 Retry-After honoured, 5xx and lost
           connections retried with backoff; SimStats and a progress line
cli.py     `dp telemetry-sim`
"""
