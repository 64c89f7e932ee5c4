"""The docker/podman backend without an engine: what it asks the engine for, and the errors a
user meets. (The escape suite runs it for real where an engine answers.)

The fake engine below only logs what it is asked; for `exec` it runs the command itself, never
the wrapper around it, which kills every process it may (`kill -9 -1`): harmless in a
container's PID namespace, a disaster on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pullsmith.errors import UserError
from pullsmith.sandbox import make_sandbox, policy_preset
from pullsmith.sandbox.base import CommandResult
from pullsmith.sandbox.container import CLEANUP, COMMAND_WRAPPER, ContainerSandbox, engine_error

FAKE_ENGINE = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    with open(os.path.join(here, "calls.jsonl"), "a") as log:
        log.write(json.dumps(args) + "\\n")
    mode = open(os.path.join(here, "mode")).read().strip()
    if args[0] == "version":
        if mode == "down":
            sys.exit("Cannot connect to the engine. Is the daemon running?")
        print("99.0-fake")
    elif args[:2] == ["image", "inspect"]:
        if mode == "no-image":
            sys.exit("Error: No such image")
        print(json.dumps(["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]))
    elif args[0] == "run":
        print("fakecontainer0123")
    elif args[0] == "exec" and args[-2:-1] == ["-c"] and mode == "cleanup-fails":
        sys.exit("OCI runtime exec failed: resource temporarily unavailable")
    elif args[0] == "exec" and args[-4:-2] == ["-c", args[-3]] and args[-2] == "pullsmith":
        workdir = args[args.index("--workdir") + 1]
        os.chdir(workdir)
        env = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--env")
        os.execvpe("bash", ["bash", "-c", args[-1]], env)  # the command only, never the wrapper
    """
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    (path / ".git").mkdir(parents=True)
    return path.resolve()


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `docker` and `podman` first on PATH; returns (set_mode, calls)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name in ("docker", "podman"):
        script = bin_dir / name
        script.write_text(FAKE_ENGINE.format(python=sys.executable))
        script.chmod(0o755)
    (bin_dir / "mode").write_text("up")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def set_mode(mode: str) -> None:
        (bin_dir / "mode").write_text(mode)

    def calls() -> list[list[str]]:
        log = bin_dir / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return set_mode, calls


def test_an_engine_that_does_not_answer_is_a_user_error(workspace):
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI here")
    if engine_error("docker") is None:
        pytest.skip("a docker engine answers here")
    with pytest.raises(UserError) as excinfo:
        make_sandbox("docker", workspace)
    message = excinfo.value.message
    assert "docker is installed but its engine is not reachable" in message
    assert "bwrap" in message and "Traceback" not in message


def test_fake_engine_down_and_missing_engine(workspace, fake_engine, monkeypatch):
    set_mode, _ = fake_engine
    set_mode("down")
    with pytest.raises(UserError, match="podman is installed but its engine is not reachable"):
        make_sandbox("podman", workspace)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="docker is not installed"):
        make_sandbox("docker", workspace)


def test_a_missing_image_is_never_pulled(workspace, fake_engine):
    set_mode, calls = fake_engine
    set_mode("no-image")
    with pytest.raises(UserError) as excinfo:
        make_sandbox("docker", workspace, image="example/none:1")
    assert "docker pull example/none:1" in excinfo.value.message
    assert not any(call[0] in ("pull", "run") for call in calls())


def test_one_container_per_sandbox_with_the_policy(workspace, fake_engine, monkeypatch):
    set_mode, calls = fake_engine
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    box = make_sandbox("docker", workspace, policy_preset("workspace-write"), image="img:1")
    assert isinstance(box, ContainerSandbox)
    run = next(call for call in calls() if call[0] == "run")
    joined = " ".join(run)
    for expected in (
        "--network none",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--read-only",
        "--pull never",
        f"--memory {4 * 1024**3} --memory-swap {4 * 1024**3}",
        "--pids-limit 512",
        f"--user {os.getuid()}:{os.getgid()}",
        f"--volume {workspace}:{workspace}:rw",
        f"--volume {workspace / '.git'}:{workspace / '.git'}:ro",
        f"--workdir {workspace} --entrypoint sh img:1 -c",
    ):
        assert expected in joined, expected
    assert any(arg.startswith("/tmp:rw,exec,nosuid,nodev") for arg in run)

    result = box.run('pwd; echo "key=${OPENAI_API_KEY-unset}"; exit 3')
    assert result.exit_code == 3
    assert result.output.splitlines() == [str(workspace), "key=unset"]
    exec_call = next(call for call in calls() if call[0] == "exec")
    env = {exec_call[i + 1] for i, arg in enumerate(exec_call) if arg == "--env"}
    assert "HOME=/tmp" in env and not any("sk-secret" in item for item in env)
    assert any(item.startswith("PATH=/opt/pullsmith/bin:/usr/local/bin") for item in env)
    assert "fakecontainer0123" in exec_call

    timed_out = box.run("sleep 5", timeout_s=0.3)
    assert timed_out.timed_out
    assert ["exec", "fakecontainer0123", "sh", "-c", "kill -9 -1 2>/dev/null; true"] in calls()

    set_mode("cleanup-fails")
    box.run("sleep 5", timeout_s=0.3)
    assert calls()[-3:] == [
        ["exec", "fakecontainer0123", "sh", "-c", "kill -9 -1 2>/dev/null; true"],
        ["rm", "--force", "fakecontainer0123"],
        run,  # a fresh container, made the same way
    ]

    tools = box.tools
    box.close()
    assert ["rm", "--force", "fakecontainer0123"] in calls()
    assert not tools.exists()
    with pytest.raises(UserError, match="closed"):
        box.run("true")


def test_presets_map_onto_the_container(workspace, fake_engine):
    read_only = ContainerSandbox(workspace, policy_preset("read-only"), engine="podman")
    assert f"{workspace}:{workspace}:ro" in read_only.run_args()
    read_only.close()
    full = ContainerSandbox(workspace, policy_preset("full-access"), engine="docker")
    args = full.run_args()
    assert "--read-only" not in args and args[args.index("--network") + 1] == "bridge"
    assert f"{workspace / '.git'}:{workspace / '.git'}:ro" not in args
    full.close()


def test_each_command_cleans_up_after_itself_inside():
    wrapper = COMMAND_WRAPPER.format(ulimits="ulimit -f 1")
    assert wrapper.startswith('{ ulimit -f 1; } 2>/dev/null; bash -c "$1"')
    assert "kill -9 -1" in wrapper and wrapper.endswith("exit $status")


def test_cancel_kills_the_client_and_cleans_up_inside(workspace, fake_engine):
    _, calls = fake_engine
    cancel = threading.Event()
    box = make_sandbox("docker", workspace, cancel=cancel, image="img:1")
    pid_file = workspace / "pid"
    results: list[CommandResult] = []
    try:
        thread = threading.Thread(
            target=lambda: results.append(box.run("echo $$ > pid; exec sleep 60")), daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        time.sleep(0.5)
        cancel.set()
        thread.join(10)
        assert not thread.is_alive(), "the command was not stopped"
        assert results[0].cancelled and results[0].limit_hit == "cancelled"
        assert not Path(f"/proc/{pid}").exists()
        cleanup = ["exec", "fakecontainer0123", "sh", "-c", CLEANUP]
        assert calls().count(cleanup) == 1
        before = len(calls())
        later = box.run("touch later")
        assert later.cancelled and later.exit_code == 130
        assert len(calls()) == before  # nothing was started
        assert not (workspace / "later").exists()
    finally:
        box.close()
