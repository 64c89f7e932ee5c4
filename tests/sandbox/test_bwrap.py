"""The bubblewrap backend: what a confined command can and cannot reach."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pullsmith.errors import UserError
from pullsmith.sandbox import bwrap as bwrap_module
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import Limits, SandboxPolicy, sensitive_home_paths
from pullsmith.sandbox.bwrap import BwrapSandbox, bwrap_available, git_paths

needs_bwrap = pytest.mark.skipif(
    bwrap_available() is not None, reason=f"bwrap cannot sandbox here: {bwrap_available()}"
)


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path.resolve()


def sandbox(workspace: Path, **policy: object) -> BwrapSandbox:
    return BwrapSandbox(workspace, SandboxPolicy(**policy))  # type: ignore[arg-type]


@needs_bwrap
def test_output_exit_code_and_cwd(workspace):
    result = make_sandbox("bwrap", workspace).run("pwd; echo err >&2; exit 7")
    assert result.exit_code == 7
    assert result.output == f"{workspace}\nerr\n"


@needs_bwrap
def test_writes_inside_the_workspace_reach_the_host(workspace):
    result = sandbox(workspace).run("mkdir -p sub && echo hi > sub/file.txt")
    assert result.exit_code == 0
    assert (workspace / "sub" / "file.txt").read_text() == "hi\n"


@needs_bwrap
def test_writes_outside_the_workspace_do_not(workspace, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    name = f"pullsmith-test-{uuid.uuid4().hex}"
    result = sandbox(workspace).run(
        f"touch /etc/{name}; echo etc=$?; touch {outside}/{name}; echo tmp=$?; "
        f"mkdir -p {outside} && touch {outside}/{name} && echo private-tmp-ok"
    )
    assert "etc=1" in result.output and "tmp=1" in result.output
    assert "private-tmp-ok" in result.output  # /tmp inside is a private tmpfs
    assert not Path(f"/etc/{name}").exists()
    assert not (outside / name).exists()


@needs_bwrap
def test_git_directory_is_read_only(workspace):
    git("init", "-q", cwd=workspace)
    config_before = (workspace / ".git" / "config").read_text()
    result = sandbox(workspace).run(
        "touch .git/evil; echo touch=$?; echo '[x]' >> .git/config; echo append=$?; "
        "git status --short >/dev/null; echo status=$?; echo ok > tracked.txt"
    )
    assert "touch=1" in result.output and "append=1" in result.output
    assert "status=0" in result.output
    assert not (workspace / ".git" / "evil").exists()
    assert (workspace / ".git" / "config").read_text() == config_before
    assert (workspace / "tracked.txt").exists()


@needs_bwrap
def test_worktree_gitdir_is_readable_but_read_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    git("worktree", "add", "-q", "-b", "work", str(tmp_path / "wt"), cwd=repo)
    worktree = (tmp_path / "wt").resolve()
    paths = git_paths(worktree)
    assert paths[0] == worktree / ".git"
    assert repo.resolve() / ".git" in paths
    head_before = (repo / ".git" / "HEAD").read_text()
    result = sandbox(worktree).run(
        "git log --format=%s; echo log=$?; echo 'gitdir: /elsewhere' > .git; echo dotgit=$?; "
        "git -c user.name=t -c user.email=t@e commit -q --allow-empty -m x; echo commit=$?; "
        f"touch {repo}/.git/HEAD; echo head=$?"
    )
    assert "first\nlog=0" in result.output
    assert "dotgit=1" in result.output
    assert "commit=0" not in result.output
    assert "head=1" in result.output
    assert (worktree / ".git").read_text().startswith("gitdir: ")
    assert (repo / ".git" / "HEAD").read_text() == head_before


@needs_bwrap
def test_secrets_in_the_environment_are_not_visible(workspace, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = BwrapSandbox(workspace).run('echo "key=${OPENAI_API_KEY-unset}"; env')
    assert "key=unset" in result.output
    assert "sk-secret" not in result.output
    assert "PYTHONDONTWRITEBYTECODE=1" in result.output


@needs_bwrap
def test_apply_patch_is_on_path(workspace):
    result = BwrapSandbox(workspace).run("command -v apply_patch")
    assert result.output.strip() == str(Path(sys.executable).parent / "apply_patch")


@needs_bwrap
def test_no_network_but_loopback(workspace):
    result = BwrapSandbox(workspace).run("cat /proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in result.output.splitlines() if ":" in line]
    assert interfaces == ["lo"]


@needs_bwrap
def test_host_loopback_listener_is_not_reachable(workspace):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        result = BwrapSandbox(workspace).run(
            f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected", timeout_s=2
        )
        assert "connected" not in result.output
        assert result.exit_code != 0 and not result.timed_out
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_bwrap
def test_hidden_paths_and_capabilities(workspace):
    secrets = workspace / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text("dir-secret")
    (workspace / "token").write_text("file-secret")
    box = sandbox(workspace, hidden_paths=(secrets, workspace / "token"))
    result = box.run(
        "ls -A secrets; echo listed=$?; cat token; echo cat=$?; umount secrets; echo umount=$?; "
        "cat secrets/key; grep CapEff /proc/self/status; touch secrets/new"
    )
    assert "listed=0" in result.output and "cat=0" in result.output
    assert "dir-secret" not in result.output and "file-secret" not in result.output
    assert "umount=0" not in result.output
    assert "CapEff:\t0000000000000000" in result.output
    assert sorted(os.listdir(secrets)) == ["key"]
    assert (workspace / "token").read_text() == "file-secret"


@needs_bwrap
def test_sensitive_home_paths_are_hidden(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("private")
    (home / ".netrc").write_text("machine x password y")
    workspace = home / "projects" / "ws"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    assert set(sensitive_home_paths(workspace)) == {
        (home / ".ssh").resolve(),
        (home / ".netrc").resolve(),
    }
    # A workspace inside a sensitive directory stays visible.
    assert sensitive_home_paths(home / ".ssh" / "x") == ((home / ".netrc").resolve(),)
    box = BwrapSandbox(workspace, SandboxPolicy(writable_roots=(home,)))
    result = box.run("ls -A ~/.ssh; cat ~/.netrc; ls -A ~; pwd")
    assert "private" not in result.output and "password" not in result.output
    assert result.output.strip().endswith(str(workspace.resolve()))


@needs_bwrap
def test_timeout_kills_a_command_that_ignores_sigterm(workspace):
    started = time.monotonic()
    result = BwrapSandbox(workspace).run("trap '' TERM; sleep 100", timeout_s=0.5)
    assert result.timed_out
    assert time.monotonic() - started < 2


@needs_bwrap
def test_background_processes_do_not_survive(workspace):
    marker = f"{uuid.uuid4().int % 10**9:09d}"
    result = BwrapSandbox(workspace).run(
        f"(sleep 0.3; touch late-{marker}) & setsid sleep 1000.{marker} & echo started"
    )
    assert result.output == "started\n" and result.duration_s < 1
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            assert f"1000.{marker}".encode() not in cmdline
    time.sleep(0.5)
    assert not (workspace / f"late-{marker}").exists()


@needs_bwrap
def test_endless_output_is_capped_with_head_and_tail(workspace):
    box = sandbox(workspace, limits=Limits(output_bytes=2000))
    result = box.run("seq 1 300000")
    assert result.truncated and result.exit_code == 0
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("299999\n300000\n")
    result = box.run("yes", timeout_s=0.5)
    assert result.timed_out and result.truncated and len(result.output) < 2100


@needs_bwrap
def test_network_can_be_allowed(workspace):
    result = sandbox(workspace, network=True).run("cat /proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in result.output.splitlines() if ":" in line]
    host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()]
    assert set(interfaces) == {name for name in host if name and "|" not in name}


def test_missing_bwrap_is_a_user_error(workspace, monkeypatch):
    monkeypatch.setattr(bwrap_module, "find_bwrap", lambda: None)
    with pytest.raises(UserError) as excinfo:
        BwrapSandbox(workspace)
    assert "apt-get install bubblewrap" in excinfo.value.message
    assert "--sandbox none" in excinfo.value.message
