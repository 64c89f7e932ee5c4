"""The sandbox interface: run one shell command confined to a workspace, under a policy.

A `SandboxPolicy` says what a command may see and do; every backend takes one and enforces as
much of it as its mechanism allows (see each backend's docstring). `policy_preset` builds the
three named policies users choose between with `--sandbox-policy`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pullsmith.errors import UserError

# Credentials and personal configuration under $HOME that a confined command has no reason to
# read. With `hide_home` most are already out of sight; these stay hidden even inside a
# directory of $HOME the policy shows (`home_visible`) or when $HOME is shown whole.
SENSITIVE_HOME_PATHS: tuple[str, ...] = (
    ".ssh",
    ".aws",
    ".azure",
    ".config",
    ".gnupg",
    ".docker",
    ".kube",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".vault-token",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".cache/huggingface",
    ".huggingface",
    ".password-store",
    ".terraform.d",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".local/share/pullsmith",
)

# Files only root can read that hold secrets of the machine; hidden too, because pullsmith run
# by root runs its commands as (namespaced) root, which owns them.
SENSITIVE_SYSTEM_GLOBS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/ssh_host_*_key",
)

# Directories of $HOME that hold toolchains rather than secrets; a hidden $HOME still shows
# these (read-only), so `cargo test` or a pyenv python keep working.
HOME_TOOLCHAINS: tuple[str, ...] = (
    ".cargo",
    ".rustup",
    ".local/bin",
    ".local/lib",
    ".pyenv",
    ".nvm",
    ".volta",
    ".bun",
    ".deno",
    "go",
)

DEFAULT_ENV_ALLOWLIST: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
)

MIB = 1024**2


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every command (0 turns a limit off).

    Memory and process counts are enforced by a cgroup of the command's own where this machine
    lets pullsmith make one (`cgroup`: "auto", "off", or the path of a delegated cgroup v2
    directory to make them in), else by rlimits: RLIMIT_DATA per process, and RLIMIT_NPROC,
    which root ignores. The file size is rounded down to 512-byte blocks where a cgroup is used.
    """

    timeout_s: float = 120.0
    output_bytes: int = 64 * 1024
    memory_bytes: int = 4 * 1024**3
    processes: int = 512
    file_size_bytes: int = 1024**3
    cpu_seconds: int = 600
    cgroup: str = "auto"


@dataclass(frozen=True)
class SandboxPolicy:
    """What a confined command may see and do; every backend takes one."""

    # The preset this policy came from, for messages.
    name: str = "workspace-write"
    workspace_writable: bool = True
    # The workspace's git metadata (`.git`, a worktree's gitdir and common dir).
    git_writable: bool = False
    writable_roots: tuple[Path, ...] = ()
    read_only_roots: tuple[Path, ...] = ()
    hidden_paths: tuple[Path, ...] = ()
    # $HOME becomes an empty scratch directory, but for `home_visible` (read-only) and
    # whatever else the policy shows inside it (the workspace, read-only roots).
    hide_home: bool = True
    home_visible: tuple[str, ...] = HOME_TOOLCHAINS
    # Also hide SENSITIVE_HOME_PATHS and SENSITIVE_SYSTEM_GLOBS that would otherwise show.
    hide_home_secrets: bool = True
    # A fresh, empty /tmp for every command.
    private_tmp: bool = True
    # An empty /run: it holds the sockets of daemons (docker, podman, D-Bus, ssh-agent,
    # gpg-agent) that a read-only mount does not stop anyone from connecting to.
    hide_run: bool = True
    network: bool = False
    # A seccomp filter refusing kernel interfaces a build has no use for (bwrap only; a
    # container engine applies its own default profile).
    seccomp: bool = True
    env_allowlist: tuple[str, ...] = DEFAULT_ENV_ALLOWLIST
    env_set: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


POLICY_PRESETS: tuple[str, ...] = ("read-only", "workspace-write", "full-access")

