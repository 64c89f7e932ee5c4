"""Shared helpers for the service tests: a real `pullsmith serve` process and replayed runs.

No model runs here: a run is recorded once per session with `pullsmith exec` against the
scripted OpenAI-compatible server of tests/pr, and tasks replay it (`model: replay:<run dir>`).
Runs that must take a while replay hand-written histories whose first command sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from conftest import EXAMPLES, bwrap_works, git

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pr"))
from test_pr_exec_cli import ScriptedServer  # noqa: E402

SANDBOX = "bwrap" if bwrap_works() else "none"
INSTRUCTION = "The CSV export drops the last row; fix it."
FIXED_EXPORT = (
    (EXAMPLES / "inventory" / "inventory" / "export.py")
    .read_text()
    .replace(
        "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n",
        "    for row in rows:\n        lines.append(format_row(row))\n",
    )
)
FIX = (
    "The loop stops one row early.\n```bash\ncat > inventory/export.py <<'EOF'\n"
    + FIXED_EXPORT
    + "EOF\n```"
)
RUN_TESTS = "```bash\npython -m pytest -q\n```"
FINISH = '```bash\nfinish "to_csv writes every row"\n```'
GOOD_REPLIES = [FIX, RUN_TESTS, FINISH]
# Settings of the developer's own environment that would send the server elsewhere.
OUTSIDE = (
    "PULLSMITH_DATABASE_URL",
    "PULLSMITH_DATA_DIR",
    "PULLSMITH_TOKEN",
    "PULLSMITH_TEST_COMMAND",
    "PULLSMITH_MODEL",
    "OPENAI_BASE_URL",
    "GITHUB_TOKEN",
    "GH_TOKEN",
)


def make_repo(path: Path) -> Path:
    """A fresh copy of the example inventory repository (its CSV export has the bug)."""
    import shutil

    shutil.copytree(EXAMPLES / "inventory", path)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "initial", cwd=path)
    return path


def server_env(data_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env.update(
        XDG_DATA_HOME=str(data_home),
        PULLSMITH_SANDBOX=SANDBOX,
        GIT_AUTHOR_NAME="Test User",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="Test User",
        GIT_COMMITTER_EMAIL="test@example.invalid",
        # The scripted replies are the agent's turns: no direct repair asks before them.
        PULLSMITH_REPAIR="false",
    )
    env.pop("OPENAI_API_KEY", None)
    env.update(extra)
    return env


def write_history(run_dir: Path, replies: list[str]) -> Path:
    """A hand-written recording: a history.json holding these assistant replies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "(recorded by hand)"},
        {"role": "user", "content": INSTRUCTION},
    ]
    for reply in replies:
        messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": "(observation)"})
    (run_dir / "history.json").write_text(json.dumps(messages))
    return run_dir


def record_runs(root: Path) -> dict[str, str]:
    """Model specs to replay, made under `root`: "good" (recorded by `pullsmith exec`),
    "sleepy" (sleeps 60 s first) and "slow" (sleeps 4 s, then the good run).

    The session's `recordings` fixture (tests/service/conftest.py) calls this once for every
    module of tests/service."""
    repo = make_repo(root / "inventory")
    env = server_env(root / "data", OPENAI_API_KEY="sk-test")
    with ScriptedServer(GOOD_REPLIES) as model:
        proc = subprocess.run(
            [sys.executable, "-c", "from pullsmith.cli import main; main()", "exec"]
            + ["--base-url", model.base_url, "--model", "scripted", "--sandbox", SANDBOX]
            + ["--repo", str(repo), INSTRUCTION],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = (root / "data" / "pullsmith" / "runs").iterdir()
    assert (run_dir / "history.json").is_file()
    sleepy = write_history(root / "sleepy", ["Let me wait.\n```bash\nsleep 60\n```"])
    slow = write_history(root / "slow", ["First, a pause.\n```bash\nsleep 4\n```", *GOOD_REPLIES])
    return {
        "good": f"replay:{run_dir}",
        "sleepy": f"replay:{sleepy}",
        "slow": f"replay:{slow}",
    }


# Modules used to import the fixture from here (one recording per module); the name stays so
# that such an import still works, but the fixture is conftest.py's now.
recordings_fixture = record_runs


class Server:
    """`pullsmith serve` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, data_home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_home = data_home
        self.args = args
        self.env = env or server_env(data_home)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.token = ""
        self.out_path = data_home.parent / f"serve-{time.monotonic_ns()}.out"
        self.err_path = self.out_path.with_suffix(".err")

    def start(self, timeout: float = 30.0) -> Server:
        self.data_home.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from pullsmith.cli import main; main()", "serve"]
                + ["--port", "0", *self.args],
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"open +(http://\S+)/\?token=(\S+)", self.output)
            if found:
                self.base, self.token = found.group(1), found.group(2)
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.logs}")
            time.sleep(0.05)
        else:
            raise AssertionError(f"serve printed no URL: {self.logs}")
        while time.monotonic() < deadline:
            try:
                if self.get("/api/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve never became healthy: {self.logs}")

    @property
    def output(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    @property
    def errors(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    @property
    def logs(self) -> str:
        return f"\n--- stdout\n{self.output}\n--- stderr\n{self.errors}"

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token if token is None else token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def create(self, repo: Path, model: str, **fields: Any) -> dict[str, Any]:
        body = {"repo": str(repo), "instruction": INSTRUCTION, "model": model, **fields}
        response = self.post("/api/tasks", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.get(f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, task_id: str, states: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["state"] in states:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {task['state']}, not {states}{self.logs}")
            time.sleep(0.1)

    def wait_event(self, task_id: str, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        """The first stored event of the task that `predicate` accepts, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                events = stream(self, task_id, until=lambda e: bool(predicate(e)), timeout=5)
            except httpx.ReadTimeout:
                continue  # nothing new for 5 s (a loaded machine): ask again
            for event in events:
                if predicate(event):
                    return event
        raise AssertionError(f"task {task_id} had no such event{self.logs}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> list[int]:
        """SIGKILL the server process alone; the processes it had started (its workers notice
        and exit)."""
        assert self.proc is not None
        started = descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait(timeout=30)
        return started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    """The ones of `pids` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def frames(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events as {"id", "event", "data"} dicts (comments and retry skipped)."""
    frame: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in frame:
                yield frame
            frame = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name in ("id", "event", "data"):
            frame[name] = value


def stream(
    server: Server,
    task_id: str,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    until: Any = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """The events the task's stream sends, checked frame by frame, until it ends (or `until`
    accepts one: the connection is then dropped)."""
    events = []
    with httpx.stream(
        "GET",
        f"{server.base}/api/tasks/{task_id}/events",
        headers={**server.headers(), **(headers or {})},
        params=params,
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in frames(response.iter_lines()):
            event = json.loads(frame["data"])
            assert frame["id"] == str(event["id"]) and frame["event"] == event["type"]
            events.append(event)
            if until is not None and until(event):
                break
    return events
