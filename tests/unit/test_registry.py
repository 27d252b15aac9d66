"""The migration registry: the shipped catalog loads, and mistakes name file, table and field."""

from pathlib import Path

import pytest
import yaml

from assets.migration.registry import CATALOG_DIR, LoadMode, RegistryError, load_registry, load_source

BASE = {
    "name": "src",
    "description": "d",
    "url_env": "SRC_URL",
    "local_url": "postgresql+psycopg://postgres@127.0.0.1/src",
    "tables": [
        {"name": "t1", "description": "d", "source_table": "t1", "load_mode": "overwrite"},
    ],
}


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "src.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _with_table(**fields) -> dict:
    return {**BASE, "tables": [{**BASE["tables"][0], **fields}]}


def test_shipped_catalog_loads():
    [source] = load_registry(CATALOG_DIR)
    modes = {t.name: t.load_mode for t in source.tables}
    assert set(modes.values()) == set(LoadMode)  # the sample source exercises every load mode
    assert any(t.kind == "mart" for t in source.tables)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"load_mode": "merge"},
            "table 't1': field load_mode: Input should be 'overwrite', 'append' or 'upsert'",
        ),
        (
            {"load_mode": "upsert"},
            "table 't1': field (table): Value error, load_mode upsert needs primary_key",
        ),
        ({"load_mode": "append"}, "needs watermark_column"),
        ({"partition_column": "d"}, "partition_column and partition_grain"),
        ({"partition_column": "d", "partition_grain": "day"}, "needs partition_start"),
        (
            {"pii": {"rrn": "shred"}},
            "table 't1': field pii.rrn: Input should be 'encrypt', 'hash' or 'purge'",
        ),
        ({"kind": "mart"}, "a mart table needs columns"),
        ({"retention_days": 0}, "field retention_days: Input should be greater than 0"),
        ({"fetchsize": 10}, "table 't1': field fetchsize: Extra inputs are not permitted"),
        ({"name": "Bad-Name"}, "table 'Bad-Name': field name: Value error, must be lower-case"),
    ],
)
def test_mistakes_name_file_table_and_field(tmp_path, fields, message):
    path = _write(tmp_path, _with_table(**fields))
    with pytest.raises(RegistryError) as info:
        load_source(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_views_must_read_known_tables(tmp_path):
    doc = {**BASE, "views": [{"name": "v", "description": "d", "tables": ["t1", "nope"], "sql": "SELECT 1"}]}
    with pytest.raises(RegistryError, match=r"view 'v' reads unknown tables \['nope'\]"):
        load_source(_write(tmp_path, doc))


def test_not_yaml_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tables: [unclosed")
    with pytest.raises(RegistryError, match=r"broken\.yaml: not valid YAML"):
        load_source(path)


def test_adding_a_table_is_a_yaml_edit(tmp_path):
    doc = _with_table()
    doc["tables"].append(
        {
            "name": "t2",
            "description": "d",
            "source_table": "s.t2",
            "load_mode": "append",
            "watermark_column": "id",
        }
    )
    [source] = load_registry(_write(tmp_path, doc).parent)
    assert [t.name for t in source.tables] == ["t1", "t2"]