_PRESET_CHANGES: dict[str, dict[str, Any]] = {
    "read-only": {"workspace_writable": False},
    "workspace-write": {},
    "full-access": {
        "writable_roots": (Path("/"),),
        "git_writable": True,
        "hide_home": False,
        "hide_home_secrets": False,
        "private_tmp": False,
        "hide_run": False,
        "network": True,
    },
}


def policy_preset(name: str, **changes: Any) -> SandboxPolicy:
    """The named preset (`read-only`, `workspace-write`, `full-access`) with `changes` applied.

    - read-only: the workspace and the system can be read, nothing written but a private /tmp.
    - workspace-write: as read-only, but the workspace (not its git metadata) is writable.
    - full-access: every file the user can write, the network, $HOME and /tmp shared with the
      host; commands still get a scrubbed environment, limits and their own PID namespace.
    """
    if name not in _PRESET_CHANGES:
        raise UserError(
            f"Unknown sandbox policy {name!r}; choose one of: {', '.join(POLICY_PRESETS)}."
        )
    return replace(SandboxPolicy(name=name, **_PRESET_CHANGES[name]), **changes)


def home_dir() -> Path | None:
    """$HOME, resolved, or None when it is unset or the filesystem root."""
    value = os.environ.get("HOME")
    if not value:
        return None
    home = Path(value).resolve()
    return None if home == Path("/") else home


def sensitive_home_paths(workspace: Path, home: Path | None = None) -> tuple[Path, ...]:
    """The SENSITIVE_HOME_PATHS under `home` ($HOME) that exist and are not `workspace` or above it."""
    if home is None:
        home = home_dir()
        if home is None:
            return ()
    workspace = workspace.resolve()
    found = []
    for name in SENSITIVE_HOME_PATHS:
        path = home / name
        if not os.path.lexists(path):
            continue
        path = path.resolve()
        if workspace.is_relative_to(path):
            continue
        found.append(path)
    return tuple(found)


def sensitive_system_paths() -> tuple[Path, ...]:
    """The SENSITIVE_SYSTEM_GLOBS that exist here and this user can read (the others need no
    hiding)."""
    return tuple(
        Path(path)
        for pattern in SENSITIVE_SYSTEM_GLOBS
        for path in glob.glob(pattern)
        if os.access(path, os.R_OK)
    )


def hidden_paths(policy: SandboxPolicy, workspace: Path) -> tuple[Path, ...]:
    """Everything `policy` hides for a sandbox around `workspace`."""
    extra: tuple[Path, ...] = ()
    if policy.hide_home_secrets:
        extra = sensitive_home_paths(workspace) + sensitive_system_paths()
    return tuple(policy.hidden_paths) + extra


@dataclass(frozen=True)
class CommandResult:
    """What one command did."""

    command: str
    exit_code: int
    output: str
    duration_s: float
    truncated: bool = False
    timed_out: bool = False
    omitted_bytes: int = 0
    # Which limit stopped or hindered the command, when pullsmith can tell: "timeout",
    # "memory" (a process was killed for it), "processes" (a fork was refused) or
    # "cancelled" (the sandbox's cancel event was set: killed, or never started).
    limit_hit: str | None = None
    cancelled: bool = False


OutputCallback = Callable[[bytes], None]


class Sandbox(Protocol):
    """Runs shell commands with the workspace as the working directory.

    Every backend takes an optional `cancel` event (a `threading.Event`) when it is made: once
    it is set, the running command is killed and later ones do not start; their results say
    `cancelled`.
    """

    name: str
    workspace: Path

    def run(
        self,
        command: str,
        timeout_s: float | None = None,
        stdin: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run `command` with bash -c inside the sandbox and return what happened.

        `on_output`, if given, sees every chunk of output as it arrives (uncapped).
        """
        ...

    def close(self) -> None:
        """Release anything the sandbox holds (containers, processes)."""
        ...
