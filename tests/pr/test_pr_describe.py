"""The description: made from what ran, every claim cited, the model's words marked as such."""

from __future__ import annotations

from pullsmith.events import Event
from pullsmith.pr.describe import (
    BODY_LIMIT,
    FileChange,
    PullRequestFacts,
    code,
    describe,
    fenced,
    title_for,
    verdict,
)
from pullsmith.pr.evidence import excerpt, looks_like_test_run, run_evidence, short_command
from pullsmith.store import AttemptRecord


def run_record(event, exit_code, output="", command="python -m pytest -q", **extra):
    return {
        "event": event,
        "command": command,
        "exit_code": exit_code,
        "seconds": 0.5,
        "timed_out": False,
        "excerpt": output,
        **extra,
    }


def attempt(run_id="r1", kind="task", commit="c" * 40, start="b" * 40, **fields):
    values = {
        "run_id": run_id,
        "task_id": "t1",
        "kind": kind,
        "instruction": "fix the export",
        "status": "passed",
        "exit_reason": "finished",
        "summary": "fixed it",
        "branch": "pullsmith/t1",
        "start_commit": start,
        "commit": commit,
        "test_command": "python -m pytest -q",
        "tests_before": run_record(4, 1, "1 failed"),
        "tests_after": run_record(20, 0, "3 passed in 0.01s"),
        "checks": [],
        "agent_tests": [],
        "notes": {"limits": [], "finish_rejected": [], "format_errors": 0, "errors": []},
        "turns": 3,
        "prompt_tokens": 300,
        "completion_tokens": 30,
        "model": "scripted",
        "run_dir": "/data/runs/" + run_id,
    }
    values.update(fields)
    return AttemptRecord(**values)


def facts(*attempts, head=None, **extra):
    values = {
        "instruction": "fix the export",
        "head": "pullsmith/t1",
        "base": "main",
        "base_commit": "b" * 40,
        "head_commit": head or attempts[-1].head_commit,
        "attempts": list(attempts),
        "changes": [FileChange("inventory/export.py", 2, 2)],
        "task_id": "t1",
    }
    values.update(extra)
    return PullRequestFacts(**values)


# --- evidence from the run log -----------------------------------------------------------


def ev(id, type, **data):
    return Event(id=id, type=type, task_id="r1", ts=0.0, data=data)


def test_evidence_is_read_from_the_log_with_event_ids():
    events = [
        ev(1, "task.started"),
        ev(2, "tests.ran", phase="before", command="pytest -q", exit_code=1, output="1 failed"),
        ev(3, "command.finished", turn=1, command="cat x.py", exit_code=0, output="..."),
        ev(4, "command.finished", turn=2, command="python -m pytest -q", exit_code=1, output="F"),
        ev(
            5,
            "command.finished",
            turn=3,
            command="cat > t.py <<'EOF'\nimport pytest\nEOF",
            exit_code=0,
            output="",
        ),
        ev(6, "tests.ran", phase="check", command="pytest -q", exit_code=1, output="1 failed"),
        ev(7, "finish.rejected", turn=3, reason="still fails"),
        ev(8, "tests.ran", phase="check", command="pytest -q", exit_code=0, output="ok"),
        ev(9, "limit.reached", turn=9, reason="turn limit reached (9 turns)"),
        ev(10, "tests.ran", phase="after", command="pytest -q", exit_code=0, output="3 passed"),
    ]
    found = run_evidence(events, "pytest -q")
    assert found["tests_before"]["event"] == 2 and found["tests_before"]["exit_code"] == 1
    assert found["tests_after"]["event"] == 10 and found["tests_after"]["exit_code"] == 0
    assert [run["event"] for run in found["agent_tests"]] == [4]
    assert [(c["event"], c["sent_back"]) for c in found["checks"]] == [(6, True), (8, False)]
    assert found["notes"]["limits"] == [{"event": 9, "reason": "turn limit reached (9 turns)"}]
    assert found["notes"]["finish_rejected"] == [{"event": 7, "turn": 3}]


def test_test_runs_are_told_from_other_commands():
    for command in (
        "python -m pytest -q",
        "pytest tests/test_x.py -k row",
        "cd sub && npm test",
        "PYTHONPATH=. python3 -m unittest discover",
        "timeout 60 go test ./...",
        "make test",
        "cargo test --all",
        "uv run pytest",
        "python tests/test_export.py",
    ):
        assert looks_like_test_run(command), command
    for command in (
        "cat tests/test_export.py",
        "grep -rn pytest .",
        "pip install pytest",
        "cat > conftest.py <<'EOF'\nimport pytest\npytest.main()\nEOF",
        "apply_patch <<'EOF'\n*** Update File: Makefile\n+test:\n+\tpytest\nEOF",
    ):
        assert not looks_like_test_run(command), command
    assert looks_like_test_run("./run-checks.sh --fast", "./run-checks.sh --fast")


