#!/usr/bin/env bash
# Fresh-machine set-up shared by `make run`, `make test` and .ci/run:
# Python packages from the lock file, then the local servers.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv>=0.9,<1"
fi
uv sync --frozen --quiet
scripts/services.sh
