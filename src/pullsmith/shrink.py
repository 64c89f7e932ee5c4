"""Minimal diffs, decided by the tests: before the commit, drop what the visible tests did not need.

A small model that rewrites a whole file to fix one line often deletes a docstring or reformats
a neighbour on the way. After the agent finished and the tests pass, `shrink` splits the diff
of the worktree against the start commit into hunks (each run of changed lines, found line by
line, so a deleted docstring three lines above the fix is a hunk of its own), reverts them and
runs the tests again: a hunk whose revert keeps the tests passing was not needed and stays
reverted; one whose revert fails them (or errors, or times out) is put back. Suspicious hunks
(only deletions, only whitespace, only comments or docstrings, a deleted file) are tried all at
once first, then one at a time, then the others one at a time, smallest first; at most
`max_runs` test runs and `max_seconds` in all. Each accepted revert leaves the tree exactly as
the test run that accepted it saw it, so the last passing run tested what is committed.

Where the tests cannot decide (no test command, the tests did not pass after the change, or
they passed before it too), nothing is tried and the reason says so. Files git sees as binary,
symlinks and files that are not UTF-8 are never touched.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pullsmith.workspace import Workspace, git, git_bytes

# Hunk kinds whose revert is tried first, all together.
SUSPICIOUS = ("deletion", "whitespace", "comment", "deleted file")
HUNK_TEXT_CHARS = 1500
_DOCSTRING_QUOTES = ('"""', "'''", 'r"""', "r'''")
_COMMENT_PREFIXES = ("#", "//", "/*", "*", "--", ";", *_DOCSTRING_QUOTES)


class SuiteRun(Protocol):
    """One run of the tests (the attempt's TestRun)."""

    @property
    def exit_code(self) -> int: ...

    @property
    def timed_out(self) -> bool: ...

    @property
    def event_id(self) -> int: ...


@dataclass(frozen=True)
class Hunk:
    """One run of changed lines of one file: `old` lines at `old_start` of the start commit
    became `new` lines at `new_start` of the worktree (1-based; lines keep their endings)."""

    path: str
    number: int  # its position among the hunks of its file
    old_start: int
    old: tuple[str, ...]
    new_start: int
    new: tuple[str, ...]
    kind: str

    @property
    def suspicious(self) -> bool:
        return self.kind in SUSPICIOUS

    @property
    def size(self) -> int:
        return len(self.old) + len(self.new)

    def text(self, limit: int = HUNK_TEXT_CHARS) -> str:
        """The hunk as a unified diff without context (cut to `limit` characters)."""
        head = f"@@ -{self.old_start},{len(self.old)} +{self.new_start},{len(self.new)} @@"
        rows = [head]
        rows += ["-" + line.rstrip("\r\n") for line in self.old]
        rows += ["+" + line.rstrip("\r\n") for line in self.new]
        text = "\n".join(rows)
        return text if len(text) <= limit else text[: limit - 2].rstrip() + "\n…"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "old_start": self.old_start,
            "old_lines": len(self.old),
            "new_start": self.new_start,
            "new_lines": len(self.new),
            "diff": self.text(),
        }


@dataclass
class ChangedFile:
    """One changed text file: its lines at the start commit and now (None: not there)."""

    path: str
    base: list[str] | None
    final: list[str] | None
    hunks: list[Hunk] = field(default_factory=list)
    _opcodes: list[tuple[str, int, int, int, int]] = field(default_factory=list)

    @classmethod
    def compare(cls, path: str, base: str | None, final: str | None) -> ChangedFile:
        a = base.splitlines(keepends=True) if base is not None else None
        b = final.splitlines(keepends=True) if final is not None else None
        changed = cls(path, a, b)
        old, new = a or [], b or []
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        changed._opcodes = matcher.get_opcodes()
        for tag, i1, i2, j1, j2 in changed._opcodes:
            if tag == "equal":
                continue
            kind = _kind(old, new, i1, i2, j1, j2, base is None, final is None)
            changed.hunks.append(
                Hunk(
                    path=path,
                    number=len(changed.hunks),
                    old_start=i1 + 1 if i2 > i1 else i1,
                    old=tuple(old[i1:i2]),
                    new_start=j1 + 1 if j2 > j1 else j1,
                    new=tuple(new[j1:j2]),
                    kind=kind,
                )
            )
        return changed

    def render(self, kept: set[int]) -> str | None:
        """The file with only the hunks numbered in `kept` applied (None: it is not there)."""
        if self.base is None and not kept:
            return None
        if self.final is None and len(kept) == len(self.hunks):
            return None
        old, new = self.base or [], self.final or []
        out: list[str] = []
        number = 0
        for tag, i1, i2, j1, j2 in self._opcodes:
            if tag == "equal":
                out += old[i1:i2]
                continue
            out += new[j1:j2] if number in kept else old[i1:i2]
            number += 1
        return "".join(out)


