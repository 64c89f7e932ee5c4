"""The bubblewrap backend: the host's filesystem read-only, the workspace writable, no network.

Each command runs as `bash -c COMMAND` in fresh namespaces (user, mount, PID, network, IPC, UTS,
cgroup) with every capability dropped, no new privileges (bwrap always sets
PR_SET_NO_NEW_PRIVS), no further user namespaces (`--disable-userns`, bwrap ≥ 0.8) and, where
the architecture is known, a seccomp filter (seccomp.py). It dies with pullsmith
(`--die-with-parent`) and runs in a session of its own (`--new-session`: no TIOCSTI into a
terminal). The mounts, from the outermost path inwards (a deeper mount covers a shallower one):

- `/` read-only (writable only under `full-access`), a private /dev and a new /proc;
- an empty tmpfs over /tmp (`private_tmp`), /run (`hide_run`; with the network on, its DNS
  resolver files are shown again) and $HOME (`hide_home`), each as big as the memory limit;
- the directories of `home_visible` and `read_only_roots` read-only, and this interpreter's
  environment read-only wherever it would be hidden (for `apply_patch`);
- the workspace (writable unless the policy is read-only) and `writable_roots` writable;
- hidden paths covered (an empty tmpfs over a directory, /dev/null over a file);
- the workspace's git metadata read-only again (writable only if the policy says so).

Limits (timeout, memory, processes, file size, CPU time, output) come from process.py and
limits.py, as for every backend.

Every command still gets a sandbox of its own, but it is started ahead: once a command has
ended, the next one's sandbox (its cgroup and rlimits, namespaces, mounts and seccomp filter) is
started on a background thread, with a launcher, `bash -c LAUNCHER`, waiting in it. `run`
writes the command into a memfd, says go on a pipe, and the launcher closes both and becomes
`bash -c COMMAND` with the environment bwrap gave, so the command sees what it saw when its
sandbox was started at the command (the same fds, environment, pid 2, an empty /tmp). Its
timeout counts from `run`. A sandbox started ahead that has died by then is replaced by one
started at once; `close` (or dropping the BwrapSandbox) stops the one waiting. The mount plan
was always made once per BwrapSandbox; `--bind-try`/`--ro-bind-try` paths are now looked up
when the sandbox starts, after the previous command, rather than at the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import (
    CommandResult,
    OutputCallback,
    SandboxPolicy,
    hidden_paths,
    home_dir,
)
from pullsmith.sandbox.process import (
    StartedProcess,
    cancelled_result,
    finish_process,
    require_workspace,
    sandbox_env,
    start_process,
)
from pullsmith.sandbox.seccomp import seccomp_program

BWRAP_MISSING = (
    "bubblewrap (bwrap) is not installed; install it with `sudo apt-get install bubblewrap`, "
    "or pass `--sandbox none` to run commands unconfined."
)

# Started by root, bwrap keeps every capability unless told otherwise, and a command holding
# CAP_SYS_ADMIN could unmount what hides a path: drop them all, always.
NAMESPACE_ARGS = ("--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL")
# What resolv.conf points into under /run; shown again when the policy allows the network.
RESOLVER_DIRS = ("/run/systemd/resolve", "/run/resolvconf", "/run/NetworkManager")
# Under /run but holding programs, not sockets (NixOS keeps its whole system there).
RUN_PROGRAM_DIRS = ("/run/current-system", "/run/booted-system", "/run/opengl-driver")

# What bash runs in a sandbox started ahead of its command: wait for the word on descriptor
# {go} ("y": keep stdin, "n": /dev/null), read the command from the memfd {text} (written with a
# "." after it, so that $(...) keeps its trailing newlines), close both and become
# `bash -c COMMAND`, with the environment bwrap gave (less the SHLVL this bash exported).
LAUNCHER = (
    "IFS= read -r go <&{go} || exit 125; exec {go}<&-; "
    '[ "$go" = y ] || exec </dev/null; '
    "command=$(< /dev/fd/{text}); exec {text}<&-; "
    'unset SHLVL; exec bash -c "${{command%.}}"'
)

# Ranks order mounts of the same depth: later ones cover earlier ones.
_COVER, _READ_ONLY, _WRITABLE, _HIDDEN, _GIT = range(5)


def find_bwrap() -> str | None:
    """The path of the bwrap executable, or None."""
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


@functools.cache
def bwrap_features(bwrap: str) -> frozenset[str]:
    """The optional bwrap options this bwrap understands (from its --help)."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    wanted = ("--disable-userns", "--size", "--seccomp")
    return frozenset(option for option in wanted if f"{option} " in text)


