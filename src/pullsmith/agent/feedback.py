"""Edit feedback: after each command, tell the model what it changed and what the tests say;
before one, refuse a whole-file rewrite that would wreck the file.

A small model rarely notices on its own that a rewrite left a file as it was, and running the
tests after every edit saves it a turn each time. `ChangeReporter` is the agent's
after-command hook; it needs only the workspace's diff and a way to run the tests.

`RewriteGuard` is the agent's before-command check: asked to rewrite a long file whole, a
small model sends back a few lines of it (the rest would be deleted), or the prompt's
placeholder instead of the content. Refused before it runs, the file stays whole and the
model is told what to do instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pullsmith.agent.failures import hang_note
from pullsmith.agent.loop import clip
from pullsmith.agent.prompts import WHOLE_FILE_PLACEHOLDER
from pullsmith.events import EventLog
from pullsmith.sandbox.base import CommandResult
from pullsmith.tools.edit_forms import classify as classify_edits
from pullsmith.tools.edit_forms import whole_file_writes

EDIT_FEEDBACK_CHARS = 2000
# A whole-file rewrite of a file this long that keeps less than this share of its lines is
# refused: it deletes most of the file (a small model's rewrite of a long file is cut short).
LONG_FILE_LINES = 60
KEPT_SHARE = 1 / 3
# The commands that change a few lines of a file, as the prompt teaches them, best first.
PARTIAL_EDITS = {
    "replace-function": "replace_function",
    "search-replace": "search_replace",
    "apply-patch": "apply_patch",
}
WRITES_FILES = re.compile(
    r">|\bapply_patch\b|\breplace_function\b|\bsearch_replace\b|\bsed\s+-i|\btee\b|\bmv\b|\bcp\b|\brm\b|\bpatch\b"
)

# What the model is told to do once the tests pass, in the words of its protocol.
FINISH_HINTS = {
    "text": (
        "The tests pass now. If the task is done, reply with a ```bash block "
        'holding only: finish "one sentence saying what you changed"'
    ),
    "tools": (
        "The tests pass now. If the task is done, call the `finish` tool with one sentence "
        "saying what you changed."
    ),
}


class Changes(Protocol):
    """The workspace as the reporter sees it."""

    def diff(self) -> str: ...

    def changed_files(self) -> list[tuple[str, int, int]]: ...


class SuiteRun(Protocol):
    """One run of the tests (the runner's TestRun)."""

    @property
    def command(self) -> str: ...

    @property
    def exit_code(self) -> int: ...

    @property
    def output(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def timed_out(self) -> bool: ...


class ChangeReporter:
    """Tells the model what its last command changed, and what the tests say about it.

    `run_tests` runs the tests once and returns the run, or None when they cannot run; it is
    called after a command that changed the diff, unless the command ran the tests itself.
    """

    def __init__(
        self,
        workspace: Changes,
        events: EventLog,
        test_command: str | None,
        run_tests: Callable[[], SuiteRun | None],
        protocol: str = "text",
        test_limit: str = "",
    ) -> None:
        if protocol not in FINISH_HINTS:
            raise ValueError(f"protocol must be 'text' or 'tools', not {protocol!r}.")
        self.workspace = workspace
        self.events = events
        self.test_command = test_command
        self.run_tests = run_tests
        self.protocol = protocol
        # The limits of a test run in words, to say so when one hangs.
        self.test_limit = test_limit
        self.last_diff = workspace.diff()

    def __call__(self, command: str, result: CommandResult) -> str | None:
        for use in classify_edits(command, result.exit_code, result.output):
            self.events.emit("edit", form=use.form, ok=use.ok, detail=use.detail)
        diff = self.workspace.diff()
        if diff == self.last_diff:
            if WRITES_FILES.search(command):
                return (
                    "Note: every file is exactly as it was before this command; it changed nothing."
                )
            return None
        self.last_diff = diff
        changed = ", ".join(f"{p} (+{a} -{r})" for p, a, r in self.workspace.changed_files())
        note = f"Files changed so far: {changed or 'none (everything is back as it started)'}."
        if self.test_command and self.test_command not in command:
            run = self.run_tests()
            if run is not None:
                output = clip(run.output, EDIT_FEEDBACK_CHARS).rstrip()
                note += (
                    f"\nAfter this change `{run.command}` exits with code {run.exit_code}:"
                    f"\n```\n{output}\n```"
                )
                hung = hang_note(run.output, getattr(run, "timed_out", False), self.test_limit)
                if hung:
                    note += "\n" + hung
                if run.passed:
                    note += "\n" + FINISH_HINTS[self.protocol]
        return note


class RewriteGuard:
    """Says why a command must not run (a whole-file rewrite that would wreck the file), or
    None; `root` is the workspace on the host, `edit_forms` the forms the prompt teaches."""

    def __init__(self, root: Path, events: EventLog, edit_forms: Sequence[str] = ()) -> None:
        self.root = root.resolve()
        self.events = events
        partial = [PARTIAL_EDITS[form] for form in edit_forms if form in PARTIAL_EDITS]
        self.instead = f"`{partial[0]}`" if partial else "`sed -i` on the lines at fault"

    def __call__(self, command: str) -> str | None:
        for target, content in whole_file_writes(command):
            problem = self._problem(target, content)
            if problem:
                self.events.emit("edit", form="whole-file", ok=False, detail=f"refused: {problem}")
                return f"I did not run that command: {problem}"
        return None

    def _problem(self, target: str, content: str) -> str | None:
        if any(line.strip() == WHOLE_FILE_PLACEHOLDER for line in content.splitlines()):
            return (
                f"it would write the placeholder {WHOLE_FILE_PLACEHOLDER} into {target} "
                "instead of real content. Write out the lines the file should hold."
            )
        path = (self.root / target).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        try:
            old = len(path.read_text(errors="replace").splitlines())
        except OSError:
            return None
        new = len(content.splitlines())
        if old < LONG_FILE_LINES or new >= old * KEPT_SHARE:
            return None
        return (
            f"it would replace the {old} lines of {target} with {new}, deleting most of the "
            f"file. A file this long cannot be rewritten whole; change only the code at fault "
            f"with {self.instead}. (To delete many lines on purpose, use `sed -i` with their "
            "line numbers.)"
        )