def _kind(
    old: list[str], new: list[str], i1: int, i2: int, j1: int, j2: int, created: bool, deleted: bool
) -> str:
    removed, added = old[i1:i2], new[j1:j2]
    if created:
        return "new file"
    if deleted:
        return "deleted file"
    if "".join("".join(removed).split()) == "".join("".join(added).split()):
        return "whitespace"
    if _only_comments(old[:i1], removed) and _only_comments(new[:j1], added):
        return "comment"
    if not added:
        return "deletion"
    return "change"


def _only_comments(before: list[str], lines: list[str]) -> bool:
    """Whether every non-blank line of `lines` is a comment or part of a docstring (a string
    that starts before them, or that they open and close)."""
    text = [line.strip() for line in lines if line.strip()]
    if not text:
        return True
    quotes = sum(line.count('"""') + line.count("'''") for line in before)
    inside = quotes % 2 == 1
    own = sum(line.count('"""') + line.count("'''") for line in text)
    if inside and own == 0:
        return True
    if not inside and own and own % 2 == 0 and text[0].startswith(_DOCSTRING_QUOTES):
        return text[-1].endswith(('"""', "'''"))
    return all(line.startswith(_COMMENT_PREFIXES) for line in text)


@dataclass
class ShrinkResult:
    """What `shrink` did: "shrunk" (hunks were dropped), "unchanged" (every hunk tried was
    needed) or "skipped" (nothing was tried), and why."""

    status: str
    reason: str
    hunks: int = 0
    dropped: list[Hunk] = field(default_factory=list)
    untried: int = 0
    test_runs: int = 0
    seconds: float = 0.0
    test_events: list[int] = field(default_factory=list)
    # The last passing test run: it tested the tree as it is left.
    last_pass: Any = None

    def to_event(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "hunks": self.hunks,
            "dropped": [h.to_dict() for h in self.dropped],
            "kept": self.hunks - len(self.dropped),
            "untried": self.untried,
            "test_runs": self.test_runs,
            "seconds": round(self.seconds, 3),
            "test_events": self.test_events,
        }


def cannot_decide(test_command: str | None, before: Any, after: Any) -> str:
    """Why the tests can not tell which hunks are needed ("" when they can)."""
    if not test_command:
        return "there is no test command, so no test can tell which parts of the diff are needed"
    if after is None or after.exit_code != 0 or after.timed_out:
        return "the tests do not pass after the change, so they can not tell what it needs"
    if before is None:
        return "the tests did not run before the change"
    if before.exit_code == 0 and not before.timed_out:
        return (
            "the tests passed before the change too, so they can not tell which parts of it "
            "are needed"
        )
    return ""


def changed_files(workspace: Workspace) -> tuple[list[ChangedFile], int]:
    """The workspace's changed text files with their hunks, and how many changed files are
    left alone (binary, symlinks, submodules, not UTF-8)."""
    names = [path for path, _, _ in workspace.changed_files()]
    files: list[ChangedFile] = []
    skipped = 0
    for name in names:
        base = _base_text(workspace, name)
        final = _final_text(workspace.path / name)
        if base is False or final is False or (base is None and final is None):
            skipped += 1
            continue
        changed = ChangedFile.compare(name, base, final)  # type: ignore[arg-type]
        if changed.hunks:
            files.append(changed)
    return files, skipped


