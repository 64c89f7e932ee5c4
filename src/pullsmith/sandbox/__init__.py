"""Sandboxes: run one shell command confined to a workspace (see base.py for the interface).

Backends: `bwrap` (bwrap.py, the default), `docker` and `podman` (container.py) and `none`
(none.py, unconfined, only by name). Each takes a `SandboxPolicy`, usually one of the presets
of `policy_preset` (for the agent's commands, `agent_policy` in policy.py builds it from the
settings); limits.py and process.py give every backend the same timeouts, cancellation, output
cap and resource limits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from pullsmith.errors import UserError
from pullsmith.sandbox.base import (
    POLICY_PRESETS,
    CommandResult,
    Limits,
    Sandbox,
    SandboxPolicy,
    policy_preset,
)
from pullsmith.sandbox.bwrap import BwrapSandbox, bwrap_available
from pullsmith.sandbox.container import DEFAULT_IMAGE, ContainerSandbox, engine_error
from pullsmith.sandbox.limits import describe as describe_limits
from pullsmith.sandbox.none import NoSandbox
from pullsmith.sandbox.policy import agent_policy

SANDBOX_NAMES: tuple[str, ...] = ("bwrap", "docker", "podman", "none")

__all__ = [
    "DEFAULT_IMAGE",
    "POLICY_PRESETS",
    "SANDBOX_NAMES",
    "BwrapSandbox",
    "CommandResult",
    "ContainerSandbox",
    "Limits",
    "NoSandbox",
    "Sandbox",
    "SandboxPolicy",
    "agent_policy",
    "bwrap_available",
    "describe",
    "engine_error",
    "long_lived_process",
    "make_sandbox",
    "policy_preset",
]


def make_sandbox(
    name: str,
    workspace: Path,
    policy: SandboxPolicy | None = None,
    *,
    image: str = DEFAULT_IMAGE,
    cancel: threading.Event | None = None,
) -> Sandbox:
    """The sandbox backend called `name` around `workspace`; a UserError for an unknown name.

    `image` is the container image for `docker` and `podman`. Once `cancel` is set, the
    command running is killed and no further one starts (see `run_process`).
    """
    policy = policy or SandboxPolicy()
    if name == "bwrap":
        return BwrapSandbox(workspace, policy, cancel=cancel)
    if name in ("docker", "podman"):
        return ContainerSandbox(workspace, policy, engine=name, image=image, cancel=cancel)
    if name == "none":
        return NoSandbox(workspace, policy, cancel=cancel)
    raise UserError(f"Unknown sandbox {name!r}; choose one of: {', '.join(SANDBOX_NAMES)}.")


def long_lived_process(
    sandbox: Sandbox,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    visible: Sequence[Path] = (),
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run `argv` as a long-lived process (an MCP server) under
    `sandbox`'s policy, seeing `visible` read-only besides; the caller spawns it with its
    working directory set to `cwd` (default: the workspace). See
    `BwrapSandbox.long_lived_argv` for what bwrap leaves out.

    `none` gives `argv` as it is, with the scrubbed environment plus `env`; docker and podman
    refuse with a UserError (a container per server is not built).
    """
    if isinstance(sandbox, BwrapSandbox):
        return sandbox.long_lived_argv(argv, env, cwd, visible)
    if isinstance(sandbox, NoSandbox):
        return list(argv), {**sandbox.env, **(env or {})}
    raise UserError(
        f"the {sandbox.name} sandbox can not run a long-lived process such as an MCP server; "
        "mark the server trusted = true in its [mcp_servers.NAME] table, or use --sandbox bwrap."
    )


def describe(name: str, policy: SandboxPolicy) -> list[str]:
    """What a command run by backend `name` under `policy` can reach, in a few lines for people."""
    if name == "none":
        return [
            "backend none: unconfined; every file and the network your user can reach, and "
            f"only the limits: {describe_limits(policy.limits)}"
        ]
    full = Path("/") in policy.writable_roots
    if full:
        files = "every file your user can write is writable"
    else:
        workspace = "writable" if policy.workspace_writable else "read-only"
        git = "" if policy.git_writable or not policy.workspace_writable else " (not its git)"
        files = f"system read-only; workspace {workspace}{git}"
    if name in ("docker", "podman"):
        files += "; nothing of the host but the workspace is mounted"
    else:
        if policy.hide_home:
            files += f"; $HOME hidden but {', '.join(policy.home_visible)}"
        if policy.hide_home_secrets:
            files += "; credentials hidden"
        if policy.private_tmp:
            files += "; private /tmp"
        if policy.hide_run:
            files += "; /run hidden"
    network = "on" if policy.network else "off (a loopback of its own only)"
    return [
        f"backend {name}, policy {policy.name}: {files}",
        f"network {network}; environment: {', '.join(policy.env_allowlist)} and {len(policy.env_set)} set",
        f"limits: {describe_limits(policy.limits)}",
    ]