@functools.cache
def namespace_args(bwrap: str) -> tuple[str, ...]:
    """NAMESPACE_ARGS, and no further user namespaces where this bwrap can promise that (not
    a setuid bwrap on a host without unprivileged user namespaces, nor one before 0.8)."""
    args = NAMESPACE_ARGS
    if "--disable-userns" not in bwrap_features(bwrap):
        return args
    stricter = (*args, "--unshare-user", "--disable-userns")
    argv = [bwrap, *stricter, "--ro-bind", "/", "/", "true"]
    try:
        probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return args
    return stricter if probe.returncode == 0 else args


@functools.cache
def bwrap_available() -> str | None:
    """None when bwrap can make a sandbox here, else why not (checked once per process)."""
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap is not installed"
    argv = [bwrap, *namespace_args(bwrap), "--ro-bind", "/", "/", "--dev", "/dev"]
    argv += ["--proc", "/proc", "--tmpfs", "/tmp", "true"]
    try:
        probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run: {exc}"
    if probe.returncode != 0:
        lines = probe.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return lines[-1] if lines else f"bwrap exited with status {probe.returncode}"
    return None


def git_paths(workspace: Path) -> list[Path]:
    """The workspace's git metadata: `.git`, and for a worktree its gitdir and common dir."""
    dot_git = workspace / ".git"
    if dot_git.is_dir():
        return [dot_git.resolve()]
    if not dot_git.is_file():
        return []
    paths = [dot_git.resolve()]
    text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
    if not text.startswith("gitdir:"):
        return paths
    gitdir = (workspace / text.removeprefix("gitdir:").strip()).resolve()
    if not gitdir.is_dir():
        return paths
    paths.append(gitdir)
    commondir_file = gitdir / "commondir"
    if commondir_file.is_file():
        common = (gitdir / commondir_file.read_text(encoding="utf-8").strip()).resolve()
        if common.is_dir():
            paths.append(common)
    return paths


class _MountPlan:
    """Mounts keyed by path; `args()` orders them from the outermost path inwards."""

    def __init__(self, tmpfs_size: int | None) -> None:
        self.mounts: list[tuple[Path, int, list[str]]] = []
        self.tmpfs_size = tmpfs_size

    def add(self, path: Path, rank: int, args: list[str]) -> None:
        self.mounts.append((path, rank, args))

    def cover(self, path: Path) -> None:
        size = ["--size", str(self.tmpfs_size)] if self.tmpfs_size else []
        self.add(path, _COVER, [*size, "--tmpfs", str(path)])

    def shown(self, path: Path) -> bool:
        """Whether `path` is in sight: the deepest mount above it is not a cover."""
        deepest: tuple[int, int] | None = None
        covered = False
        for mount, rank, _ in self.mounts:
            if path.is_relative_to(mount):
                key = (len(mount.parts), rank)
                if deepest is None or key > deepest:
                    deepest, covered = key, rank in (_COVER, _HIDDEN)
        return not covered

    def args(self) -> list[str]:
        ordered = sorted(self.mounts, key=lambda mount: (len(mount[0].parts), mount[1]))
        return [arg for _, _, args in ordered for arg in args]


def mount_args(workspace: Path, policy: SandboxPolicy, tmpfs_size: int | None = None) -> list[str]:
    """bwrap's filesystem arguments for `workspace` under `policy`, outermost paths first."""
    workspace = workspace.resolve()
    root = Path("/")
    writable = [path.resolve() for path in policy.writable_roots]
    args = ["--bind" if root in writable else "--ro-bind", "/", "/"]
    args += ["--dev", "/dev", "--proc", "/proc"]
    plan = _MountPlan(tmpfs_size)
    if policy.private_tmp:
        plan.cover(Path("/tmp"))
    if policy.hide_run:
        for run in (Path("/run"), Path("/var/run")):
            if run.is_dir() and not run.is_symlink():
                plan.cover(run)
        shown = RUN_PROGRAM_DIRS + (RESOLVER_DIRS if policy.network else ())
        for path in map(Path, shown):
            if path.is_dir():
                plan.add(path, _READ_ONLY, ["--ro-bind", str(path), str(path)])
    home = home_dir()
    if policy.hide_home and home is not None and home.is_dir():
        plan.cover(home)
        for name in policy.home_visible:
            path = home / name
            if path.exists():
                path = path.resolve()
                plan.add(path, _READ_ONLY, ["--ro-bind", str(path), str(path)])
    for path in (p.resolve() for p in policy.read_only_roots):
        plan.add(path, _READ_ONLY, ["--ro-bind-try", str(path), str(path)])
    workspace_mode = "--bind" if policy.workspace_writable else "--ro-bind"
    plan.add(workspace, _WRITABLE, [workspace_mode, str(workspace), str(workspace)])
    for path in writable:
        if path != root:
            plan.add(path, _WRITABLE, ["--bind-try", str(path), str(path)])
    # This interpreter's environment, and pullsmith's own code (outside it in an editable
    # install, perhaps under the hidden /tmp or $HOME), stay visible for `apply_patch` to run.
    package_root = Path(__file__).resolve().parents[2]
    for path in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), package_root}:
        if not plan.shown(path):
            plan.add(path, _READ_ONLY, ["--ro-bind-try", str(path), str(path)])
    # Only paths still in sight need hiding: a mount point made inside a cover would show
    # that the hidden name exists.
    for path in hidden_paths(policy, workspace):
        if not os.path.lexists(path):
            continue
        path = path.resolve()
        if not path.exists() or not plan.shown(path):
            continue
        if path.is_dir():
            plan.add(path, _HIDDEN, ["--tmpfs", str(path)])
        else:
            # A read-only bind is mounted nodev, which would make reads fail with EACCES;
            # a hidden file should read as empty.
            plan.add(path, _HIDDEN, ["--dev-bind", "/dev/null", str(path)])
    git_mode = "--bind" if policy.git_writable else "--ro-bind"
    for path in git_paths(workspace):
        plan.add(path, _GIT, [git_mode, str(path), str(path)])
    return args + plan.args()


