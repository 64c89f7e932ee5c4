"""The escape suite: real attempts, from inside the sandbox, to reach what it must not.

Every test makes the attempt inside and then checks on the host that it failed: the file is not
there, the process still lives, the listener saw no connection. They run on bwrap, and on
docker and podman where an engine answers and has the image (tests never pull one).
Nothing here sends a packet to anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sandbox_helpers import (
    backend_skip_reason,
    busy_cgroups,
    fork_bomb_skip_reason,
    marker,
    processes_with,
)

from pullsmith.config import load_settings
from pullsmith.sandbox import Sandbox, agent_policy, make_sandbox
from pullsmith.sandbox.base import MIB, SandboxPolicy, policy_preset
from pullsmith.sandbox.limits import cgroup_parents

BACKENDS = ["bwrap", "docker", "podman"]
SECRET = "pullsmith-planted-secret-7c1f"
Factory = Callable[..., Sandbox]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A $HOME full of planted secrets, set before any sandbox is made."""
    home = tmp_path / "home"
    planted = {
        ".ssh/id_ed25519": f"-----BEGIN OPENSSH PRIVATE KEY----- {SECRET}",
        ".aws/credentials": f"[default]\naws_secret_access_key = {SECRET}",
        ".config/gh/hosts.yml": f"github.com:\n  oauth_token: {SECRET}",
        ".config/pullsmith/config.toml": f'api_key = "{SECRET}"',
        ".netrc": f"machine example.com login me password {SECRET}",
        ".cargo/credentials.toml": f'[registry]\ntoken = "{SECRET}"',
        "notes/private.txt": SECRET,
    }
    for name, text in planted.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
    (home / ".cargo" / "bin").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    git("init", "-q", cwd=path)
    (path / "README").write_text("hello\n")
    git("add", "README", cwd=path)
    git("commit", "-q", "-m", "first", cwd=path)
    return path.resolve()


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, workspace: Path, home: Path) -> Iterator[Factory]:
    """make(policy=None, **limits): a sandbox of the backend under test around `workspace`."""
    reason = backend_skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    made: list[Sandbox] = []

    def factory(policy: SandboxPolicy | None = None, **limits: object) -> Sandbox:
        policy = policy or policy_preset("workspace-write")
        if limits:
            policy = replace(policy, limits=replace(policy.limits, **limits))
        box = make_sandbox(request.param, workspace, policy)
        made.append(box)
        return box

    yield factory
    for box in made:
        box.close()


def python(box: Sandbox) -> str:
    """A python the sandbox can run."""
    return sys.executable if box.name == "bwrap" else "python3"


def test_writes_outside_the_workspace_fail(make, workspace, home, tmp_path):
    name = f"escape-{marker()}"
    outside = tmp_path / "outside"
    outside.mkdir()
    hooks = workspace / ".git" / "hooks"
    config_before = (workspace / ".git" / "config").read_text()
    box = make()
    try:
        result = box.run(
            f"touch /etc/{name}; touch {home}/{name}; touch {outside}/{name}; "
            f"touch /tmp/{name}; echo '[core] hooksPath = /tmp' >> .git/config; "
            f"printf '#!/bin/sh\\necho pwned\\n' > .git/hooks/pre-commit; touch .git/{name}; "
            f"echo inside > {name}; echo done"
        )
        assert "done" in result.output
        assert not Path(f"/etc/{name}").exists()
        assert not Path(f"/tmp/{name}").exists()
    finally:  # a failing sandbox must not leave litter on the host
        Path(f"/etc/{name}").unlink(missing_ok=True)
        Path(f"/tmp/{name}").unlink(missing_ok=True)
    assert not (home / name).exists()
    assert not (outside / name).exists()
    assert (workspace / ".git" / "config").read_text() == config_before
    assert not (hooks / "pre-commit").exists()
    assert not (workspace / ".git" / name).exists()
    assert (workspace / name).read_text() == "inside\n"  # the workspace itself is writable


def test_planted_home_secrets_cannot_be_read(make, workspace, home):
    settings = load_settings()
    box = make(agent_policy(settings))
    result = box.run(
        "cat ~/.ssh/id_ed25519 ~/.aws/credentials ~/.config/gh/hosts.yml ~/.netrc "
        "~/.cargo/credentials.toml ~/notes/private.txt "
        f"{home}/.config/pullsmith/config.toml; "
        f"grep -rls {SECRET} {home} {home.parent} /tmp --exclude-dir={workspace.name}; "
        f"cp -r {home} ./stolen; ls -A ~; echo done"
    )
    assert "done" in result.output
    assert SECRET not in result.output
    for path in workspace.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert SECRET not in path.read_text(errors="replace"), path


