"""One bundled-model server for a pool of workers: `local_server_url` and `serve_shared`.

Nothing here loads the real model: the server start is replaced by a fake that records what
it was asked, and a long-lived server is a /health endpoint with a state file.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pullsmith.config import LOCAL_MODEL_NAME, Settings, Speculation, load_settings
from pullsmith.errors import UserError
from pullsmith.models import LLAMA_CPP_EXTRA, ManagedLocalModel, OpenAIModel, local, open_model
from pullsmith.models.local import LocalServer, SharedServer, serve_shared, state_file


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("PULLSMITH_LOCAL_SERVER_URL", raising=False)


class FakeServer:
    """What start_local_server returns, without a process behind it."""

    def __init__(self, **asked) -> None:
        self.asked = asked
        self.base_url = "http://127.0.0.1:4321/v1"
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture
def starts(monkeypatch, tmp_path):
    """Every server start (and model assembly) recorded instead of done."""
    started: list[FakeServer] = []
    assembled: list[bool] = []

    def fake_ensure_model(progress: bool = True) -> Path:
        assembled.append(progress)
        return tmp_path / "model.gguf"

    def fake_start(path, **kwargs):
        server = FakeServer(path=path, **kwargs)
        started.append(server)
        return server

    monkeypatch.setattr(local, "ensure_model", fake_ensure_model)
    monkeypatch.setattr(local, "start_local_server", fake_start)
    return started, assembled


@pytest.fixture
def long_lived():
    """A healthy long-lived server: a /health endpoint and its state file."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "port": port, "parallel": 2}))
    yield f"http://127.0.0.1:{port}/v1"
    httpd.shutdown()
    httpd.server_close()


def local_settings(tmp_path: Path, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", n_ctx=4096, threads=3, **extra)


# --------------------------------------------------------------------------------------------
# the local_server_url setting


def test_local_server_url_comes_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    assert load_settings(cwd=tmp_path).local_server_url is None
    (tmp_path / "pullsmith.toml").write_text('local_server_url = "http://127.0.0.1:9/v1"\n')
    assert load_settings(cwd=tmp_path).local_server_url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("PULLSMITH_LOCAL_SERVER_URL", "http://127.0.0.1:8/v1")
    settings = load_settings(cwd=tmp_path)
    assert settings.local_server_url == "http://127.0.0.1:8/v1"
    # Still the bundled model: its context limit applies, its name is the bundled one.
    assert settings.uses_local_model is True
    assert settings.model_name == LOCAL_MODEL_NAME


def test_open_model_uses_the_given_server_and_never_starts_or_stops_one(
    tmp_path, starts, monkeypatch
):
    def no_lookup():
        raise AssertionError("a given server needs no lookup")

    monkeypatch.setattr(local, "find_running_server", no_lookup)
    url = "http://127.0.0.1:4999/v1"
    model = open_model(local_settings(tmp_path, local_server_url=url, seed=7))
    assert type(model) is OpenAIModel and not isinstance(model, ManagedLocalModel)
    assert model.name == LOCAL_MODEL_NAME
    assert model.base_url == url
    assert model.extra_body == LLAMA_CPP_EXTRA
    assert model.seed == 7
    assert model.stream is True  # a long reply is not cut at the client's timeout
    model.close()
    assert starts == ([], [])


def test_an_api_setting_wins_over_local_server_url(tmp_path, starts):
    settings = local_settings(
        tmp_path, local_server_url="http://127.0.0.1:4999/v1", base_url="http://127.0.0.1:5/v1"
    )
    model = open_model(replace(settings, api_key="sk-x", model="gpt-4.1-mini"))
    assert model.base_url == "http://127.0.0.1:5/v1" and model.name == "gpt-4.1-mini"
    model.close()


# --------------------------------------------------------------------------------------------
# serve_shared


def test_starts_one_server_with_a_slot_per_worker(tmp_path, starts):
    started, assembled = starts
    log = tmp_path / "server.log"
    settings = local_settings(tmp_path, port=8765)
    shared = serve_shared(settings, slots=4, log_path=log, progress=False)
    assert len(started) == 1 and assembled == [False]
    assert started[0].asked == {
        "path": tmp_path / "model.gguf",
        "port": 8765,
        "n_ctx": 4096,  # per slot: the server holds 4096 * 4
        "threads": 3,
        "parallel": 4,
        "log_path": log,
        "speculation": Speculation(mode="ngram"),  # the settings' default
    }
    assert shared.started and shared.base_url == "http://127.0.0.1:4321/v1"
    assert shared.slots == 4
    workers = shared.worker_settings(settings)
    assert workers.local_server_url == shared.base_url
    assert replace(workers, local_server_url=None) == settings
    with shared:
        pass
    shared.close()
    assert started[0].stops == 1  # stopped once, however often it is closed


def test_a_given_server_is_shared_as_it_is(tmp_path, starts):
    url = "http://127.0.0.1:4999/v1"
    settings = local_settings(tmp_path, local_server_url=url)
    with serve_shared(settings, slots=3) as shared:
        assert shared.base_url == url and not shared.started and shared.slots is None
        assert shared.worker_settings(settings) == settings
    assert starts == ([], [])


def test_a_long_lived_server_is_shared_and_left_running(tmp_path, starts, long_lived):
    settings = local_settings(tmp_path)
    with serve_shared(settings, slots=3) as shared:
        assert shared.base_url == long_lived and not shared.started
        assert shared.slots == 2  # what it was started with, not what was asked
        assert shared.worker_settings(settings).local_server_url == long_lived
    assert starts == ([], [])
    assert state_file().exists()


@pytest.mark.parametrize(
    "extra",
    [
        {"api_key": "sk-x"},
        {"base_url": "http://127.0.0.1:5/v1"},
        {"model": "replay:20250101-000000-abcd"},
    ],
    ids=["api-key", "base-url", "replay"],
)
def test_nothing_starts_without_the_bundled_model(tmp_path, starts, extra):
    settings = local_settings(tmp_path, **extra)
    with serve_shared(settings, slots=4) as shared:
        assert shared.base_url is None and not shared.started
        assert shared.worker_settings(settings) == settings
    assert starts == ([], [])


def test_slots_must_be_positive(tmp_path, starts):
    with pytest.raises(UserError, match="at least 1 slot"):
        serve_shared(local_settings(tmp_path), slots=0)
    assert starts == ([], [])


def test_shared_server_handle_without_a_server_closes_quietly():
    handle = SharedServer(base_url=None)
    handle.close()
    assert not handle.started


# --------------------------------------------------------------------------------------------
# the slots reach llama.cpp


def test_local_server_passes_the_slots_to_its_child(tmp_path, monkeypatch):
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    commands: list[list[str]] = []

    class Spawned(Exception):
        pass

    def fake_popen(cmd, **kwargs):
        commands.append(cmd)
        raise Spawned

    monkeypatch.setattr(local.subprocess, "Popen", fake_popen)
    server = LocalServer(model, n_ctx=2048, parallel=3, log_path=tmp_path / "log")
    with pytest.raises(Spawned):
        server.start()
    cmd = commands[0]
    assert cmd[cmd.index("--parallel") + 1] == "3"
    assert cmd[cmd.index("--ctx") + 1] == "2048"


def test_each_slot_gets_the_whole_context():
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    from pullsmith.models.llama_server import build_params

    params = build_params("model.gguf", 1234, n_ctx=4096, parallel=3)
    assert (params.n_ctx, params.n_parallel, params.kv_unified) == (4096 * 3, 3, False)