def test_excerpt_keeps_failures_and_the_summary_of_long_output():
    lines = [f"line {i}" for i in range(200)]
    lines[50] = "FAILED tests/test_x.py::test_y - AssertionError"
    lines[-1] = "1 failed, 99 passed in 1.0s"
    text = excerpt("\n".join(lines), passed=False)
    assert "FAILED tests/test_x.py::test_y" in text
    assert text.rstrip().endswith("1 failed, 99 passed in 1.0s")
    assert "lines left out" in text and len(text.splitlines()) < 45
    assert excerpt("\x1b[32m3 passed\x1b[0m", passed=True) == "3 passed"
    passing = excerpt("\n".join(f"ok {i}" for i in range(100)), passed=True)
    assert passing.splitlines()[-1] == "ok 99" and "70 lines left out" in passing


def test_short_command_is_one_line():
    assert short_command("cat > a <<'EOF'\nx\nEOF") == "cat > a <<'EOF' …"
    assert len(short_command("x" * 500)) == 160


# --- Markdown ----------------------------------------------------------------------------


def test_code_spans_and_fences_survive_what_they_hold():
    assert code("a|b") == "`a\\|b`"
    assert code("echo `date`") == "`` echo `date` ``"
    block = fenced("```\ninner\n```")
    assert block.startswith("````text\n") and block.endswith("\n````")
    assert title_for("  \nFix it\nmore") == "Fix it"
    assert len(title_for("x" * 200)) == 72
    # A long first line: the sentences that fit, or the words that fit (never half a word).
    assert title_for("Fix the CSV export of the ledger. " + "Then do more. " * 9) == (
        "Fix the CSV export of the ledger. Then do more. Then do more."
    )
    title = title_for("Make the CSV export write the last row of every ledger, including " * 2)
    assert title.endswith("ledger,…") is False and title.endswith("…") and len(title) <= 72
    assert title[:-1].split()[-1] in "Make the CSV export write the last row of every ledger,"


# --- the verdict and the body ------------------------------------------------------------


def test_a_passing_run_says_so_and_cites_its_events():
    body = describe(facts(attempt())).body
    assert body.startswith("> [!NOTE]\n> **Tests pass.**")
    assert "`python -m pytest -q` exited with code 0 (run `r1`, event #20)" in body
    assert "*In the model's own words" in body and "> fixed it" in body
    assert "| `inventory/export.py` | 2 | 2 |" in body
    assert "3 passed in 0.01s" in body
    assert "| #4 | before the agent started | `python -m pytest -q` | 1 |" in body
    assert "Nothing: the model finished within its limits and the tests pass." in body


def test_failing_tests_win_over_the_models_claim():
    failed = attempt(
        status="failed",
        summary="All tests pass now; the bug is fixed.",
        tests_after=run_record(20, 1, "FAILED test_x\n1 failed, 2 passed"),
    )
    description = describe(facts(failed))
    assert description.checks == "failing"
    assert description.body.startswith("> [!CAUTION]\n> **Tests fail.**")
    assert "exited with code 1 (run `r1`, event #20)" in description.body
    assert "**Left undone:** the tests still fail (run `r1`, event #20)" in description.body
    assert "> All tests pass now; the bug is fixed." in description.body


def test_no_test_command_is_stated_plainly():
    untested = attempt(test_command=None, tests_before=None, tests_after=None, status="untested")
    description = describe(facts(untested))
    assert description.checks == "untested"
    assert "**Not tested.**" in description.body
    assert "No test command was found" in description.body


def test_limits_and_rejected_finishes_are_listed():
    stopped = attempt(
        status="failed",
        exit_reason="turn limit reached (5 turns)",
        summary="",
        tests_after=run_record(30, 1, "1 failed"),
        notes={
            "limits": [{"event": 28, "reason": "turn limit reached (5 turns)"}],
            "finish_rejected": [{"event": 12, "turn": 3}],
            "format_errors": 2,
            "errors": [],
        },
    )
    body = describe(facts(stopped)).body
    assert "stopped at a limit: turn limit reached (5 turns) (run `r1`, event #28)" in body
    assert "said it was done while the tests failed, once (run `r1`, events #12)" in body
    assert "2 malformed model replies" in body
    assert "The model gave no summary" in body


