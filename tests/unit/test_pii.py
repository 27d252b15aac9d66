from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import date

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from assets.migration.pii import (
    KEY_ENV,
    PREFIX,
    PiiError,
    PiiKeyError,
    decrypt_array,
    encrypt_array,
    hash_array,
    protect,
)
from assets.migration.registry import PiiAction, load_registry
from resources import settings
from resources.secrets import ensure_local_pii_key, generate_key

VALUES = ["홍길동", None, "010-1234-5678", "", "kim@example.com", "홍길동", None]


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = generate_key()
    monkeypatch.setenv(KEY_ENV, value)
    return value


def subkey(key: str, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(base64.b64decode(key))


def test_generate_key_is_64_random_bytes():
    first, second = generate_key(), generate_key()
    assert len(base64.b64decode(first, validate=True)) == 64
    assert first != second


def test_round_trip_with_nulls_and_korean(key):
    encrypted = encrypt_array(pa.array(VALUES))
    assert encrypted.type == pa.string()
    assert encrypted.null_count == 2
    assert decrypt_array(encrypted).to_pylist() == VALUES
    assert decrypt_array(encrypted, key=key).to_pylist() == VALUES


def test_ciphertext_format_and_no_plaintext(key):
    encrypted = encrypt_array(pa.array(VALUES)).to_pylist()
    for plain, cipher in zip(VALUES, encrypted, strict=True):
        if plain is None:
            continue
        assert cipher.startswith(PREFIX)
        base64.urlsafe_b64decode(cipher[len(PREFIX) :])
        assert plain == "" or plain not in cipher
        assert "1234" not in cipher and "example" not in cipher


def test_encryption_uses_aes_siv_with_its_own_subkey(key):
    cipher = encrypt_array(pa.array(["홍길동"]))[0].as_py()
    raw = base64.urlsafe_b64decode(cipher[len(PREFIX) :])
    assert AESSIV(subkey(key, b"encrypt", 64)).decrypt(raw, None).decode() == "홍길동"


def test_deterministic_so_joins_still_work(key, monkeypatch):
    first = encrypt_array(pa.array(["a", "a", "b"])).to_pylist()
    assert first[0] == first[1] != first[2]
    assert encrypt_array(pa.array(["b", "a"])).to_pylist() == [first[2], first[0]]
    monkeypatch.setenv(KEY_ENV, generate_key())
    assert encrypt_array(pa.array(["a"])).to_pylist() != [first[0]]


def test_chunked_arrays_keep_their_chunks(key):
    chunked = pa.chunked_array([["a", None], ["b", "a"]])
    encrypted = encrypt_array(chunked)
    assert isinstance(encrypted, pa.ChunkedArray)
    assert [len(c) for c in encrypted.chunks] == [2, 2]
    assert encrypted[0] == encrypted[3]  # one dictionary across chunks: "a" is "a" in both
    assert decrypt_array(encrypted).to_pylist() == ["a", None, "b", "a"]
    empty = encrypt_array(pa.chunked_array([], type=pa.string()))
    assert (len(empty), empty.type) == (0, pa.string())


def test_non_strings_are_encrypted_from_their_string_form(key):
    ints = encrypt_array(pa.array([1, None, 1], pa.int64()))
    assert decrypt_array(ints).to_pylist() == ["1", None, "1"]
    assert ints[0].as_py() == encrypt_array(pa.array(["1"]))[0].as_py()
    days = decrypt_array(encrypt_array(pa.array([date(2024, 1, 2)], pa.date32())))
    assert days.to_pylist() == ["2024-01-02"]


def test_wrong_key_fails_with_pii_key_error(key, monkeypatch):
    encrypted = encrypt_array(pa.array(["홍길동"]))
    with pytest.raises(PiiKeyError, match=KEY_ENV):
        decrypt_array(encrypted, key=generate_key())
    monkeypatch.setenv(KEY_ENV, generate_key())
    with pytest.raises(PiiKeyError, match="not the key"):
        decrypt_array(encrypted)


def test_decrypting_plaintext_fails_without_quoting_it(key):
    with pytest.raises(PiiError, match="not enc:v1") as raised:
        decrypt_array(pa.array(["010-1234-5678"]))
    assert "1234" not in str(raised.value)


@pytest.mark.parametrize("fn", [encrypt_array, hash_array, decrypt_array])
def test_missing_key_names_the_variable(fn, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PiiKeyError, match=f"{KEY_ENV} is not set"):
        fn(pa.array(["x"]))


def test_missing_key_says_where_it_looked_and_suggests_no_new_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PiiKeyError) as raised:
        encrypt_array(pa.array(["x"]))
    message = str(raised.value)
    assert KEY_ENV in message and str(settings.pii_key_file()) in message
    assert "dp up" in message and "generate" not in message


