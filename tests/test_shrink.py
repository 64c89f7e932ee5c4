"""Minimal diffs, decided by the tests: hunks the visible tests do not need are dropped."""

from __future__ import annotations

import subprocess
import sys

from conftest import ScriptedModel, bwrap_works, git

from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.shrink import ChangedFile, cannot_decide, shrink, trial_order
from pullsmith.task import Task, TestRun
from pullsmith.workspace import Workspace

SANDBOX = "bwrap" if bwrap_works() else "none"
OLD_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
NEW_LOOP = "    for row in rows:\n        lines.append(format_row(row))\n"
FORMAT_DOC = '    """Join one row\'s values with the separator."""\n'
CSV_DOC = '    """Return the header and every row as CSV text, one line per row."""\n'


def export_path(repo):
    return repo / "inventory" / "export.py"


def sloppy_fix(repo) -> str:
    """The whole file rewritten: the loop fixed, two docstrings lost on the way."""
    text = export_path(repo).read_text()
    assert OLD_LOOP in text and FORMAT_DOC in text and CSV_DOC in text
    return text.replace(OLD_LOOP, NEW_LOOP).replace(FORMAT_DOC, "").replace(CSV_DOC, "")


def rewrite(text: str) -> str:
    return f"Rewrite the file.\n```bash\ncat > inventory/export.py <<'EOF'\n{text}EOF\n```"


FINISH = '```bash\nfinish "to_csv exports every row"\n```'


# --- hunks ---------------------------------------------------------------------------------


def test_hunks_are_runs_of_changed_lines_with_a_kind():
    base = 'def f():\n    """Doc."""\n    x = 1\n    return x + 1\n\nw = 0\nz = 3\ny = 2\n'
    final = "def f():\n    x = 1\n    return x\n\nz = 3\ny   =   2\n"
    changed = ChangedFile.compare("m.py", base, final)
    kinds = [h.kind for h in changed.hunks]
    assert kinds == ["comment", "change", "deletion", "whitespace"]
    assert changed.hunks[0].old_start == 2 and changed.hunks[0].text() == (
        '@@ -2,1 +1,0 @@\n-    """Doc."""'
    )
    # Any subset of hunks can be applied on its own.
    assert changed.render(set(range(4))) == final
    assert changed.render(set()) == base
    assert changed.render({1}) == base.replace("return x + 1", "return x")
    new = ChangedFile.compare("n.py", None, "a = 1\n")
    assert [h.kind for h in new.hunks] == ["new file"] and new.render(set()) is None
    gone = ChangedFile.compare("g.py", "a = 1\n", None)
    assert gone.hunks[0].suspicious and gone.render({0}) is None and gone.render(set()) == "a = 1\n"


def test_suspicious_hunks_are_tried_together_first():
    changed = ChangedFile.compare(
        "m.py", "a\n# one\nb\n# two\nc\nd\n", "a\nb\nc\nD\n"
    )  # two deleted comments and a change
    trials = trial_order(changed.hunks)
    assert [[h.kind for h in t] for t in trials] == [
        ["comment", "comment"],
        ["comment"],
        ["comment"],
        ["change"],
    ]


def test_the_tests_cannot_decide_without_a_failing_run_before():
    def run(code):
        return TestRun("after", "pytest", code, "", 1.0, False, 1)

    assert "no test command" in cannot_decide(None, run(1), run(0))
    assert "do not pass after" in cannot_decide("pytest", run(1), run(1))
    assert "passed before the change too" in cannot_decide("pytest", run(0), run(0))
    assert cannot_decide("pytest", run(1), run(0)) == ""


# --- shrinking a real worktree with real test runs -------------------------------------------


def workspace_with(example_repo, tmp_path, text):
    ws = Workspace.create(example_repo, "shrink-1", tmp_path / "worktrees")
    export_path(ws.path).write_text(text)
    return ws


def pytest_runner(ws):
    runs = []

    def run():
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=ws.path,
            capture_output=True,
            text=True,
        )
        runs.append(done.returncode)
        return TestRun("shrink", "pytest", done.returncode, done.stdout, 0.5, False, len(runs))

    return run, runs


def test_shrink_keeps_the_fix_and_drops_what_the_tests_do_not_need(example_repo, tmp_path):
    text = sloppy_fix(example_repo) + "\n\ndef unused_helper():\n    return 42\n"
    ws = workspace_with(example_repo, tmp_path, text)
    run, runs = pytest_runner(ws)
    result = shrink(ws, run)
    assert result.status == "shrunk", result.reason
    kinds = sorted(h.kind for h in result.dropped)
    assert kinds == ["change", "comment", "comment"]
    final = export_path(ws.path).read_text()
    assert NEW_LOOP in final and FORMAT_DOC in final and CSV_DOC in final
    assert "unused_helper" not in final
    # The two docstrings went in one run, then the fix and the helper one run each.
    assert result.test_runs == len(runs) == 3 and runs == [0, 1, 0]
    assert result.last_pass.event_id == 3  # the run that saw the tree as it is left
    assert ws.changed_files() == [("inventory/export.py", 2, 2)]


