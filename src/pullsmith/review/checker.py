"""Checking a finding: run the model's demonstration command in the sandbox, on the change and
on its base, and say whether it showed the problem.

Both trees are exported from git into a temporary directory (a temporary index and
`checkout-index`; the user's working tree, index and refs are never touched) and removed when
the checker closes. Commands see them read-only (scratch files go to the sandbox's private
/tmp), so one demonstration can not leave anything for the next.

A finding is demonstrated when the command fails on the change and passes on the base: it
then shows something the change broke. A command that passes on the change shows nothing. One
that fails on both shows nothing the change did, unless the two failures differ: when the last
line of its output (the assertion's value, the exception) is not the same on the change as on
the base, the change altered what the code does for the command's input — the bundled model
often asserts a wrong expected value, but picks an input where the bug shows — and the finding
is marked "behaviour changed", a weaker level than demonstrated that cites both outputs. Where
the finding's file is new in the change, the base can not run it and a failure on the change
alone counts, unless the output says the command itself was broken (a syntax error, a missing
module or command).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
from pathlib import Path

from pullsmith.config import Settings
from pullsmith.review.diff import Change, export_tree, file_lines
from pullsmith.review.schema import Check, Demonstration, Finding, Run
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


def last_line(output: str) -> str:
    """The last non-blank line of a command's output."""
    rows = [row.strip() for row in output.splitlines() if row.strip()]
    return rows[-1] if rows else ""


def differs(head: Run, base: Run) -> str | None:
    """How the change's failed run ends differently from the base's, in words; None when they
    end alike or either shows a broken command."""
    if any(m in run.output for run in (head, base) for m in BROKEN_COMMAND):
        return None
    ends = [last_line(run.output) for run in (head, base)]
    if head.timed_out != base.timed_out:
        ends = [
            "(timed out)" if run.timed_out else end
            for run, end in zip((head, base), ends, strict=True)
        ]
    elif ends[0] == ends[1]:
        return None
    return f"the change ends with `{ends[0][:200]}`, the base with `{ends[1][:200]}`"


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
            # the two trees sit in different directories; the output names neither
            output=_tail(result.output.replace(str(self._root / side), "<tree>")),
            seconds=round(result.duration_s, 2),
            timed_out=result.timed_out,
        )

    def demonstrate(self, finding: Finding, command: str) -> Demonstration:
        """Run `command` for `finding` on the change and, when it fails there and the file is
        not new, on the base; the demonstration's reason is `decide`'s."""
        head = self.run("head", command)
        runs = [head]
        if not _passes(head) and file_lines(
            self.change.repo, self.change.base, finding.location.path
        ):
            runs.append(self.run("base", command))
        _, reason = decide(head, runs[1] if len(runs) > 1 else None)
        return Demonstration(command=command, runs=runs, reason=reason)

    def close(self) -> None:
        for sandbox in self._sandboxes.values():
            sandbox.close()
        self._sandboxes.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _passes(run: Run) -> bool:
    return run.exit_code == 0 and not run.timed_out


def decide(head: Run, base: Run | None) -> tuple[Check, str]:
    """What a command's run on the change (`head`) and on the base (`base`; None when it did
    not run there: it passed on the change, or the file is new) showed, and why in a sentence
    (the rules in the module docstring)."""
    if _passes(head):
        return "not demonstrated", "The command passes on the change."
    failed = "timed out" if head.timed_out else f"exits {head.exit_code}"
    if base is None:
        broken = next((m for m in BROKEN_COMMAND if m in head.output), None)
        if broken:
            return "not demonstrated", (
                f"The command {failed} on the change, but with '{broken}': the command itself "
                "is broken (the file is new, so there is no base to compare)."
            )
        return "demonstrated", (
            f"The command {failed} on the change; the file is new in it, so there is no base "
            "to run it on."
        )
    if _passes(base):
        return "demonstrated", f"The command {failed} on the change and passes on the base."
    changed = differs(head, base)
    if changed is not None:
        return "behaviour changed", (
            f"The command {failed} on both sides but differently, so the change alters what "
            f"the code does here: {changed}."
        )
    return "not demonstrated", (
        f"The command {failed} on the change and the same way on the base, so it does not "
        "show what the change did."
    )


def judge(demonstration: Demonstration) -> Check:
    """What a demonstration's runs showed (`decide` on them)."""
    runs = {run.tree: run for run in demonstration.runs}
    head = runs.get("head")
    if head is None:
        return "not demonstrated"
    return decide(head, runs.get("base"))[0]