def _base_text(workspace: Workspace, name: str) -> str | None | bool:
    """The file at the start commit: its text, None when absent, False when not a text file."""
    entry = git("ls-tree", "-z", workspace.base_commit, "--", name, cwd=workspace.path)
    if not entry.strip("\0"):
        return None
    mode = entry.split(" ", 1)[0]
    if mode not in ("100644", "100755"):
        return False
    data = git_bytes("show", f"{workspace.base_commit}:{name}", cwd=workspace.path)
    return _text(data)


def _final_text(path: Path) -> str | None | bool:
    if path.is_symlink():
        return False
    if not path.exists():
        return None
    if not path.is_file():
        return False
    return _text(path.read_bytes())


def _text(data: bytes) -> str | bool:
    if b"\0" in data:
        return False
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return False


def _write(root: Path, changed: ChangedFile, kept: set[int]) -> None:
    content = changed.render(kept)
    path = root / changed.path
    if content is None:
        if path.exists():
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8"))


def trial_order(hunks: Sequence[Hunk]) -> list[list[Hunk]]:
    """The reverts to try, in order: every suspicious hunk at once (when they are not all the
    hunks), then each suspicious one, then each other one, smallest first. `shrink` skips a
    single whose group was already dropped."""
    suspicious = [h for h in hunks if h.suspicious]
    others = sorted((h for h in hunks if not h.suspicious), key=lambda h: (h.size, h.path))
    trials: list[list[Hunk]] = []
    if len(suspicious) > 1 and len(suspicious) < len(hunks):
        trials.append(suspicious)
    trials += [[h] for h in suspicious] + [[h] for h in others]
    return trials


def shrink(
    workspace: Workspace,
    run_tests: Callable[[], SuiteRun | None],
    *,
    max_runs: int = 8,
    max_seconds: float = 90.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> ShrinkResult:
    """Drop from the worktree each hunk whose revert keeps `run_tests` passing (see the module
    docstring). Call it only when the tests can decide (`cannot_decide` is "")."""
    started = time.monotonic()
    files, _ = changed_files(workspace)
    by_path = {f.path: f for f in files}
    hunks = [h for f in files for h in f.hunks]
    result = ShrinkResult(status="unchanged", reason="", hunks=len(hunks))
    if len(hunks) < 2:
        result.status = "skipped"
        result.reason = (
            "the diff is one hunk, and the tests fail without it"
            if hunks
            else "no text file changed"
        )
        return result
    kept: dict[str, set[int]] = {f.path: set(range(len(f.hunks))) for f in files}
    dropped: set[tuple[str, int]] = set()
    tried: set[tuple[str, int]] = set()
    for trial in trial_order(hunks):
        keys = {(h.path, h.number) for h in trial}
        if keys & dropped:
            continue
        if len(dropped) + len(keys) >= len(hunks):
            # Reverting everything is the start commit, whose tests fail: needed.
            tried |= keys
            continue
        if result.test_runs >= max_runs or time.monotonic() - started >= max_seconds:
            break
        if should_stop():
            break
        touched = {h.path for h in trial}
        for path in touched:
            _write(workspace.path, by_path[path], kept[path] - {n for p, n in keys if p == path})
        run = run_tests()
        result.test_runs += 1
        tried |= keys
        if run is not None:
            result.test_events.append(run.event_id)
        if run is not None and run.exit_code == 0 and not run.timed_out:
            for path, number in keys:
                kept[path].discard(number)
            dropped |= keys
            result.last_pass = run
        else:
            for path in touched:
                _write(workspace.path, by_path[path], kept[path])
    result.dropped = [h for h in hunks if (h.path, h.number) in dropped]
    result.untried = len([h for h in hunks if (h.path, h.number) not in tried])
    result.seconds = time.monotonic() - started
    if result.dropped:
        result.status = "shrunk"
        result.reason = (
            f"{len(result.dropped)} of {len(hunks)} hunks were not needed: the tests pass "
            "without them"
        )
    else:
        result.reason = (
            f"every hunk tried was needed: the tests fail without it ({len(hunks)} hunks)"
        )
    if result.untried:
        result.reason += (
            f"; {result.untried} not tried (at most {max_runs} test runs, {max_seconds:g} s)"
        )
    return result