def test_host_environment_keys_do_not_reach_the_command(make, workspace, monkeypatch):
    keys = {
        "OPENAI_API_KEY": f"sk-{SECRET}",
        "ANTHROPIC_API_KEY": f"ant-{SECRET}",
        "GITHUB_TOKEN": f"ghp-{SECRET}",
        "AWS_SECRET_ACCESS_KEY": f"aws-{SECRET}",
    }
    for key, value in keys.items():
        monkeypatch.setenv(key, value)
    box = make()
    result = box.run(
        "env > env.txt; cat /proc/1/environ /proc/self/environ >> env.txt 2>/dev/null; "
        f"cat /proc/{os.getpid()}/environ >> env.txt 2>/dev/null; echo done"
    )
    assert "done" in result.output
    captured = (workspace / "env.txt").read_text(errors="replace")
    assert "PATH=" in captured
    assert SECRET not in captured and SECRET not in result.output


def test_no_network_but_its_own_loopback(make):
    box = make()
    result = box.run("cat /proc/net/dev; echo ---; cat /proc/net/route; cat /proc/net/ipv6_route")
    devices, _, routes = result.output.partition("---")
    interfaces = [line.split(":")[0].strip() for line in devices.splitlines() if ":" in line]
    assert interfaces == ["lo"]
    route_lines = [line for line in routes.strip().splitlines() if line.strip()]
    # Only the IPv4 table's header; no default route, no IPv6 routes but loopback.
    assert route_lines[0].startswith("Iface") and all(
        line.startswith("Iface") or line.rstrip().endswith("lo") for line in route_lines
    )


def test_host_loopback_listeners_are_not_reachable(make):
    listeners = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.bind((address, 0))
        except OSError:
            continue
        listener.listen(1)
        listener.settimeout(0.2)
        listeners.append((listener, address, listener.getsockname()[1]))
    assert listeners
    box = make()
    try:
        for listener, address, port in listeners:
            result = box.run(f"exec 3<>/dev/tcp/{address}/{port} && echo connected", timeout_s=5)
            assert "connected" not in result.output
            assert result.exit_code != 0 and not result.timed_out
            with pytest.raises(TimeoutError):
                listener.accept()
    finally:
        for listener, _, _ in listeners:
            listener.close()


def test_host_processes_cannot_be_signalled_or_inspected(make):
    env = {**os.environ, "PULLSMITH_VICTIM": SECRET}
    victim = subprocess.Popen(["sleep", "60"], env=env)
    try:
        box = make()
        attach = (
            "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
            f"print('ptrace', libc.ptrace(16, {victim.pid}, 0, 0))"  # PTRACE_ATTACH
        )
        result = box.run(
            f"kill -9 {victim.pid}; echo kill=$?; cat /proc/{victim.pid}/environ; "
            f'{python(box)} -c "{attach}"; '
            f"kill -9 {os.getpid()}; kill -STOP {os.getpid()}; echo done",
            timeout_s=10,
        )
        assert "done" in result.output and "kill=0" not in result.output
        assert "ptrace -1" in result.output
        assert SECRET not in result.output
        time.sleep(0.1)
        assert victim.poll() is None  # still running
        for pid in (victim.pid, os.getpid()):
            status = Path(f"/proc/{pid}/status").read_text()
            assert "TracerPid:\t0" in status  # nobody attached
            assert "State:\tT" not in status and "State:\tt" not in status  # not stopped
    finally:
        victim.kill()
        victim.wait()


def test_fork_bomb_is_contained_and_the_host_stays_responsive(make):
    reason = fork_bomb_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    tag = marker()
    box = make(processes=64, timeout_s=2.0)
    outcome: list = []
    bomb = threading.Thread(
        target=lambda: outcome.append(box.run(f"b() {{ b | b & }}; b; sleep 10 # {tag}")),
        daemon=True,
    )
    bomb.start()
    time.sleep(0.3)
    worst = 0.0
    while bomb.is_alive():
        started = time.monotonic()
        subprocess.run(["true"], check=True, timeout=5)
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    bomb.join()
    result = outcome[0]
    assert worst < 1.0, f"a host `true` took {worst:.2f} s during the fork bomb"
    assert result.timed_out
    time.sleep(0.2)
    assert processes_with(tag) == []
    if box.name == "bwrap" and cgroup_parents("auto") is not None:
        assert "limit of 64 processes" in result.output
        box.close()  # the sandbox started for a next command holds a cgroup until then
        assert busy_cgroups() == []


