"""PII protection of cleansed tables (pure, over pyarrow): encrypt, hash or purge columns.

The only key (base64 of 64 random bytes) is found by resources.settings.pii_key() each
time it is needed: PLATFORM_PII_KEY, or the local stack's key file. It is never logged or
put in a message. Two subkeys are derived from it with HKDF, so encryption and hashing
never share key material:

- encrypt: AES-SIV without a nonce: deterministic, so equal values give equal ciphertexts
  and joins on encrypted columns still work; reversible with the key ('enc:v1:<base64>').
- hash: HMAC-SHA256, hex: one-way, but still stable for joins and counting.

Both run over the distinct values of a column only (map_distinct). Non-string values are
protected from their canonical string form (Arrow's cast to string); nulls stay null.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Any

from assets.migration.cleansing import map_distinct
from assets.migration.registry import PiiAction
from resources import settings
from resources.secrets import PII_KEY_BYTES as KEY_BYTES
from resources.settings import PII_KEY_ENV as KEY_ENV

if TYPE_CHECKING:
    import pyarrow as pa

PREFIX = "enc:v1:"


class PiiError(ValueError):
    """PII protection that cannot be applied as declared."""


class PiiKeyError(PiiError):
    """PLATFORM_PII_KEY missing or malformed, or not the key the values were encrypted with."""


def encrypt_array(arr: Any) -> Any:
    """Deterministic AES-SIV encryption of an array (or chunked array) to 'enc:v1:...' strings."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    siv = AESSIV(_subkey(_master_key(None), b"encrypt", KEY_BYTES))

    def encrypt(distinct: pa.Array) -> pa.Array:
        return _strings(
            PREFIX + base64.urlsafe_b64encode(siv.encrypt(v.encode(), None)).decode("ascii")
            for v in _as_text(distinct).to_pylist()
        )

    return map_distinct(arr, encrypt)


def decrypt_array(arr: Any, key: str | None = None) -> Any:
    """Reverse encrypt_array; `key` (base64, like the variable) defaults to settings.pii_key()."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    siv = AESSIV(_subkey(_master_key(key), b"encrypt", KEY_BYTES))

    def decrypt_one(value: str) -> str:
        # Messages never quote the value: a column that was not encrypted holds plaintext PII.
        if not value.startswith(PREFIX):
            raise PiiError(f"a value is not {PREFIX} ciphertext; was this column encrypted?")
        try:
            ciphertext = base64.urlsafe_b64decode(value[len(PREFIX) :])
        except (binascii.Error, ValueError):
            raise PiiError(f"a value is not valid {PREFIX} ciphertext (bad base64)") from None
        try:
            return siv.decrypt(ciphertext, None).decode()
        except InvalidTag:
            raise PiiKeyError(
                f"cannot decrypt: not the key these values were encrypted with ({KEY_ENV}), "
                "or the ciphertext was altered"
            ) from None

    return map_distinct(arr, lambda distinct: _strings(decrypt_one(v) for v in distinct.to_pylist()))


def hash_array(arr: Any) -> Any:
    """Keyed one-way HMAC-SHA256 of an array's values, as hex strings."""
    hash_key = _subkey(_master_key(None), b"hash", 32)

    def digest(distinct: pa.Array) -> pa.Array:
        return _strings(
            hmac.digest(hash_key, v.encode(), "sha256").hex() for v in _as_text(distinct).to_pylist()
        )

    return map_distinct(arr, digest)


def protect(table: pa.Table, pii: dict[str, PiiAction]) -> pa.Table:
    """Apply a table's PII actions; purged columns are dropped, the others keep their place."""
    missing = sorted(set(pii) - set(table.column_names))
    if missing:
        raise PiiError(f"PII columns {missing} are declared but not in the table")
    actions = {PiiAction.ENCRYPT: encrypt_array, PiiAction.HASH: hash_array}
    for name, action in pii.items():
        index = table.schema.get_field_index(name)
        if action == PiiAction.PURGE:
            table = table.remove_column(index)
        else:
            column = actions[PiiAction(action)](table.column(index))
            table = table.set_column(index, table.field(index).with_type(column.type), column)
    return table


def _master_key(key: str | None) -> bytes:
    # Found when used, not at import: a code location loads without the key, and a rotated
    # key takes effect on the next run. Messages name where the key came from, never its value.
    if key is not None:
        raw, origin = key, "the given PII key"
    else:
        found = settings.pii_key()
        if found is None:
            raise PiiKeyError(_missing_key_message())
        raw, origin = found.value, found.origin
    if not raw.strip():
        raise PiiKeyError(f"{origin} is empty")
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PiiKeyError(f"{origin} is not valid base64") from None
    if len(decoded) != KEY_BYTES:
        raise PiiKeyError(f"{origin} must be base64 of {KEY_BYTES} bytes, it decodes to {len(decoded)}")
    return decoded


def _missing_key_message() -> str:
    # No advice to make a new key: it would not decrypt what is already encrypted.
    if settings.profile_name() == "aws":
        return f"no PII key: {KEY_ENV} is not set (the aws profile reads the key only from the environment)"
    return (
        f"no PII key: {KEY_ENV} is not set and {settings.pii_key_file()} does not exist "
        "(the local stack creates that file on the first `dp up`)"
    )


def _subkey(master: bytes, info: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def _as_text(distinct: pa.Array) -> pa.Array:
    import pyarrow as pa

    return distinct if pa.types.is_string(distinct.type) else distinct.cast(pa.string())


def _strings(values: Any) -> pa.Array:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())
