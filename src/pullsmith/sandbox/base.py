"""The sandbox interface: run one shell command confined to a workspace."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Credentials and personal configuration under $HOME that a confined command has no reason to read.
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


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every command."""

    timeout_s: float = 120.0
    output_bytes: int = 64 * 1024
    memory_bytes: int = 4 * 1024**3
    processes: int = 512
    file_size_bytes: int = 1024**3
    cpu_seconds: int = 600


@dataclass(frozen=True)
class SandboxPolicy:
    """What a confined command may see and do; every backend takes one."""

    writable_roots: tuple[Path, ...] = ()
    read_only_roots: tuple[Path, ...] = ()
    hidden_paths: tuple[Path, ...] = ()
    # Also hide SENSITIVE_HOME_PATHS (those that exist and do not hold the workspace).
    hide_home_secrets: bool = True
    network: bool = False
    env_allowlist: tuple[str, ...] = (
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
    env_set: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


def sensitive_home_paths(workspace: Path, home: Path | None = None) -> tuple[Path, ...]:
    """The SENSITIVE_HOME_PATHS under `home` ($HOME) that exist and are not `workspace` or above it."""
    if home is None:
        home_env = os.environ.get("HOME")
        if not home_env:
            return ()
        home = Path(home_env)
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


def hidden_paths(policy: SandboxPolicy, workspace: Path) -> tuple[Path, ...]:
    """Everything `policy` hides for a sandbox around `workspace`."""
    extra = sensitive_home_paths(workspace) if policy.hide_home_secrets else ()
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


class Sandbox(Protocol):
    """Runs shell commands with the workspace as the working directory."""

    name: str
    workspace: Path

    def run(
        self, command: str, timeout_s: float | None = None, stdin: str | None = None
    ) -> CommandResult:
        """Run `command` with bash -c inside the sandbox and return what happened."""
        ...

    def close(self) -> None:
        """Release anything the sandbox holds (containers, processes)."""
        ...