def test_memory_hog_is_killed(make, workspace):
    box = make(memory_bytes=256 * MIB, timeout_s=20)
    started = time.monotonic()
    result = box.run(
        f"{python(box)} -c \"b = b'x' * (768 * 1024**2); open('survived', 'w').write('yes')\"; "
        "echo status=$?"
    )
    assert time.monotonic() - started < 15
    assert not (workspace / "survived").exists()
    assert "status=0" not in result.output
    if box.name == "bwrap" and cgroup_parents("auto") is not None:
        assert result.limit_hit == "memory" and "status=137" in result.output
    elif box.name == "bwrap":
        assert "MemoryError" in result.output


def test_disk_fill_in_the_workspace_stops_at_the_file_size_limit(make, workspace):
    box = make(file_size_bytes=1 * MIB)
    result = box.run("head -c 5000000 /dev/zero > big; echo status=$?")
    assert "status=153" in result.output  # 128 + SIGXFSZ
    assert (workspace / "big").stat().st_size == 1 * MIB


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_endless_output_is_capped_and_memory_stays_bounded(make):
    box = make(output_bytes=64 * 1024)
    box.run("true")  # warm up whatever the first run allocates
    field = "VmHWM" if _peak_rss_reset() else "VmRSS"
    before = _rss_kib("VmRSS")
    result = box.run("yes pullsmith", timeout_s=1.0)
    grown_mib = (_rss_kib(field) - before) / 1024
    assert result.timed_out and result.truncated
    assert result.omitted_bytes > 10 * MIB  # plenty went through the pipe
    assert len(result.output) < 64 * 1024 + 200
    assert result.output.startswith("pullsmith\n") and result.output.endswith("pullsmith\n")
    assert grown_mib < 16, f"pullsmith grew by {grown_mib:.1f} MiB ({field})"


def test_background_processes_left_running_are_killed(make, workspace):
    tag = marker()
    box = make()
    result = box.run(
        f"(sleep 0.5; touch late-{tag}) & setsid sleep 1000.{tag} & "
        f"nohup sleep 1001.{tag} >/dev/null 2>&1 & disown; echo started"
    )
    assert result.output == "started\n" and result.duration_s < 3
    time.sleep(0.2)
    assert processes_with(f".{tag}") == []
    time.sleep(0.5)
    assert not (workspace / f"late-{tag}").exists()


def test_symlinks_out_of_the_workspace_do_not_carry_writes(make, workspace, home, tmp_path):
    visible = tmp_path / "shared-docs"
    visible.mkdir()
    (visible / "doc.txt").write_text("original\n")
    (workspace / "to-docs").symlink_to(visible)
    (workspace / "to-key").symlink_to(home / ".ssh" / "id_ed25519")
    (workspace / "to-config").symlink_to(workspace / ".git" / "config")
    config_before = (workspace / ".git" / "config").read_text()
    policy = policy_preset("workspace-write", read_only_roots=(visible,))
    box = make(policy)
    result = box.run(
        "echo evil > to-docs/doc.txt; echo evil > to-docs/new.txt; echo evil > to-key; "
        f"echo evil >> to-config; ln -s {visible}/made.txt made-inside; echo evil > made-inside; "
        "cat to-key; echo done"
    )
    assert "done" in result.output and SECRET not in result.output
    assert (visible / "doc.txt").read_text() == "original\n"
    assert not (visible / "new.txt").exists()
    assert SECRET in (home / ".ssh" / "id_ed25519").read_text()
    assert "evil" not in (home / ".ssh" / "id_ed25519").read_text()
    assert (workspace / ".git" / "config").read_text() == config_before
    assert not (visible / "made.txt").exists()


def test_timeout_kills_a_command_that_ignores_sigterm(make):
    tag = marker()
    box = make()
    started = time.monotonic()
    result = box.run(f"trap '' TERM; sleep 100.{tag} & wait; sleep 100.{tag}", timeout_s=0.5)
    assert result.timed_out and result.limit_hit == "timeout"
    assert time.monotonic() - started < 3
    time.sleep(0.2)
    assert processes_with(f"100.{tag}") == []


def test_no_new_privileges_and_no_capabilities(make):
    result = make().run("grep -E '^(NoNewPrivs|CapEff|CapPrm):' /proc/self/status")
    assert "NoNewPrivs:\t1" in result.output
    assert "CapEff:\t0000000000000000" in result.output
    assert "CapPrm:\t0000000000000000" in result.output
