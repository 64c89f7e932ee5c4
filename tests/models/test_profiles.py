"""The model profile table, and the `protocol` setting that overrides it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pullsmith.config import LOCAL_MODEL_NAME, load_settings
from pullsmith.errors import UserError
from pullsmith.models.profiles import (
    DEFAULT,
    EDIT_FORMS,
    TABLE,
    Profile,
    profile_for,
    resolve_protocol,
)

SMALL_FORMS = ("whole-file", "replace-function", "apply-patch")
TOOLS_FORMS = ("apply-patch", "search-replace", "whole-file")


def test_the_bundled_model_speaks_text_and_says_why():
    profile = profile_for(LOCAL_MODEL_NAME)
    assert profile.protocol == "text" and profile.edit_forms == SMALL_FORMS
    assert "does not emit native tool calls with its stock chat template (0 of 5 measured)" in (
        profile.note
    )
    assert profile_for("Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf") is profile


@pytest.mark.parametrize(
    "name",
    [
        "qwen2.5-coder-0.5b-instruct",
        "Qwen/Qwen2.5-Coder-3B-Instruct",
        "qwen2.5-coder:7b",
        "Qwen2.5-Coder-7B-Instruct",
        "llama3.2:1b",
        "meta-llama/Llama-3.2-3B-Instruct",
        "Meta-Llama-3.1-8B-Instruct",
        "llama3:8b",
        "phi-3-mini-4k-instruct",
        "phi4",
        "gemma-2-9b-it",
        "gemma3:27b",
        "deepseek-coder-1.3b-instruct",
        "deepseek-coder:6.7b",
        "qwen2-1.5b-instruct",
        "smollm2-1.7b-3b",
        "mistral-7b-instruct-v0.3",
        "qwen2.5-3b-instruct",
    ],
)
def test_small_open_models_speak_text(name):
    profile = profile_for(name)
    assert profile.protocol == "text" and profile.edit_forms == SMALL_FORMS, name


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1-mini",
        "GPT-5",
        "gpt-5-codex",
        "o3",
        "o3-mini",
        "o4-mini",
        "openai/o4-mini",
        "claude-sonnet-4-5",
        "anthropic/claude-3-5-sonnet",
        "qwen2.5-coder-32b-instruct",
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        "qwen2.5-coder:32b",
        "qwen3-coder-480b-a35b-instruct",
        "deepseek-v3",
        "deepseek-chat",
        "mistral-large-latest",
        "gemini-2.5-pro",
        "google/gemini-1.5-flash",
    ],
)
def test_large_tool_callers_speak_tools(name):
    profile = profile_for(name)
    assert profile.protocol == "tools" and profile.edit_forms == TOOLS_FORMS, name


@pytest.mark.parametrize(
    "name",
    [
        "scripted",
        "my-finetune",
        "llama-3.3-70b-instruct",  # sizes are matched whole: 70b is not 7b
        "deepseek-coder-33b-instruct",  # nor is 33b 3b
        "dolphin-mixtral",  # "phi" inside a word is not phi
        "",
    ],
)
def test_unknown_models_speak_text(name):
    assert profile_for(name) is DEFAULT
    assert DEFAULT.protocol == "text"
    assert DEFAULT.edit_forms == ("whole-file", "apply-patch", "replace-function")


def test_every_row_is_well_formed():
    for patterns, profile in TABLE:
        assert patterns and all(p == p.lower() for p in patterns)
        assert profile.note and set(profile.edit_forms) <= set(EDIT_FORMS)
    with pytest.raises(ValueError, match="protocol must be one of text, tools"):
        Profile("xml", ("whole-file",))
    with pytest.raises(ValueError, match="unknown edit forms"):
        Profile("text", ("sed",))


def test_the_setting_overrides_the_profile():
    assert resolve_protocol("auto", "gpt-4o") == "tools"
    assert resolve_protocol("auto", LOCAL_MODEL_NAME) == "text"
    assert resolve_protocol("text", "gpt-4o") == "text"
    assert resolve_protocol("tools", LOCAL_MODEL_NAME) == "tools"


def test_protocol_setting_sources_and_validation(tmp_path, monkeypatch):
    assert load_settings(cwd=tmp_path).protocol == "auto"
    (tmp_path / "pullsmith.toml").write_text('protocol = "text"\n')
    assert load_settings(cwd=tmp_path).protocol == "text"
    monkeypatch.setenv("PULLSMITH_PROTOCOL", "tools")
    assert load_settings(cwd=tmp_path).protocol == "tools"
    assert load_settings({"protocol": "auto"}, cwd=tmp_path).protocol == "auto"
    monkeypatch.setenv("PULLSMITH_PROTOCOL", "json")
    with pytest.raises(UserError) as info:
        load_settings(cwd=tmp_path)
    assert str(info.value) == (
        "setting 'protocol' in $PULLSMITH_PROTOCOL must be auto, text or tools, not 'json'; "
        "fix it there."
    )
    monkeypatch.delenv("PULLSMITH_PROTOCOL")
    (tmp_path / "pullsmith.toml").write_text('protocol = "xml"\n')
    with pytest.raises(UserError, match="pullsmith.toml must be auto, text or tools"):
        load_settings(cwd=tmp_path)


def test_exec_takes_a_protocol_option():
    from pullsmith.cli import main_group

    runner = CliRunner()
    result = runner.invoke(main_group, ["exec", "--help"])
    assert result.exit_code == 0 and "--protocol [auto|text|tools]" in result.output
    result = runner.invoke(main_group, ["exec", "--protocol", "xml", "fix it"])
    assert result.exit_code != 0 and "'xml' is not one of 'auto', 'text', 'tools'" in result.output
