"""The bubblewrap backend: mounts, presets and hardening (the escape attempts are in
test_escape.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_helpers import needs_bwrap

from pullsmith.errors import UserError
from pullsmith.sandbox import bwrap as bwrap_module
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import SandboxPolicy, policy_preset, sensitive_home_paths
from pullsmith.sandbox.bwrap import BwrapSandbox, git_paths, mount_args


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
def test_output_streams_to_a_callback(workspace):
    chunks: list[bytes] = []
    result = sandbox(workspace).run("echo one; sleep 0.1; echo two", on_output=chunks.append)
    assert b"".join(chunks) == b"one\ntwo\n" == result.output.encode()


@needs_bwrap
def test_git_works_but_its_metadata_is_read_only(workspace):
    git("init", "-q", cwd=workspace)
    result = sandbox(workspace).run(
        "git status --short >/dev/null; echo status=$?; touch .git/x; echo touch=$?; "
        "echo ok > tracked.txt"
    )
    assert "status=0" in result.output and "touch=1" in result.output
    assert (workspace / "tracked.txt").exists() and not (workspace / ".git" / "x").exists()


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
def test_apply_patch_is_on_path(workspace):
    result = BwrapSandbox(workspace).run("command -v apply_patch")
    assert result.output.strip() == str(Path(sys.executable).parent / "apply_patch")


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
def test_home_is_hidden_but_toolchains_show(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".cargo" / "bin").mkdir(parents=True)
    (home / ".cargo" / "bin" / "cargo").write_text("#!/bin/sh\necho cargo\n")
    (home / ".cargo" / "credentials.toml").write_text("token")
    (home / "Documents").mkdir()
    (home / "Documents" / "taxes.txt").write_text("private")
    workspace = home / "src" / "app"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    result = BwrapSandbox(workspace).run(
        "ls -A ~; echo ---; ls -A ~/.cargo; cat ~/.cargo/bin/cargo ~/.cargo/credentials.toml; "
        "touch ~/.cargo/x; echo cargo-write=$?; touch ~/scratch; echo home-write=$?; pwd"
    )
    listing, _, rest = result.output.partition("---")
    assert set(listing.split()) == {".cargo", "src"}
    assert "echo cargo" in rest and "token" not in rest
    assert "cargo-write=1" in rest and "home-write=0" in rest
    assert rest.strip().endswith(str(workspace.resolve()))
    assert not (home / "scratch").exists() and not (home / ".cargo" / "x").exists()


@needs_bwrap
def test_sensitive_home_paths_are_hidden_when_home_is_shown(tmp_path, monkeypatch):
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
    box = BwrapSandbox(workspace, SandboxPolicy(hide_home=False, writable_roots=(home,)))
    result = box.run("ls -A ~/.ssh; cat ~/.netrc; ls -A ~; pwd")
    assert "private" not in result.output and "password" not in result.output
    assert "projects" in result.output
    assert result.output.strip().endswith(str(workspace.resolve()))


@needs_bwrap
def test_shadow_passwords_are_hidden():
    if not Path("/etc/shadow").exists() or not os.access("/etc/shadow", os.R_OK):
        pytest.skip("no readable /etc/shadow here")
    result = BwrapSandbox(Path.cwd()).run("wc -c < /etc/shadow")
    assert result.output.strip() == "0"


@needs_bwrap
def test_run_is_hidden_and_its_sockets_unreachable(workspace):
    path = Path(f"/run/pullsmith-test-{os.getpid()}.sock")
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
    except OSError:
        pytest.skip("cannot make a socket in /run here")
    listener.listen(1)
    listener.settimeout(0.2)
    try:
        code = f"import socket; socket.socket(socket.AF_UNIX).connect('{path}'); print('connected')"
        result = BwrapSandbox(workspace).run(f'ls -A /run; {sys.executable} -c "{code}"')
        assert "connected" not in result.output
        assert path.name not in result.output
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        path.unlink()


@needs_bwrap
def test_host_abstract_unix_sockets_are_unreachable(workspace):
    name = f"\0pullsmith-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(1)
        listener.settimeout(0.2)
        code = f"import socket; socket.socket(socket.AF_UNIX).connect('\\\\0{name[1:]}'); print('connected')"
        result = BwrapSandbox(workspace).run(f'{sys.executable} -c "{code}"')
        assert "connected" not in result.output and "ConnectionRefused" in result.output
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_bwrap
def test_no_new_user_namespaces_and_seccomp(workspace):
    if "--disable-userns" not in bwrap_module.namespace_args(bwrap_module.find_bwrap() or ""):
        pytest.skip("this bwrap cannot disable user namespaces here")
    code = (
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "params = ctypes.create_string_buffer(120); "
        "print('io_uring', libc.syscall(425, 1, params), os.strerror(ctypes.get_errno())); "
        "print('keyctl', libc.syscall(250 if os.uname().machine == 'x86_64' else 219, 0, -3, 0), "
        "os.strerror(ctypes.get_errno()))"
    )
    result = BwrapSandbox(workspace).run(
        f"unshare --user true; echo unshare=$?; grep Seccomp: /proc/self/status; "
        f'{sys.executable} -c "{code}"'
    )
    assert "unshare=0" not in result.output
    if bwrap_module.seccomp_program() is not None:
        assert "Seccomp:\t2" in result.output
        assert "io_uring -1 Operation not permitted" in result.output
        assert "keyctl -1 Operation not permitted" in result.output
    no_filter = sandbox(workspace, seccomp=False).run("grep Seccomp: /proc/self/status")
    assert "Seccomp:\t0" in no_filter.output


@needs_bwrap
def test_read_only_preset(workspace):
    (workspace / "file.txt").write_text("before\n")
    box = BwrapSandbox(workspace, policy_preset("read-only"))
    result = box.run("cat file.txt; echo x > file.txt; echo write=$?; touch /tmp/t; echo tmp=$?")
    assert "before" in result.output and "write=1" in result.output and "tmp=0" in result.output
    assert (workspace / "file.txt").read_text() == "before\n"


@needs_bwrap
def test_full_access_preset(workspace, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host x")
    monkeypatch.setenv("HOME", str(home))
    git("init", "-q", cwd=workspace)
    outside = tmp_path / "outside"
    outside.mkdir()
    box = BwrapSandbox(workspace, policy_preset("full-access"))
    result = box.run(
        f"cat ~/.ssh/config; touch {outside}/made .git/made; echo touch=$?; "
        "grep -c : /proc/net/dev; echo $$"
    )
    assert "Host x" in result.output and "touch=0" in result.output
    assert (outside / "made").exists() and (workspace / ".git" / "made").exists()
    assert result.output.strip().splitlines()[-1] in ("1", "2")  # still its own PID namespace


@needs_bwrap
def test_network_can_be_allowed(workspace):
    result = sandbox(workspace, network=True).run("cat /proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in result.output.splitlines() if ":" in line]
    host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()]
    assert set(interfaces) == {name for name in host if name and "|" not in name}


def test_mounts_go_from_the_outermost_path_inwards(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".cargo").mkdir(parents=True)
    (home / ".ssh").mkdir()
    workspace = home / "src" / "app"
    (workspace / ".git").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    args = mount_args(workspace, SandboxPolicy(), tmpfs_size=1024)
    pairs = [(args[i], args[i + 1]) for i in range(len(args) - 1) if args[i].startswith("--")]
    order = [target for option, target in pairs if option != "--size"]
    assert args[:3] == ["--ro-bind", "/", "/"]
    assert order.index(str(home)) < order.index(str(home / ".cargo"))
    assert (
        order.index(str(home)) < order.index(str(workspace)) < order.index(str(workspace / ".git"))
    )
    # ~/.ssh is under the hidden home already: no mount point is made for it.
    assert str(home / ".ssh") not in args
    assert ["--size", "1024", "--tmpfs", str(home)] == args[
        args.index(str(home)) - 3 : args.index(str(home)) + 1
    ]


def test_missing_bwrap_is_a_user_error(workspace, monkeypatch):
    monkeypatch.setattr(bwrap_module, "find_bwrap", lambda: None)
    with pytest.raises(UserError) as excinfo:
        BwrapSandbox(workspace)
    assert "apt-get install bubblewrap" in excinfo.value.message
    assert "--sandbox none" in excinfo.value.message


@needs_bwrap
def test_apply_patch_runs_inside_the_sandbox(tmp_path):
    # pullsmith's own code must stay importable inside, even from an editable install under
    # /tmp or $HOME (both covered there); CI clones may live in either.
    box = make_sandbox("bwrap", tmp_path)
    (tmp_path / "a.txt").write_text("one\n")
    patch = "*** Begin Patch\n*** Update File: a.txt\n@@\n-one\n+two\n*** End Patch\n"
    result = box.run(f"{sys.executable} -m pullsmith.tools.apply_patch", stdin=patch)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.txt").read_text() == "two\n"


@needs_bwrap
def test_a_long_lived_process_sees_its_own_files_but_not_what_is_hidden(workspace, tmp_path):
    # tmp_path is under /tmp, which the sandbox replaces with an empty tmpfs: an MCP server's
    # script kept there (or under the hidden $HOME) is only there when it is made visible.
    own = tmp_path / "server"
    own.mkdir()
    (own / "script.txt").write_text("the server's own file\n")
    (own / "secret.txt").write_text("hidden\n")
    box = sandbox(workspace, hidden_paths=(own / "secret.txt",))
    read = ["bash", "-c", f"cat {own}/script.txt; cat {own}/secret.txt; echo done"]

    argv, env = box.long_lived_argv(read)
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert "the server's own file" not in plain.stdout and "done" in plain.stdout

    argv, env = box.long_lived_argv(read, visible=[own])
    shown = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert shown.stdout == "the server's own file\ndone\n", shown
