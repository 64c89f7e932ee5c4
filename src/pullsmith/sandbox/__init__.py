"""Sandboxes: run one shell command confined to a workspace (see base.py for the interface)."""

from __future__ import annotations

from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import CommandResult, Limits, Sandbox, SandboxPolicy
from pullsmith.sandbox.bwrap import BwrapSandbox, bwrap_available
from pullsmith.sandbox.none import NoSandbox

SANDBOX_NAMES: tuple[str, ...] = ("bwrap", "none")

__all__ = [
    "SANDBOX_NAMES",
    "BwrapSandbox",
    "NoSandbox",
    "bwrap_available",
    "CommandResult",
    "Limits",
    "Sandbox",
    "SandboxPolicy",
    "make_sandbox",
]


def make_sandbox(name: str, workspace: Path, policy: SandboxPolicy | None = None) -> Sandbox:
    """The sandbox backend called `name` around `workspace`; a UserError for an unknown name."""
    policy = policy or SandboxPolicy()
    if name == "bwrap":
        return BwrapSandbox(workspace, policy)
    if name == "none":
        return NoSandbox(workspace, policy)
    raise UserError(f"Unknown sandbox {name!r}; choose one of: {', '.join(SANDBOX_NAMES)}.")
