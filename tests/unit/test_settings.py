"""Settings: every variable read when used, with its local default; the PII key found on its own."""

import os
import stat

from resources import settings
from resources.secrets import ensure_local_pii_key, generate_key


def test_redis_url_and_demo_sources_have_local_defaults(monkeypatch):
    monkeypatch.delenv("PLATFORM_REDIS_URL", raising=False)
    monkeypatch.delenv("PLATFORM_DEMO_SOURCES", raising=False)
    assert settings.redis_url() == settings.DEFAULT_REDIS_URL
    assert settings.demo_sources_enabled()
    monkeypatch.setenv("PLATFORM_REDIS_URL", "rediss://cache:6379/0")
    monkeypatch.setenv("PLATFORM_DEMO_SOURCES", "0")
    assert settings.redis_url() == "rediss://cache:6379/0"
    assert not settings.demo_sources_enabled()


def test_env_treats_blank_as_unset(monkeypatch):
    monkeypatch.setenv("ONPREM_TEST_URL", "  ")
    assert settings.env("ONPREM_TEST_URL") is None
    monkeypatch.setenv("ONPREM_TEST_URL", "oracle+oracledb://u:p@h/db")
    assert settings.env("ONPREM_TEST_URL") == "oracle+oracledb://u:p@h/db"
    monkeypatch.delenv("ONPREM_TEST_URL")
    assert settings.env("ONPREM_TEST_URL") is None


def test_pii_key_prefers_the_variable_then_the_local_file(monkeypatch):
    monkeypatch.delenv(settings.PII_KEY_ENV, raising=False)
    assert settings.pii_key() is None  # the test's var dir has no key file
    made = ensure_local_pii_key()
    found = settings.pii_key()
    assert found is not None and (found.value, found.origin) == (made, str(settings.pii_key_file()))
    assert made not in repr(found)  # a logged Secret shows where it came from, not what it is
    other = generate_key()
    monkeypatch.setenv(settings.PII_KEY_ENV, other)
    assert settings.pii_key() == settings.Secret(other, settings.PII_KEY_ENV)


def test_the_aws_profile_never_reads_the_key_file(monkeypatch):
    monkeypatch.delenv(settings.PII_KEY_ENV, raising=False)
    ensure_local_pii_key()
    monkeypatch.setenv("PLATFORM_PROFILE", "aws")
    assert settings.pii_key() is None


def test_the_local_key_is_made_once_and_private():
    first = ensure_local_pii_key()
    path = settings.pii_key_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_local_pii_key() == first  # never replaced: encrypted data needs the same key
    assert [p.name for p in path.parent.iterdir()] == ["pii.key"]  # no temporary file left
