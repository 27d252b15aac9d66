"""The generic YAML catalog loader: a validated model, or an error naming file, item and field."""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from assets.shared.catalog import CatalogError, load_catalog_dir, load_yaml_model


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    target: str
    columns: int = 1


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    mappings: list[Mapping]


def _write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_valid_file_is_its_model(tmp_path):
    doc = {"name": "cdc", "mappings": [{"name": "orders", "target": "cdc.orders", "columns": 3}]}
    catalog = load_yaml_model(_write(tmp_path / "cdc.yaml", doc), Catalog, item_lists=("mappings",))
    assert catalog.mappings[0].columns == 3


def test_errors_name_file_item_and_field_one_line_each(tmp_path):
    doc = {
        "name": "cdc",
        "mappings": [
            {"name": "orders", "target": "cdc.orders", "columns": "many"},
            {"target": "cdc.items", "colums": 2},
        ],
    }
    path = _write(tmp_path / "cdc.yaml", doc)
    with pytest.raises(CatalogError) as raised:
        load_yaml_model(path, Catalog, item_lists=("mappings",))
    lines = str(raised.value).splitlines()
    assert f"{path}: mapping 'orders': field columns: Input should be a valid integer" in lines[0]
    assert f"{path}: mapping '#1': field name: Field required" in lines
    assert f"{path}: mapping '#1': field colums: Extra inputs are not permitted" in lines


def test_top_level_fields_are_named_without_an_item(tmp_path):
    path = _write(tmp_path / "cdc.yaml", {"mappings": []})
    with pytest.raises(CatalogError, match=r"cdc\.yaml: field name: Field required"):
        load_yaml_model(path, Catalog)


@pytest.mark.parametrize(
    ("text", "message"),
    [("mappings: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a mapping of fields, found list")],
)
def test_files_that_are_not_a_mapping_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=rf"bad\.yaml: {message}"):
        load_yaml_model(path, Catalog)


def test_a_missing_file_is_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError, match=r"nope\.yaml: cannot be read"):
        load_yaml_model(tmp_path / "nope.yaml", Catalog)


def test_a_directory_loads_in_name_order_and_refuses_duplicate_names(tmp_path):
    _write(tmp_path / "b.yaml", {"name": "two", "mappings": []})
    _write(tmp_path / "a.yaml", {"name": "one", "mappings": []})
    (tmp_path / "notes.txt").write_text("not a catalog")
    assert [c.name for c in load_catalog_dir(tmp_path, Catalog)] == ["one", "two"]
    _write(tmp_path / "c.yaml", {"name": "one", "mappings": []})
    with pytest.raises(CatalogError, match=r"a\.yaml and c\.yaml both declare name 'one'"):
        load_catalog_dir(tmp_path, Catalog)