def test_the_local_key_file_is_used_when_the_variable_is_unset(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = ensure_local_pii_key()  # as the local stack makes it, under the test's own var dir
    from_file = encrypt_array(pa.array(["홍길동"]))
    monkeypatch.setenv(KEY_ENV, key)
    assert encrypt_array(pa.array(["홍길동"])).equals(from_file)


def test_a_malformed_key_file_is_named(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = settings.pii_key_file()
    path.parent.mkdir(parents=True)
    path.write_text("short")
    with pytest.raises(PiiKeyError, match=r"pii\.key") as raised:
        encrypt_array(pa.array(["x"]))
    assert "short" not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"k" * 32).decode(), "64 bytes, it decodes to 32"),
        ("   ", "is not set"),
    ],
)
def test_malformed_key_is_named_but_not_shown(value, message, monkeypatch):
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(PiiKeyError, match=message) as raised:
        encrypt_array(pa.array(["x"]))
    assert KEY_ENV in str(raised.value)
    assert value.strip() == "" or value not in str(raised.value)


def test_hash_is_keyed_stable_and_not_the_encryption(key, monkeypatch):
    hashed = hash_array(pa.array(VALUES)).to_pylist()
    assert hashed == hash_array(pa.array(VALUES)).to_pylist()
    assert hashed[1] is None and hashed[0] == hashed[5] != hashed[2]
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashed if h is not None)
    expected = hmac.new(subkey(key, b"hash", 32), "홍길동".encode(), hashlib.sha256).hexdigest()
    assert hashed[0] == expected
    assert hashed[0] != hashlib.sha256("홍길동".encode()).hexdigest()
    assert hashed[0] not in encrypt_array(pa.array(["홍길동"]))[0].as_py()
    # one key, two subkeys: neither the master key nor the encryption subkey makes these hashes
    for other in (base64.b64decode(key), subkey(key, b"encrypt", 64)):
        assert hmac.new(other, "홍길동".encode(), hashlib.sha256).hexdigest() != hashed[0]
    monkeypatch.setenv(KEY_ENV, generate_key())
    assert hash_array(pa.array(["홍길동"]))[0].as_py() != hashed[0]


def test_protect_applies_the_registry_actions(key):
    (card_db,) = [s for s in load_registry() if s.name == "card_db"]
    pii = card_db.table("customers").pii
    table = pa.table(
        {
            "customer_id": pa.array([1, 2, 3], pa.int64()),
            "name": ["홍길동", "김철수", None],
            "rrn": ["900101-1234567", "850505-2345678", None],
            "phone": ["010-1111-2222", None, "010-1111-2222"],
            "email": ["a@b.com", "c@d.com", None],
            "address": ["서울시", "부산시", None],
            "grade": ["GOLD", "SILVER", "VIP"],
        }
    )
    out = protect(table, pii)
    assert out.column_names == ["customer_id", "name", "phone", "email", "grade"]
    assert out.column("customer_id").equals(table.column("customer_id"))
    assert out.column("grade").equals(table.column("grade"))
    assert decrypt_array(out.column("name")).to_pylist() == ["홍길동", "김철수", None]
    assert decrypt_array(out.column("phone")).to_pylist() == ["010-1111-2222", None, "010-1111-2222"]
    assert out.column("email").to_pylist() == hash_array(pa.array(["a@b.com", "c@d.com", None])).to_pylist()
    flat = str(out.to_pylist())
    for plain in ("홍길동", "010-1111", "a@b.com", "900101", "서울시"):
        assert plain not in flat


def test_purge_needs_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    table = pa.table({"id": [1], "rrn": ["900101-1234567"]})
    out = protect(table, {"rrn": PiiAction.PURGE})
    assert out.column_names == ["id"]
    assert protect(table, {}).equals(table)


def test_protect_names_an_unknown_column(key):
    table = pa.table({"id": [1], "phone": ["010"]})
    with pytest.raises(PiiError, match=r"\['phone_no'\]"):
        protect(table, {"phone": PiiAction.ENCRYPT, "phone_no": PiiAction.ENCRYPT})
