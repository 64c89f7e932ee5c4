from pathlib import Path

import pytest

from pullsmith.config import LOCAL_MODEL_NAME, load_settings
from pullsmith.errors import UserError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_defaults_use_the_bundled_model(tmp_path):
    settings = load_settings(cwd=tmp_path)
    assert settings.uses_local_model
    assert settings.model_name == LOCAL_MODEL_NAME
    assert settings.sandbox == "bwrap"


def test_precedence_flags_env_project_user(tmp_path, monkeypatch, isolated_home):
    write(isolated_home / "config" / "pullsmith" / "config.toml", 'max_turns = 5\nmodel = "u"\n')
    write(tmp_path / "pullsmith.toml", 'model = "project"\ntest_command = "make check"\n')
    settings = load_settings(cwd=tmp_path)
    assert (settings.max_turns, settings.model, settings.test_command) == (
        5,
        "project",
        "make check",
    )
    monkeypatch.setenv("PULLSMITH_MODEL", "env")
    assert load_settings(cwd=tmp_path).model == "env"
    assert load_settings({"model": "flag", "max_turns": None}, cwd=tmp_path).model == "flag"
    assert load_settings({"max_turns": None}, cwd=tmp_path).max_turns == 5


def test_api_settings_switch_off_the_local_model(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings(cwd=tmp_path)
    assert not settings.uses_local_model
    assert "sk-test" not in repr(settings)


def test_pullsmith_table_is_accepted(tmp_path):
    write(tmp_path / "pullsmith.toml", "[pullsmith]\nmax_turns = 7\n")
    assert load_settings(cwd=tmp_path).max_turns == 7


def test_unknown_key_is_a_clear_error(tmp_path):
    write(tmp_path / "pullsmith.toml", "max_turn = 7\n")
    with pytest.raises(UserError, match="unknown setting 'max_turn'"):
        load_settings(cwd=tmp_path)


def test_bad_toml_and_bad_type_are_clear_errors(tmp_path, monkeypatch):
    write(tmp_path / "pullsmith.toml", "max_turns = = 3\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        load_settings(cwd=tmp_path)
    write(tmp_path / "pullsmith.toml", 'max_turns = "many"\n')
    with pytest.raises(UserError, match="must be a whole number"):
        load_settings(cwd=tmp_path)
