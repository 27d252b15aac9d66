# The two commands of the README, and a few helpers.
.PHONY: run test lint bootstrap down screenshot bench

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap          ## the platform with its embedded defaults: UI, daemon, sensors, demo data
	uv run dp up

test: bootstrap         ## every test, on real local services
	uv run pytest

lint:
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy

down:
	uv run dp down

bench:                  ## benchmarks, with the peers they compare against
	uv sync --group bench
	uv run python benchmarks/code_location_load.py
	uv run python benchmarks/extract_postgres.py
	uv run python benchmarks/sensor_run_latency.py
	uv run python benchmarks/cdc_capture.py
	uv run python benchmarks/cdc_apply.py
	uv run python benchmarks/cdc_latency.py
	uv run python benchmarks/telemetry_spark.py
	uv run python benchmarks/telemetry_ingest.py
