"""The `none` backend: commands run unconfined, with only the timeout, output cap, resource
limits (and cgroup, where there is one) and environment scrubbing that every backend applies.

It ignores the policy's filesystem and network rules: the command can read and write anything
the user can, and reach the network. It is only ever chosen by name, and warns every time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pullsmith.sandbox.base import CommandResult, OutputCallback, SandboxPolicy
from pullsmith.sandbox.process import require_workspace, run_process, sandbox_env


class NoSandbox:
    """Runs commands directly on this machine, in the workspace."""

    name = "none"
    warning = (
        "--sandbox none: commands run unconfined, with your user's access to every file and the "
        "network; use it only for repositories and models you trust."
    )

    def __init__(
        self,
        workspace: Path,
        policy: SandboxPolicy | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.workspace = require_workspace(workspace)
        self.policy = policy or SandboxPolicy()
        self.cancel = cancel
        self.env = sandbox_env(self.policy)

    def run(
        self,
        command: str,
        timeout_s: float | None = None,
        stdin: str | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run `command` with bash -c in the workspace and return what happened."""
        return run_process(
            ["bash", "-c", command],
            command=command,
            cwd=self.workspace,
            env=self.env,
            limits=self.policy.limits,
            timeout_s=timeout_s,
            stdin=stdin,
            on_output=on_output,
            cancel=self.cancel,
        )

    def close(self) -> None:
        """Nothing to release: each command's process group is gone when it returns."""
