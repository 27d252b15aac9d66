#!/usr/bin/env bash
# Fresh-machine set-up shared by `make run`, `make test` and .ci/run:
# Debian packages the project needs (a Java runtime for Spark), Python packages from the lock
# file, then the local servers.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv>=0.9,<1"
fi
# Spark (the telemetry domain, local mode and the standalone cluster) needs Java 17 or later.
if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
  else
    echo "bootstrap: Spark needs a Java runtime: apt-get install openjdk-17-jre-headless" >&2
  fi
fi
uv sync --frozen --quiet
scripts/services.sh
