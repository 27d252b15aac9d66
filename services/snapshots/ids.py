"""Snapshot ids: one id per (report, canonical parameters, version of the data the report reads).

The same request against unchanged data always maps to the same id, so the engine renders it once
and answers every later request by reuse; a change of the report, of any parameter value or of any
upstream asset's version gives a new id, so changed data is rendered again.

Ids are used as a Dagster dynamic partition key, a DynamoDB key and part of an S3 key, hence the
narrow alphabet (letters, digits, "_" and "-"), e.g. ``fleet_anomalies_daily-3f9c0a7e5b1d2c4a6e8f``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Set
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

# Bumped if the canonical form or the hashing changes, so old and new ids can never collide.
ID_SCHEME = "v2"  # v2: the report's definition digest is part of the id
HASH_CHARS = 20  # 80 bits: collisions are out of reach for any number of snapshots we will hold
REPORT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SNAPSHOT_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}-[0-9a-f]{{{HASH_CHARS}}}")
INVALID_REQUEST_PREFIX = "invalid-"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc_iso(value: datetime) -> str:
    # A naive datetime is read as UTC, the platform's convention for timestamps.
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def _canonical(value: Any, where: str) -> str:
    """The canonical JSON text of value; where names the parameter for error messages."""
    if value is None or isinstance(value, bool):  # bool before int: True is an int
        return json.dumps(value)
    if isinstance(value, int):
        return str(int(value))  # int() drops an IntEnum's name, keeps the number
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"parameter {where}: {value!r} is not a finite number")
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"parameter {where}: {value!r} is not a finite number")
        # 1.50 and 1.5 are the same decimal value; "f" keeps 100 from becoming 1E+2.
        return format(value.normalize(), "f")
    if isinstance(value, str):
        return json.dumps(str(value))  # ASCII-escaped: one byte form for every string
    if isinstance(value, datetime):  # before date: a datetime is a date
        return json.dumps(_utc_iso(value))
    if isinstance(value, date):
        return json.dumps(value.isoformat())
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"parameter {where}: key {key!r} is not a string")
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_canonical(v, f'{where}.{k}')}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Set):
        # A set has no order: its members sorted by their canonical text.
        return "[" + ",".join(sorted(_canonical(v, f"{where}{{}}") for v in value)) + "]"
    raise ValueError(
        f"parameter {where}: cannot canonicalise a {type(value).__name__} value ({value!r}); "
        "use None, bool, int, float, Decimal, str, date, datetime, or lists/sets/mappings of them"
    )


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON of a report's typed parameters: keys sorted, no spaces, datetimes in UTC
    ISO-8601 (``...Z``), dates ISO, ints as ints, floats by repr, Decimals normalised.

    Raises ValueError naming the parameter whose value cannot be canonicalised.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"parameters must be a mapping of name to value, not {type(params).__name__}")
    for name in params:
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter name {name!r} is not a non-empty string")
    return "{" + ",".join(f"{json.dumps(k)}:{_canonical(params[k], k)}" for k in sorted(params)) + "}"


def canonical_versions(versions: Mapping[str, str]) -> str:
    """Canonical JSON of upstream asset versions (asset key string -> version string)."""
    if not isinstance(versions, Mapping):
        raise ValueError(f"data versions must be a mapping, not {type(versions).__name__}")
    for key, version in versions.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"data version key {key!r} is not a non-empty asset key string")
        if not isinstance(version, str) or not version:
            raise ValueError(f"data version of {key!r} is {version!r}, not a non-empty string")
    return json.dumps(dict(sorted(versions.items())), separators=(",", ":"))


def data_version_token(versions: Mapping[str, str]) -> str:
    """An order-independent token (hex digest) of the upstream assets' versions."""
    return _sha256(canonical_versions(versions))


def validate_report_id(report_id: str) -> str:
    if not isinstance(report_id, str) or not REPORT_ID_PATTERN.fullmatch(report_id):
        raise ValueError(
            f"report id {report_id!r} must be 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit (it becomes part of partition, DynamoDB and S3 keys)"
        )
    return report_id


def snapshot_id(
    report_id: str, params: Mapping[str, Any], versions: Mapping[str, str], definition: str = ""
) -> str:
    """The snapshot id of a report rendered with params over data at versions:
    ``<report_id>-<20 hex chars>``; parameter and version order do not matter. `definition` is the
    report definition's digest (catalog.Report.fingerprint): an edited report (its SQL, chart,
    parameters or formats) names new snapshots, so it is rendered again over unchanged data."""
    validate_report_id(report_id)
    # JSON of the parts: no separator inside one part can be confused with another part.
    material = json.dumps(
        [ID_SCHEME, report_id, definition, canonical_params(params), data_version_token(versions)],
        separators=(",", ":"),
    )
    return f"{report_id}-{_sha256(material)[:HASH_CHARS]}"


def is_snapshot_id(value: str) -> bool:
    return isinstance(value, str) and SNAPSHOT_ID_PATTERN.fullmatch(value) is not None


def request_id_for_invalid(body: str) -> str:
    """A deterministic request id for a message that cannot be parsed, so a redelivered malformed
    message lands on the same FAILED request item instead of making a new one."""
    if not isinstance(body, str):
        raise ValueError(f"a message body is text, not {type(body).__name__}")
    return f"{INVALID_REQUEST_PREFIX}{_sha256(body)[:32]}"
