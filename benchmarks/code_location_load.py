"""How long loading the code location takes, in fresh interpreters.

Every run (and every `dagster definitions validate`, code-server start) imports
the code location again, so this time is added to each sensor-triggered run.

Prints, as medians over N fresh processes:
  * dagster alone: `import dagster` (the floor);
  * platform: import + build of platform/definitions.py (what Dagster does);
  * eager peer: `import dagster` plus the integrations the platform keeps lazy
    (dagster_aws, dagster_gcp, duckdb, pyarrow, sqlalchemy), i.e. the cost had
    they been imported at module level;
and wall time for whole processes (interpreter start included).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "platform" / "definitions.py"
RUNS = 5

CASES = {
    "dagster alone": "import dagster",
    "platform definitions": f"import runpy; runpy.run_path({str(ENTRY)!r})",
    "eager peer": "import dagster, dagster_aws.s3, dagster_gcp, duckdb, pyarrow.parquet, sqlalchemy, boto3",
}


def measure(code: str) -> tuple[float, float]:
    """(seconds inside the interpreter, seconds of the whole process)."""
    timed = f"import time; _t = time.perf_counter()\n{code}\nprint(time.perf_counter() - _t)"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", timed], cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return float(proc.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    measure(CASES["platform definitions"])  # warm the OS file cache once
    results = {}
    for name, code in CASES.items():
        samples = [measure(code) for _ in range(RUNS)]
        results[name] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
    print(f"code location load, median of {RUNS} fresh processes ({sys.executable})")
    print(f"{'case':<24}{'import+build s':>16}{'process wall s':>16}")
    for name, (inner, wall) in results.items():
        print(f"{name:<24}{inner:>16.2f}{wall:>16.2f}")
    platform, eager = results["platform definitions"][0], results["eager peer"][0]
    print(
        f"platform / eager peer: {platform / eager:.2f}x "
        f"(platform is {eager - platform:.2f} s faster per run)"
    )
    print(f"platform over dagster alone: +{platform - results['dagster alone'][0]:.2f} s")


if __name__ == "__main__":
    main()
