"""The code location: what it holds, that Dagster validates it, and what it imports."""

import ast
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "platform" / "definitions.py"
# Each run re-imports the code location, so these must load only when used.
HEAVY_MODULES = [
    "google.cloud.bigquery",
    "dagster_gcp",
    "dagster_aws",
    "pyspark",
    "moto",
    "boto3",
    "duckdb",
    "sqlalchemy",
    "redis",
    "pyarrow",
]


def _defs() -> dg.Definitions:
    return runpy.run_path(str(ENTRY))["defs"]


def test_every_asset_has_group_description_and_owner_domain():
    repo = _defs().get_repository_def()
    specs = list(repo.asset_graph.asset_nodes)
    assert len(specs) >= 2
    for node in specs:
        name = node.key.to_user_string()
        assert node.group_name and node.group_name != "default", name
        assert node.description, name
        domain = node.tags.get("domain")
        assert domain == node.group_name, name
        assert f"team:{domain}" in node.owners, name


def test_global_freshness_policy_applies_where_none_is_declared():
    repo = _defs().get_repository_def()
    nodes = {n.key.to_user_string(): n for n in repo.asset_graph.asset_nodes}
    assert nodes["lake_ops/landing_arrivals"].freshness_policy is not None
    # lake_inventory declares its own, tighter policy, which the default must not overwrite.
    inventory = nodes["lake_ops/lake_inventory"].freshness_policy
    assert inventory is not None and inventory != nodes["lake_ops/landing_arrivals"].freshness_policy


def test_sensors_and_resources_are_wired():
    defs = _defs()
    repo = defs.get_repository_def()
    sensors = {s.name: s for s in repo.sensor_defs}
    automation = {"lake_ops_automation", "migration_automation", "cdc_automation"}
    assert {"lake_ops_landing_listing", "lake_ops_landing_events", *automation} <= set(sensors)
    assert all(sensors[name].default_status == dg.DefaultSensorStatus.RUNNING for name in automation)
    assert {"lake", "warehouse", "aws", "cache"} <= set(defs.resources or {})


@pytest.mark.parametrize("profile", ["local", "local-s3", "aws"])
def test_dagster_definitions_validate(profile):
    env = {**os.environ, "PLATFORM_PROFILE": profile}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_unknown_profile_is_named():
    from resources.profiles import build_resources

    with pytest.raises(ValueError, match="'gcp' is not a profile"):
        build_resources("gcp")


def test_loading_the_code_location_keeps_heavy_imports_out():
    code = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]);"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ENTRY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# Only the code location and the command line wire the migration domain in; what other
# domains share lives in assets/shared and resources, so they never import a domain.
MIGRATION_IMPORTERS = {"platform/definitions.py", "services/cli.py", "services/migration_cli.py"}
NOT_SCANNED = {"tests", "var", "node_modules", "benchmarks"}  # scripts, not platform code


def _imports_migration(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "assets.migration" or n.startswith("assets.migration.") for n in names):
            lines.append(node.lineno)
    return lines


def test_only_the_code_location_and_the_cli_import_the_migration_domain():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        top = rel.parts[0]
        if len(rel.parts) > 1 and (top.startswith(".") or top in NOT_SCANNED):
            continue
        if rel.parts[:2] == ("assets", "migration") or rel.as_posix() in MIGRATION_IMPORTERS:
            continue
        lines = _imports_migration(ast.parse(path.read_text(), filename=str(path)))
        offenders += [f"{rel.as_posix()}:{line}" for line in lines]
    assert offenders == [], "import assets.migration outside the domain: " + ", ".join(offenders)
