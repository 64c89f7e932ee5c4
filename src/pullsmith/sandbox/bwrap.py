"""The bubblewrap backend: the host's filesystem read-only, the workspace writable, no network.

Each command runs as `bash -c COMMAND` in fresh namespaces (user, mount, PID, network, IPC, UTS,
cgroup) with every capability dropped. The mounts, in order from the outermost path inwards:
`/` read-only, a private /dev, /proc and /tmp, the workspace and `policy.writable_roots`
writable, `policy.read_only_roots` read-only, hidden paths covered (an empty tmpfs over a
directory, /dev/null over a file, so it reads as empty), and the workspace's git directory read-only again.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import CommandResult, SandboxPolicy, hidden_paths
from pullsmith.sandbox.process import require_workspace, run_process, sandbox_env

BWRAP_MISSING = (
    "bubblewrap (bwrap) is not installed; install it with `sudo apt-get install bubblewrap`, "
    "or pass `--sandbox none` to run commands unconfined."
)

# Started by root, bwrap keeps every capability unless told otherwise, and a command holding
# CAP_SYS_ADMIN could unmount what hides a path: drop them all, always.
NAMESPACE_ARGS = ("--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL")
SYSTEM_MOUNT_ARGS = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc")

# Ranks order mounts of the same depth: later ones cover earlier ones.
_TMP, _WRITABLE, _READ_ONLY, _HIDDEN, _GIT = range(5)


def find_bwrap() -> str | None:
    """The path of the bwrap executable, or None."""
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


@functools.cache
def bwrap_available() -> str | None:
    """None when bwrap can make a sandbox here, else why not (checked once per process)."""
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap is not installed"
    argv = [bwrap, *NAMESPACE_ARGS, *SYSTEM_MOUNT_ARGS, "--tmpfs", "/tmp", "true"]
    try:
        probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run: {exc}"
    if probe.returncode != 0:
        lines = probe.stderr.decode("utf-8", errors="replace").strip().splitlines()
        return lines[-1] if lines else f"bwrap exited with status {probe.returncode}"
    return None


def _within(path: Path, parents: tuple[Path, ...] | list[Path]) -> bool:
    return any(path.is_relative_to(parent) for parent in parents)


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


def mount_args(workspace: Path, policy: SandboxPolicy) -> list[str]:
    """bwrap's filesystem arguments for `workspace` under `policy`, outermost paths first."""
    workspace = workspace.resolve()
    tmp = Path("/tmp")
    hidden = [path.resolve() for path in hidden_paths(policy, workspace) if path.exists()]
    mounts: list[tuple[Path, int, list[str]]] = [(tmp, _TMP, ["--tmpfs", str(tmp)])]
    mounts.append((workspace, _WRITABLE, ["--bind", str(workspace), str(workspace)]))
    for root in policy.writable_roots:
        path = root.resolve()
        mounts.append((path, _WRITABLE, ["--bind-try", str(path), str(path)]))
    # This interpreter's environment has to stay visible for `apply_patch` to run.
    interpreter = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    revealed = [path for path in interpreter if _within(path, [tmp, *hidden])]
    for root in (*policy.read_only_roots, *revealed):
        path = root.resolve()
        mounts.append((path, _READ_ONLY, ["--ro-bind-try", str(path), str(path)]))
    for path in hidden:
        if path.is_dir():
            mounts.append((path, _HIDDEN, ["--tmpfs", str(path)]))
        else:
            # A read-only bind is mounted nodev, which would make reads fail with EACCES;
            # a hidden file should read as empty.
            mounts.append((path, _HIDDEN, ["--dev-bind", "/dev/null", str(path)]))
    for path in git_paths(workspace):
        mounts.append((path, _GIT, ["--ro-bind", str(path), str(path)]))
    mounts.sort(key=lambda mount: (len(mount[0].parts), mount[1]))
    return [arg for _, _, args in mounts for arg in args]


class BwrapSandbox:
    """Runs commands confined by bubblewrap; see the module docstring for what they can reach."""

    name = "bwrap"

    def __init__(self, workspace: Path, policy: SandboxPolicy | None = None) -> None:
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
        self.env = sandbox_env(self.policy)
        self.argv_prefix = [bwrap, *NAMESPACE_ARGS]
        if self.policy.network:
            self.argv_prefix.append("--share-net")
        self.argv_prefix += [
            *SYSTEM_MOUNT_ARGS,
            *mount_args(self.workspace, self.policy),
            "--chdir",
            str(self.workspace),
            "--",
        ]

    def run(
        self, command: str, timeout_s: float | None = None, stdin: str | None = None
    ) -> CommandResult:
        """Run `command` with bash -c inside the sandbox and return what happened."""
        return run_process(
            [*self.argv_prefix, "bash", "-c", command],
            command=command,
            cwd=self.workspace,
            env=self.env,
            limits=self.policy.limits,
            timeout_s=timeout_s,
            stdin=stdin,
        )

    def close(self) -> None:
        """Nothing to release: every command's namespaces end with it."""