class BwrapSandbox:
    """Runs commands confined by bubblewrap; see the module docstring for what they can reach."""

    name = "bwrap"

    def __init__(
        self,
        workspace: Path,
        policy: SandboxPolicy | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        bwrap = find_bwrap()
        if bwrap is None:
            raise UserError(BWRAP_MISSING)
        reason = bwrap_available()
        if reason is not None:
            raise UserError(
                f"bubblewrap (bwrap) cannot create a sandbox on this machine ({reason}); allow "
                "unprivileged user namespaces, or pass `--sandbox none` to run commands unconfined."
            )
        self.workspace = require_workspace(workspace)
        self.policy = policy or SandboxPolicy()
        self.cancel = cancel
        self.env = sandbox_env(self.policy)
        features = bwrap_features(bwrap)
        memory = self.policy.limits.memory_bytes
        tmpfs_size = memory if memory > 0 and "--size" in features else None
        self.seccomp = (
            seccomp_program() if self.policy.seccomp and "--seccomp" in features else None
        )
        self.argv_prefix = [bwrap, *namespace_args(bwrap)]
        if self.policy.network:
            self.argv_prefix.append("--share-net")
        self.argv_prefix += mount_args(self.workspace, self.policy, tmpfs_size)
        self.argv_prefix += ["--chdir", str(self.workspace)]
        self._ready = _ReadySlot()
        # A sandbox dropped without close() stops its waiting launcher too.
        weakref.finalize(self, self._ready.discard)

    def run(
        self,
        command: str,
        timeout_s: float | None = None,
        stdin: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run `command` with bash -c inside the sandbox and return what happened.

        The sandbox started after the previous command (`_Ready`) takes it if it is still
        alive; otherwise one is started now. Either way the command runs in a sandbox of its
        own, started for it, and once it has ended the next one is started in the background.
        """
        if self.cancel is not None and self.cancel.is_set():
            self._ready.discard()
            return cancelled_result(command)
        if "\0" in command:
            raise ValueError("embedded null byte")
        ready = self._ready.take()
        if ready is None or ready.started.proc.poll() is not None:
            if ready is not None:
                ready.discard()
            ready = self._start()
        started_at = time.monotonic()
        try:
            ready.go(command, stdin is not None)
        except OSError:
            # The launcher went between the look and the word (its pipe is broken): start
            # the command's sandbox now instead.
            ready.discard()
            ready = self._start()
            started_at = time.monotonic()
            try:
                ready.go(command, stdin is not None)
            except BaseException:
                ready.discard()
                raise
        except BaseException:
            ready.discard()
            raise
        try:
            return finish_process(
                ready.started,
                command=command,
                limits=self.policy.limits,
                started_at=started_at,
                timeout_s=timeout_s,
                stdin=stdin,
                on_output=on_output,
                cancel=self.cancel,
            )
        finally:
            if self.cancel is None or not self.cancel.is_set():
                self._ready.prepare(self._start)

    def _start(self) -> _Ready:
        """A sandbox for the next command, its launcher waiting for that command."""
        fds: list[int] = []
        go_read, go_write = os.pipe()
        text = os.memfd_create("pullsmith-command", os.MFD_CLOEXEC)
        try:
            fds.append(go_read)
            os.set_inheritable(text, True)
            fds.append(text)
            argv = list(self.argv_prefix)
            if self.seccomp is not None:
                # bwrap reads the filter to the end of the descriptor, so each run gets its own.
                read_end, write_end = os.pipe()
                fds.append(read_end)
                with open(write_end, "wb") as pipe:
                    pipe.write(self.seccomp)
                argv += ["--seccomp", str(read_end)]
            argv += ["--", "bash", "-c", LAUNCHER.format(go=go_read, text=text)]
            started = start_process(
                argv,
                cwd=self.workspace,
                env=self.env,
                limits=self.policy.limits,
                stdin_pipe=True,
                pass_fds=fds,
            )
        except BaseException:
            for fd in (go_write, text):
                os.close(fd)
            raise
        finally:
            for fd in fds:
                if fd != text:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        return _Ready(started, go_write, text)

    def long_lived_argv(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        visible: Sequence[Path] = (),
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that start `argv` as a long-lived process (an MCP server
        talking over its stdin and stdout) under this sandbox's policy, for the caller to spawn.

        The process gets the same namespaces, mounts, network and scrubbed environment
        (plus `env`) as a command, starting in `cwd` (default: the workspace), and dies with
        the thread that spawns it. Unlike `run`, nothing else applies: no seccomp filter (its
        program is read from a descriptor bwrap would need kept open for the process's whole
        life), and no timeout, cgroup or rlimits (the caller decides when it ends).
        `visible` are more paths it sees read-only (its own program's files, wherever they
        are: under the hidden $HOME or /tmp too); what the policy hides stays hidden.
        """
        sandbox = self
        if visible:
            roots = (*self.policy.read_only_roots, *visible)
            sandbox = BwrapSandbox(
                self.workspace, dataclasses.replace(self.policy, read_only_roots=roots)
            )
        prefix = list(sandbox.argv_prefix)
        if cwd is not None:
            prefix += ["--chdir", str(cwd)]  # bwrap takes the last --chdir
        return [*prefix, "--", *argv], {**self.env, **(env or {})}

    def close(self) -> None:
        """Stop the sandbox waiting for a next command; every command's namespaces end with it."""
        self._ready.discard()


@dataclass
class _Ready:
    """A started sandbox whose launcher waits for its command."""

    started: StartedProcess
    go_fd: int
    text_fd: int

    def go(self, command: str, keep_stdin: bool) -> None:
        """Hand the launcher `command`; stdin stays a pipe if `keep_stdin`, else /dev/null."""
        try:
            os.write(self.text_fd, os.fsencode(command) + b".")
            os.write(self.go_fd, b"y\n" if keep_stdin else b"n\n")
        finally:
            self.close_fds()
        if not keep_stdin and self.started.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.started.proc.stdin.close()
            self.started.proc.stdin = None

    def close_fds(self) -> None:
        for fd in (self.go_fd, self.text_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.go_fd = self.text_fd = -1

    def discard(self) -> None:
        self.close_fds()
        self.started.discard()


class _ReadySlot:
    """The one sandbox started ahead for a BwrapSandbox's next command, or the start of it
    under way on the starter thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.future: Future[_Ready] | None = None
        self.pid = os.getpid()

    def prepare(self, start: Callable[[], _Ready]) -> None:
        """Start the next sandbox in the background, unless one is there already."""
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.future = os.getpid(), None
            if self.future is not None:
                return
            try:
                self.future = _starter().submit(start)
            except RuntimeError:  # the interpreter is shutting down
                self.future = None

    def take(self) -> _Ready | None:
        """The sandbox started ahead (waiting for its start to finish), or None."""
        with self.lock:
            future, self.future = self.future, None
            if self.pid != os.getpid():
                # A forked child: the start ran (or runs) in the parent, whose sandbox it is.
                self.pid, future = os.getpid(), None
        if future is None:
            return None
        try:
            return future.result()
        except Exception:  # noqa: BLE001 - the command starts its own sandbox and reports
            return None

    def discard(self) -> None:
        ready = self.take()
        if ready is not None:
            ready.discard()


_STARTER: tuple[int, ThreadPoolExecutor] | None = None
_STARTER_LOCK = threading.Lock()


def _starter() -> ThreadPoolExecutor:
    """The thread that starts sandboxes ahead of their commands: one per process, living as
    long as it does (bwrap's --die-with-parent follows the thread that started it)."""
    global _STARTER
    with _STARTER_LOCK:
        if _STARTER is None or _STARTER[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pullsmith-sandbox-start")
            _STARTER = (os.getpid(), pool)
        return _STARTER[1]
