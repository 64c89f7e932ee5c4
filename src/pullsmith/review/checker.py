"""Checking a finding: run the model's demonstration command in the sandbox, on the change and
on its base, and say whether it showed the problem.

Both trees are exported from git into a temporary directory (a temporary index and
`checkout-index`; the user's working tree, index and refs are never touched) and removed when
the checker closes. Commands see them read-only (scratch files go to the sandbox's private
/tmp), so one demonstration can not leave anything for the next.

A finding is demonstrated when the command fails on the change and passes on the base: it
then shows something the change broke. A command that fails on both shows nothing about the
change; one that passes on the change shows nothing at all. Where the finding's file is new in
the change, the base can not run it and a failure on the change alone counts, unless the
output says the command itself was broken (a syntax error, a missing module or command).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.review.diff import Change, export_tree, file_lines
from pullsmith.review.schema import Demonstration, Finding, Run
from pullsmith.sandbox import Sandbox, agent_policy, make_sandbox

OUTPUT_LINES = 30
BROKEN_COMMAND = (
    "SyntaxError",
    "IndentationError",
    "command not found",
    "ModuleNotFoundError",
    "No such file or directory",
    "can't open file",
)


def _tail(text: str, lines: int = OUTPUT_LINES) -> str:
    rows = text.rstrip().splitlines()
    if len(rows) > lines:
        rows = [f"… {len(rows) - lines} lines above …", *rows[-lines:]]
    return "\n".join(rows)


class Checker:
    """The two trees of a change and a read-only sandbox around each."""

    def __init__(
        self,
        change: Change,
        settings: Settings,
        cancel: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.change = change
        self.settings = settings
        self.cancel = cancel
        self.timeout_s = timeout_s or min(settings.command_timeout_s, 60.0)
        self._root = Path(tempfile.mkdtemp(prefix="pullsmith-review-"))
        self._sandboxes: dict[str, Sandbox] = {}

    def _sandbox(self, side: str) -> Sandbox:
        if side not in self._sandboxes:
            tree = self._root / side
            export_tree(self.change.repo, getattr(self.change, side), tree)
            policy = agent_policy(self.settings)
            policy = dataclasses.replace(
                policy,
                name="read-only",
                workspace_writable=False,
                limits=dataclasses.replace(policy.limits, timeout_s=self.timeout_s),
            )
            self._sandboxes[side] = make_sandbox(
                self.settings.sandbox, tree, policy, cancel=self.cancel
            )
        return self._sandboxes[side]

    def run(self, side: str, command: str) -> Run:
        result = self._sandbox(side).run(command, timeout_s=self.timeout_s)
        return Run(
            tree=side,  # type: ignore[arg-type]
            exit_code=result.exit_code,
            output=_tail(result.output),
            seconds=round(result.duration_s, 2),
            timed_out=result.timed_out,
        )

    def demonstrate(self, finding: Finding, command: str) -> Demonstration:
        """Run `command` for `finding` and judge what it showed."""
        head = self.run("head", command)
        runs = [head]
        if head.exit_code == 0 and not head.timed_out:
            return Demonstration(
                command=command, runs=runs, reason="The command passes on the change."
            )
        failed = "timed out" if head.timed_out else f"exits {head.exit_code}"
        new_file = not file_lines(self.change.repo, self.change.base, finding.location.path)
        if new_file:
            broken = next((m for m in BROKEN_COMMAND if m in head.output), None)
            if broken:
                return Demonstration(
                    command=command,
                    runs=runs,
                    reason=f"The command {failed} on the change, but with '{broken}': the "
                    "command itself is broken (the file is new, so there is no base to compare).",
                )
            return Demonstration(
                command=command,
                runs=runs,
                reason=f"The command {failed} on the change; the file is new in it, so there "
                "is no base to run it on.",
            )
        base = self.run("base", command)
        runs.append(base)
        if base.exit_code == 0 and not base.timed_out:
            return Demonstration(
                command=command,
                runs=runs,
                reason=f"The command {failed} on the change and passes on the base.",
            )
        return Demonstration(
            command=command,
            runs=runs,
            reason=f"The command {failed} on the change but fails on the base too, so it "
            "does not show what the change did.",
        )

    def close(self) -> None:
        for sandbox in self._sandboxes.values():
            sandbox.close()
        self._sandboxes.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def is_demonstrated(demonstration: Demonstration) -> bool:
    """Whether a demonstration's runs showed the problem (the rule in the module docstring)."""
    runs = {run.tree: run for run in demonstration.runs}
    head = runs.get("head")
    if head is None or (head.exit_code == 0 and not head.timed_out):
        return False
    base = runs.get("base")
    if base is None:
        return not any(m in head.output for m in BROKEN_COMMAND)
    return base.exit_code == 0 and not base.timed_out
