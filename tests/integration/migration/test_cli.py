"""`dp erase-customer`: a clear refusal for an unknown source, and an audited run on the local profile."""

from services.cli import main


def test_unknown_source_is_refused_by_name(capsys, monkeypatch):
    monkeypatch.setenv("PLATFORM_PII_KEY", "x" * 10)
    assert main(["erase-customer", "--source", "nope", "--id", "1", "--requested-by", "t"]) == 2
    assert "no source 'nope'" in capsys.readouterr().err


def test_erasure_with_nothing_to_remove_is_still_audited(capsys, monkeypatch):
    from resources.profiles import build_resources
    from resources.secrets import generate_key

    monkeypatch.setenv("PLATFORM_PII_KEY", generate_key())
    assert main(["erase-customer", "--source", "card_db", "--id", "424242", "--requested-by", "dpo"]) == 0
    assert "from 0 locations; audit recorded" in capsys.readouterr().out
    audit = build_resources()["warehouse"].query(
        "SELECT requested_by, rows_removed FROM migration_status.erasure_audit"
    )
    assert audit.to_pylist() == [{"requested_by": "dpo", "rows_removed": 0}]