def test_shrink_stops_at_its_budget_and_says_what_it_did_not_try(example_repo, tmp_path):
    ws = workspace_with(example_repo, tmp_path, sloppy_fix(example_repo))
    run, runs = pytest_runner(ws)
    result = shrink(ws, run, max_runs=0)
    assert result.status == "unchanged" and result.untried == 3 and runs == []
    assert "not tried" in result.reason
    assert export_path(ws.path).read_text() == sloppy_fix(example_repo)


def test_a_needed_deletion_is_put_back(example_repo, tmp_path):
    # A second, wrong definition shadows the buggy one: the fix is the loop and the deletion.
    path = export_path(example_repo)
    original = path.read_text()
    path.write_text(original + "\n\ndef to_csv(header, rows):\n    return ''\n")
    git("commit", "-qam", "shadowed", cwd=example_repo)
    fixed = original.replace(OLD_LOOP, NEW_LOOP)
    ws = workspace_with(example_repo, tmp_path, fixed.replace(FORMAT_DOC, ""))
    run, runs = pytest_runner(ws)
    result = shrink(ws, run)
    # Both deletions at once fail; the docstring alone passes; the definition and the loop
    # are each needed.
    assert runs == [1, 0, 1, 1], result
    assert [h.kind for h in result.dropped] == ["comment"] and result.untried == 0
    assert export_path(ws.path).read_text() == fixed


# --- in an attempt ---------------------------------------------------------------------------


def run_with(repo, tmp_path, replies, instruction="The CSV export drops the last row; fix it."):
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    task = Task(instruction=instruction, repo=str(repo))
    result = run_task(task, settings, model=ScriptedModel(replies))
    events = read_events(run_dir_for(settings, result.task_id) / "events.jsonl")
    return result, events


def test_a_whole_file_rewrite_commits_the_fix_and_keeps_the_docstrings(example_repo, tmp_path):
    result, events = run_with(example_repo, tmp_path, [rewrite(sloppy_fix(example_repo)), FINISH])
    assert result.status == "passed", result.exit_reason
    committed = git("show", f"{result.branch}:inventory/export.py", cwd=example_repo)
    assert NEW_LOOP in committed and FORMAT_DOC in committed and CSV_DOC in committed
    shrunk = [e for e in events if e.type == "diff.shrunk"]
    assert len(shrunk) == 1
    data = shrunk[0].data
    assert data["status"] == "shrunk" and data["test_runs"] == 1 and data["hunks"] == 3
    assert [d["kind"] for d in data["dropped"]] == ["comment", "comment"]
    assert FORMAT_DOC.strip() in data["dropped"][0]["diff"]
    # The verdict is the run that tested the committed tree.
    assert result.tests_after.phase == "shrink" and result.tests_after.passed
    assert result.tests_after.event_id == data["test_events"][-1]
    message = git("log", "-1", "--format=%B", result.branch, cwd=example_repo)
    assert "Left out (the tests pass without it): inventory/export.py:7 (comment)" in message
    removed = [line for line in result.diff.splitlines() if line.startswith("-")]
    assert len(removed) == 3 and "separator" not in result.diff  # "--- a/..." and the loop
    assert data["untried"] == 0 and data["kept"] == 1


def test_when_the_tests_cannot_decide_the_diff_is_left_as_it_is(example_repo, tmp_path):
    # The tests pass before the change: they can not tell which part of it is needed.
    path = export_path(example_repo)
    path.write_text(path.read_text().replace(OLD_LOOP, NEW_LOOP))
    git("commit", "-qam", "fixed", cwd=example_repo)
    text = path.read_text().replace(FORMAT_DOC, "").replace('SEPARATOR = ","', "SEPARATOR = ','")
    result, events = run_with(
        example_repo,
        tmp_path,
        [rewrite(text), '```bash\nfinish "tidied export.py"\n```'],
        instruction="Tidy inventory/export.py.",
    )
    assert result.status == "passed"
    committed = git("show", f"{result.branch}:inventory/export.py", cwd=example_repo)
    assert committed == text
    (shrunk,) = [e for e in events if e.type == "diff.shrunk"]
    assert shrunk.data["status"] == "skipped" and shrunk.data["test_runs"] == 0
    assert "passed before the change too" in shrunk.data["reason"]
    assert [e.data["phase"] for e in events if e.type == "tests.ran"][-1] == "after"


def test_the_terminal_shows_what_was_left_out():
    from rich.console import Console

    from pullsmith.cli import TerminalView
    from pullsmith.events import DiffShrunk, Event, SummaryWritten

    console = Console(record=True, width=200)
    view = TerminalView(console)
    hunk = {"path": "a.py", "kind": "comment", "old_start": 7, "old_lines": 1}
    hunk |= {"new_start": 6, "new_lines": 0, "diff": "@@"}
    shrunk = DiffShrunk(status="shrunk", reason="", hunks=3, dropped=[hunk], test_runs=1)
    skipped = DiffShrunk(status="skipped", reason="the tests passed before the change too")
    written = SummaryWritten(source="diff", summary="Export every row\nmore")
    for n, payload in enumerate((shrunk, skipped, written)):
        view(Event(n, payload.type, "t", 0.0, payload.model_dump()))
    text = console.export_text()
    assert "left out 1 of 3 hunks the tests do not need (1 test run, 0.0 s)" in text
    assert "- a.py:7 (comment)" in text
    assert "nothing tried: the tests passed before the change too" in text
    assert "summary: Export every row (from the final diff)" in text
