"""Speculative decoding settings reach the llama.cpp server's params; bad ones are one sentence.

Nothing here starts a server: `build_params` only fills an `xllamacpp.CommonParams`, the child's
`main` meets a fake `xllamacpp.Server`, and `LocalServer` meets a fake `Popen`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pullsmith.config import Settings, Speculation, load_settings
from pullsmith.errors import UserError
from pullsmith.models import local, open_model
from pullsmith.models.local import LocalServer, serve_shared

needs_xllamacpp = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed"
)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("PULLSMITH_LOCAL_SERVER_URL", raising=False)
    monkeypatch.delenv("PULLSMITH_SPECULATIVE", raising=False)


def write_config(tmp_path: Path, text: str) -> None:
    (tmp_path / "pullsmith.toml").write_text(text)


# --------------------------------------------------------------------------------------------
# settings


def test_speculation_is_ngram_by_default(tmp_path):
    # benchmarks/results/speculative.md: 1.63x on whole-file rewrites, the same text
    speculation = load_settings(cwd=tmp_path).speculation
    assert speculation == Speculation(mode="ngram") and speculation.enabled
    assert not Speculation().enabled


def test_speculation_comes_from_the_config_file_and_the_environment(tmp_path, monkeypatch):
    write_config(
        tmp_path,
        'speculative = "ngram"\nspeculative_ngram_size = 6\nspeculative_draft_max = 24\n',
    )
    settings = load_settings(cwd=tmp_path)
    assert settings.speculation == Speculation(mode="ngram", ngram_size=6, draft_max=24)
    monkeypatch.setenv("PULLSMITH_SPECULATIVE", "OFF")
    assert load_settings(cwd=tmp_path).speculation.mode == "off"


def test_a_draft_model_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_config(
        tmp_path,
        'speculative = "draft"\nspeculative_model = "~/draft.gguf"\n'
        "speculative_draft_max = 8\nspeculative_draft_min = 2\nspeculative_p_min = 0.5\n",
    )
    speculation = load_settings(cwd=tmp_path).speculation
    assert speculation == Speculation(
        mode="draft", model=tmp_path / "draft.gguf", draft_max=8, draft_min=2, p_min=0.5
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('speculative = "lookup"', "must be off, ngram or draft, not 'lookup'"),
        ("speculative = true", "must be off, ngram or draft, not True"),
        ("speculative_ngram_size = 0", "'speculative_ngram_size' in .* from 1 to 1024, not 0"),
        ("speculative_draft_max = 5000", "'speculative_draft_max' in .* from 1 to 1024"),
        ('speculative_draft_max = "many"', "must be a whole number from 1 to 1024, not 'many'"),
        ("speculative_draft_max = 2.5", "must be a whole number"),
        ("speculative_draft_min = true", "must be a whole number from 0 to 1024, not True"),
        ("speculative_p_min = 1.5", "'speculative_p_min' in .* a number from 0 to 1, not 1.5"),
        ('speculative = "draft"', "no draft model is set; set speculative_model"),
        (
            'speculative = "draft"\nspeculative_model = "d.gguf"\n'
            "speculative_draft_min = 9\nspeculative_draft_max = 4",
            r"'speculative_draft_min' .* \(9\) is above speculative_draft_max \(4\)",
        ),
    ],
)
def test_bad_speculation_settings_are_one_sentence(tmp_path, text, message):
    write_config(tmp_path, text + "\n")
    with pytest.raises(UserError, match=message) as caught:
        load_settings(cwd=tmp_path)
    assert "\n" not in str(caught.value)


def test_a_bad_mode_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("PULLSMITH_SPECULATIVE", "eagle")
    with pytest.raises(UserError, match=r"'speculative' in \$PULLSMITH_SPECULATIVE"):
        load_settings(cwd=tmp_path)


def test_settings_made_in_code_are_checked_before_a_server_starts(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="no draft model is set"):
        LocalServer(model, speculation=Settings(speculative="draft").speculation)
    with pytest.raises(UserError, match="from 1 to 1024, not 0"):
        LocalServer(model, speculation=Speculation(mode="ngram", ngram_size=0))


def test_a_missing_draft_model_stops_the_start_before_anything_runs(tmp_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")

    def no_popen(*args, **kwargs):
        raise AssertionError("nothing may start")

    monkeypatch.setattr(local.subprocess, "Popen", no_popen)
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: object())
    server = LocalServer(
        model, speculation=Speculation(mode="draft", model=tmp_path / "missing.gguf")
    )
    with pytest.raises(UserError, match=r"draft model file .*missing.gguf .* does not exist"):
        server.start()


# --------------------------------------------------------------------------------------------
# the settings reach the server


class Spawned(Exception):
    pass


def spawned_command(monkeypatch, server: LocalServer) -> list[str]:
    commands: list[list[str]] = []

    def fake_popen(cmd, **kwargs):
        commands.append(cmd)
        raise Spawned

    monkeypatch.setattr(local.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(Spawned):
        server.start()
    return commands[0]


def test_the_child_command_carries_the_speculation(tmp_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    draft = tmp_path / "draft.gguf"
    draft.write_bytes(b"GGUF")
    off = spawned_command(monkeypatch, LocalServer(model, log_path=tmp_path / "log"))
    assert not any(arg.startswith("--spec") for arg in off)
    speculation = Speculation(mode="draft", model=draft, draft_max=8, draft_min=1, p_min=0.25)
    cmd = spawned_command(
        monkeypatch, LocalServer(model, log_path=tmp_path / "log", speculation=speculation)
    )
    tail = cmd[cmd.index("--speculative") :]
    assert tail[:2] == ["--speculative", "draft"]
    pairs = dict(zip(tail[::2], tail[1::2], strict=False))
    assert pairs["--spec-draft-max"] == "8" and pairs["--spec-draft-min"] == "1"
    assert pairs["--spec-p-min"] == "0.25" and pairs["--spec-model"] == str(draft)
    assert "--spec-ngram-size" not in pairs


def test_open_model_and_serve_shared_start_the_server_with_the_settings_speculation(
    tmp_path, monkeypatch
):
    asked: list[dict[str, object]] = []

    class FakeServer:
        base_url = "http://127.0.0.1:4321/v1"

        def stop(self) -> None:
            pass

    def fake_start(path, **kwargs):
        asked.append(kwargs)
        return FakeServer()

    monkeypatch.setattr(local, "ensure_model", lambda progress=True: tmp_path / "model.gguf")
    monkeypatch.setattr(local, "start_local_server", fake_start)
    monkeypatch.setattr(local, "find_running_server", lambda: None)
    settings = Settings(data_dir=tmp_path / "data", speculative="ngram", speculative_ngram_size=8)
    open_model(settings, progress=False).close()
    with serve_shared(settings, slots=2, progress=False):
        pass
    expected = Speculation(mode="ngram", ngram_size=8)
    assert [kwargs["speculation"] for kwargs in asked] == [expected, expected]


@needs_xllamacpp
def test_off_leaves_llama_cpp_without_speculation():
    import xllamacpp as xlc

    from pullsmith.models.llama_server import build_params

    none = xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_NONE
    assert build_params("model.gguf", 1234).speculative.types == [none]
    assert build_params("model.gguf", 1234, speculation=Speculation()).speculative.types == [none]


@needs_xllamacpp
def test_ngram_sets_ngram_simple_and_its_sizes():
    import xllamacpp as xlc

    from pullsmith.models.llama_server import build_params

    params = build_params(
        "model.gguf", 1234, speculation=Speculation(mode="ngram", ngram_size=6, draft_max=24)
    )
    spec = params.speculative
    assert spec.types == [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    assert (spec.ngram_simple.size_n, spec.ngram_simple.size_m) == (6, 24)
    assert spec.draft.mparams.path == ""
    defaults = build_params("m.gguf", 1, speculation=Speculation(mode="ngram")).speculative
    fresh = xlc.CommonParams().speculative.ngram_simple
    assert (defaults.ngram_simple.size_n, defaults.ngram_simple.size_m) == (
        fresh.size_n,
        fresh.size_m,
    )


@needs_xllamacpp
def test_draft_sets_draft_simple_with_its_model_and_limits(tmp_path):
    import xllamacpp as xlc

    from pullsmith.models.llama_server import build_params

    speculation = Speculation(
        mode="draft", model=tmp_path / "d.gguf", draft_max=8, draft_min=2, p_min=0.5
    )
    spec = build_params("model.gguf", 1234, threads=2, speculation=speculation).speculative
    assert spec.types == [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
    assert spec.draft.mparams.path == str(tmp_path / "d.gguf")
    assert (spec.draft.n_max, spec.draft.n_min, spec.draft.p_min) == (8, 2, 0.5)


@needs_xllamacpp
def test_the_child_turns_its_flags_into_the_server_params(monkeypatch):
    import xllamacpp as xlc

    from pullsmith.models import llama_server

    seen: list[object] = []

    def fake_server(params):
        seen.append(params)
        raise RuntimeError("Failed to init server (fake)")

    monkeypatch.setattr(xlc, "Server", fake_server)
    argv = [
        "--model",
        "m.gguf",
        "--port",
        "1",
        *llama_server.speculation_argv(Speculation(mode="ngram", ngram_size=5, draft_max=20)),
    ]
    assert llama_server.main(argv) == 1
    spec = seen[0].speculative  # type: ignore[attr-defined]
    assert spec.types == [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
    assert (spec.ngram_simple.size_n, spec.ngram_simple.size_m) == (5, 20)
