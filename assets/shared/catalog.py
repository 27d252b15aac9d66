"""YAML catalogs validated by pydantic models, with errors that name file, item and field.

A catalog file is one mapping (a source system, a CDC table mapping, a report
definition); its lists of named items (`tables`, `views`, ...) are where most
mistakes are, so an error names the item by its `name`:

    platform/catalogs/migration/card_db.yaml: table 'customers': field load_mode: Input should be ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class CatalogError(ValueError):
    """A catalog file that does not load or validate; the message names file, item and field."""


def _describe(path: Path, raw: dict[str, Any], error: ValidationError, item_lists: Sequence[str]) -> str:
    """One line per validation error: '{path}: {item} {name!r}: field {field}: {message}'."""
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        where, whole = "", "(file)"
        if len(loc) >= 2 and loc[0] in item_lists and isinstance(loc[1], int):
            items = raw.get(str(loc[0])) or []
            item = items[loc[1]] if loc[1] < len(items) and isinstance(items[loc[1]], dict) else {}
            kind = str(loc[0]).removesuffix("s")  # 'tables' -> 'table'
            # CDC mapping tables are named by their source table when they have no name
            label = item.get("name") or item.get("table") or f"#{loc[1]}"
            where = f"{kind} {label!r}: "
            whole = f"({kind})"  # a validator of the whole item
            loc = loc[2:]
        field = ".".join(str(p) for p in loc) or whole
        lines.append(f"{path}: {where}field {field}: {err['msg']}")
    return "\n".join(lines)


def load_yaml_model(path: Path, model_cls: type[M], item_lists: Sequence[str] = ("tables", "views")) -> M:
    """The file's YAML mapping validated as model_cls; CatalogError names what is wrong."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: expected a mapping of fields, found {type(raw).__name__}")
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(_describe(path, raw, exc, item_lists)) from None


def load_catalog_dir(
    directory: Path,
    model_cls: type[M],
    name_attr: str = "name",
    item_lists: Sequence[str] = ("tables", "views"),
) -> list[M]:
    """Every *.yaml file of a directory, in name order; two files declaring one name are refused."""
    paths = sorted(Path(directory).glob("*.yaml"))
    models = [load_yaml_model(p, model_cls, item_lists) for p in paths]
    seen: dict[str, Path] = {}
    for path, model in zip(paths, models, strict=True):
        name = str(getattr(model, name_attr))
        if name in seen:
            raise CatalogError(
                f"{directory}: {seen[name].name} and {path.name} both declare {name_attr} {name!r}"
            )
        seen[name] = path
    return models