def test_newest_run_first_and_its_verdict_decides():
    first = attempt(run_id="r1", tests_after=run_record(20, 1, "1 failed"), status="failed")
    second = attempt(
        run_id="r2",
        kind="follow-up",
        instruction="also handle empty input",
        start="c" * 40,
        commit="d" * 40,
        tests_after=run_record(15, 0, "4 passed"),
        summary="handles empty input",
    )
    description = describe(facts(first, second))
    assert description.checks == "passing"
    body = description.body
    assert "### Run 2 of 2 — follow-up, `r2`" in body
    assert body.index("### Run 2 of 2") < body.index("### Run 1 of 2")
    assert "1. also handle empty input (run `r2`)" in body
    assert body.index("run `r2`:") < body.index("run `r1`:")  # summaries, newest first


def test_a_follow_up_that_changed_nothing_leaves_the_verdict():
    first = attempt(run_id="r1", tests_after=run_record(20, 1, "1 failed"), status="failed")
    idle = attempt(
        run_id="r2",
        kind="follow-up",
        start="c" * 40,
        commit=None,
        status="error",
        error="the model server stopped answering",
        tests_after=None,
        tests_before=None,
    )
    assert verdict([first, idle], "c" * 40).checks == "failing"
    body = describe(facts(first, idle, head="c" * 40)).body
    assert "made no change to the branch" in body


def test_an_error_after_a_commit_leaves_the_head_untested():
    broken = attempt(status="error", error="model unreachable", tests_after=None)
    description = describe(facts(broken))
    assert description.checks == "error"
    assert "ended in an error before pullsmith could test" in description.body


def test_commits_after_the_last_run_make_the_evidence_stale():
    description = describe(facts(attempt(), head="e" * 40))
    assert description.checks == "untested"
    assert "**Not tested as it is now.**" in description.body


def test_huge_evidence_still_fits_githubs_limit():
    runs = [
        attempt(
            run_id=f"r{i}",
            kind="task" if i == 0 else "follow-up",
            tests_after=run_record(20, 1, "\n".join("E" * 200 for _ in range(30))),
            agent_tests=[run_record(n, 1, command="pytest " + "x" * 150) for n in range(60)],
            status="failed",
        )
        for i in range(12)
    ]
    body = describe(facts(*runs)).body
    assert len(body) <= BODY_LIMIT
    assert "### Run 12 of 12" in body


def test_direct_repair_is_cited_whether_a_rewrite_passed_or_none_did():
    notes = {"limits": [], "finish_rejected": [], "format_errors": 0, "errors": []}
    tries = [
        {"event": 6, "path": "a.py", "function": "load", "outcome": "unchanged"},
        {"event": 9, "path": "b.py", "function": "Box.area", "outcome": "passed", "test_event": 8},
    ]
    repaired = attempt(exit_reason="repaired", summary="", notes={**notes, "repair": tries})
    body = describe(facts(repaired)).body
    assert "**Direct repair:**" in body and "2 functions" in body
    assert "events #6–#9" in body and "`Box.area` in `b.py` (tests event #8)" in body
    assert "stopped: repaired" not in body
    failed = attempt(
        status="failed",
        tests_after=run_record(30, 1, "1 failed"),
        notes={**notes, "repair": [{**tries[0], "outcome": "failed"}]},
    )
    body = describe(facts(failed)).body
    assert "no rewrite made the tests pass" in body and "`load`: failed" in body
    # A function asked again in a later round is one function, its outcomes in order.
    again = [
        {**tries[0], "outcome": "unchanged"},
        {**tries[0], "event": 12, "outcome": "failed", "sample": 2},
        {**tries[0], "event": 15, "outcome": "repeated", "sample": 3},
    ]
    body = describe(facts(attempt(status="failed", notes={**notes, "repair": again}))).body
    assert "1 function (3 asks)" in body and "events #6–#15" in body
    assert "`load`: unchanged, failed, repeated" in body


def test_one_hunk_left_out_is_said_in_the_singular():
    shrink = {
        "status": "shrunk",
        "event": 20,
        "test_runs": 1,
        "seconds": 0.3,
        "dropped": [{"path": "inventory/export.py", "old_start": 12, "kind": "comment"}],
    }
    body = describe(facts(attempt(notes={"shrink": shrink}))).body
    assert "**Left out by pullsmith:** 1 hunk of the model's change" in body
    assert "(they pass without it) was reverted before the commit" in body
