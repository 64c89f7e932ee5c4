"""Best-of-N with --until-pass: a later attempt is told what the earlier ones changed and that
the tests still failed, after the first message the model server has cached; an attempt whose
final diff is an earlier one's is marked."""

from __future__ import annotations

import json

from conftest import ScriptedModel, bwrap_works

from pullsmith.agent.prompts import retry_message
from pullsmith.attempt import run_dir_for
from pullsmith.best_of_n import compact_diff, repeated_diff
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.eval.report import _attempt_lines, _attempt_totals
from pullsmith.events import read_events
from pullsmith.task import AttemptResult, EarlierAttempt, KnownBefore, Retry, Task, TestRun

SANDBOX = "bwrap" if bwrap_works() else "none"
TEST_ID = "tests/test_export.py::test_csv_has_every_row"


def sed(new: str) -> str:
    return f"sed -i 's/range(len(rows) - 1)/{new}/' inventory/export.py"


WRONG = sed("range(1, len(rows))")  # now it drops the first row instead
OTHER_WRONG = sed("range(len(rows) - 2)")
RIGHT = sed("range(len(rows))")


def bash(command: str) -> str:
    return f"Try this.\n```bash\n{command}\n```"


def shell(command: str, n: int) -> dict:
    arguments = json.dumps({"command": command})
    return {"tool_calls": [{"id": f"call_{n}", "name": "shell", "arguments": arguments}]}


def run_attempts(repo, tmp_path, replies, attempts=2, until_pass=True, **extra):
    # One turn an attempt: its edit, then the turn limit; pullsmith's test run decides.
    settings = load_settings({"sandbox": SANDBOX, "max_turns": 1, **extra}, cwd=tmp_path)
    task = Task(
        instruction="The CSV export drops the last row; fix it.",
        repo=str(repo),
        attempts=attempts,
        until_pass=until_pass,
    )
    model = ScriptedModel(replies)
    result = run_task(task, settings, model=model)
    assert not model.replies
    return result, model, settings, task


def test_the_next_attempt_is_told_what_the_last_one_changed_after_the_same_prefix(
    example_repo, tmp_path
):
    result, model, _, _ = run_attempts(example_repo, tmp_path, [bash(WRONG), bash(RIGHT)])
    assert result.attempt == 2 and result.tests_pass
    first, second = model.seen[0], model.seen[1]
    # The same system prompt and the same first message, verbatim, then the account: the
    # model server serves the whole first request of attempt 1 from its cache.
    assert [m["role"] for m in second] == ["system", "user"]
    assert second[0] == first[0]
    told = second[1]["content"]
    assert told.startswith(first[1]["content"])
    account = told[len(first[1]["content"]) :]
    assert "Attempt 1 changed:\n```diff\n--- a/inventory/export.py" in account
    assert "-    for i in range(len(rows) - 1):" in account
    assert "+    for i in range(1, len(rows)):" in account
    assert "lines.append(format_row(rows[i]))" not in account  # context is left out
    assert f"After it the tests still failed (`python -m pytest -q`): {TEST_ID}." in account
    assert "First error: " in account
    assert "Do not make the same change again" in account
    assert account.endswith("Reply with one ```bash block.")
    assert result.attempts[1]["repeats_attempt"] is None


def test_under_the_tools_protocol_the_account_ends_the_first_user_message(example_repo, tmp_path):
    replies = [shell(WRONG, 1), shell(RIGHT, 2)]
    result, model, _, _ = run_attempts(example_repo, tmp_path, replies, protocol="tools")
    assert result.attempt == 2 and result.tests_pass
    first, second = model.seen[0], model.seen[1]
    assert [m["role"] for m in second] == ["system", "user"]
    assert second[0] == first[0] and model.tools[1] == model.tools[0]
    assert second[1]["content"].startswith(first[1]["content"])
    assert "Attempt 1 changed:" in second[1]["content"]
    assert second[1]["content"].endswith("Call the `shell` tool with your first command.")


def test_an_attempt_that_repeats_an_earlier_diff_is_marked(example_repo, tmp_path):
    replies = [bash(WRONG), bash(WRONG), bash(OTHER_WRONG)]
    result, model, settings, task = run_attempts(example_repo, tmp_path, replies, attempts=3)
    assert [a["tests_pass"] for a in result.attempts] == [False, False, False]
    assert [a["repeats_attempt"] for a in result.attempts] == [None, 1, None]
    log = read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    scored = [e.data.get("repeats_attempt") for e in log if e.type == "attempt.scored"]
    assert scored == [None, 1, None]
    # Attempt 3 hears of both, oldest first; its message begins with attempt 2's up to the
    # end of attempt 1's account (the closing lines come after every account).
    second, third = model.seen[1][1]["content"], model.seen[2][1]["content"]
    assert third.index("Attempt 1 changed:") < third.index("Attempt 2 changed:")
    end_of_first_account = second.index("\n\nThose changes did not fix the task.")
    assert third.startswith(second[:end_of_first_account])


def test_the_first_attempt_and_independent_attempts_are_told_nothing(example_repo, tmp_path):
    result, model, _, _ = run_attempts(
        example_repo, tmp_path, [bash(WRONG), bash(WRONG)], until_pass=False
    )
    assert len(result.attempts) == 2
    for seen in model.seen:
        assert "Earlier attempts" not in seen[1]["content"]
        assert seen[1]["content"].endswith("Reply with one ```bash block.")
    # Without --until-pass the attempts stay independent; the repeat is still recorded.
    assert result.attempts[1]["repeats_attempt"] == 1


def test_with_retry_account_off_every_attempt_gets_the_same_first_message(example_repo, tmp_path):
    result, model, _, _ = run_attempts(
        example_repo, tmp_path, [bash(WRONG), bash(RIGHT)], retry_account=False
    )
    assert result.attempt == 2 and result.tests_pass
    # Attempt 1's test run before any change stands for attempt 2's: the same first message.
    assert model.seen[0][:2] == model.seen[1][:2]
    for seen in model.seen:
        assert "Attempt 1 changed:" not in seen[1]["content"]
        assert "Earlier attempts" not in seen[1]["content"]
        assert seen[1]["content"].endswith("Reply with one ```bash block.")


def test_the_tests_before_any_change_run_once_for_all_attempts(example_repo, tmp_path):
    replies = [bash(WRONG), bash(OTHER_WRONG), bash(RIGHT)]
    result, _, settings, task = run_attempts(example_repo, tmp_path, replies, attempts=3)
    assert result.attempt == 3 and result.tests_pass
    log = read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    started = [e for e in log if e.type == "tests.started" and e.data["phase"] == "before"]
    ran = [e for e in log if e.type == "tests.ran" and e.data["phase"] == "before"]
    assert [e.data["attempt"] for e in started] == [1]
    assert [(e.data["attempt"], e.data.get("from_attempt")) for e in ran] == [
        (1, None),
        (2, 1),
        (3, 1),
    ]
    first, *later = ran
    assert first.data["exit_code"] == 1 and first.data["seconds"] > 0
    for event in later:
        assert event.data["seconds"] == 0.0 and event.data["output"] == first.data["output"]
        assert event.data["cpu_seconds"] == first.data["cpu_seconds"]
    # The chosen attempt's result holds the run, with the id of its own log's event.
    own = read_events(run_dir_for(settings, f"{task.task_id}-3") / "events.jsonl")
    (mine,) = [e for e in own if e.type == "tests.ran" and e.data["phase"] == "before"]
    assert result.tests_before.event_id == mine.id and result.tests_before.exit_code == 1


def test_a_known_run_before_crosses_process_boundaries_with_the_task():
    run = TestRun("before", "pytest -q", 1, "1 failed", 2.5, False, 7, cpu_seconds=1.25)
    task = Task(instruction="x", known_before=KnownBefore(1, "abc123", run))
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task and again.known_before.run.cpu_seconds == 1.25


def test_a_single_attempt_is_told_nothing(example_repo, tmp_path):
    result, model, _, _ = run_attempts(example_repo, tmp_path, [bash(WRONG)], attempts=1)
    assert result.repeats_attempt is None and not result.attempts
    assert "Earlier attempts" not in model.seen[0][1]["content"]
    assert retry_message("first", (), "close") == "first"


def test_the_retry_crosses_process_boundaries_with_the_task():
    retry = Retry("the first message", (EarlierAttempt(1, "+x", "pytest", ("t::a",), "E"),))
    task = Task(instruction="x", attempts=1, retry=retry)
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task and again.retry == retry


DIFF = """\
diff --git a/inventory/export.py b/inventory/export.py
index 1111111..2222222 100644
--- a/inventory/export.py
+++ b/inventory/export.py
@@ -5,7 +5,7 @@ def to_csv(header, rows):
     lines = [format_row(header)]
-    for i in range(len(rows) - 1):
+    for i in range(len(rows)):
         lines.append(format_row(rows[i]))
     return "\\n".join(lines)
"""


def test_the_diff_is_compacted_to_its_changed_hunks_and_capped():
    assert compact_diff(DIFF) == (
        "--- a/inventory/export.py\n+++ b/inventory/export.py\n"
        "@@ -5,7 +5,7 @@ def to_csv(header, rows):\n"
        "-    for i in range(len(rows) - 1):\n+    for i in range(len(rows)):"
    )
    long = DIFF + "".join(f"+line {n}\n" for n in range(500))
    cut = compact_diff(long, limit=300)
    assert len(cut) < 400 and cut.endswith("more lines of the diff left out ...]")


def test_only_a_non_empty_identical_diff_is_a_repeat():
    def result(attempt: int, diff: str) -> AttemptResult:
        return AttemptResult("t", "failed", "", "x", "/r", diff=diff, attempt=attempt)

    earlier = [result(1, ""), result(2, DIFF)]
    assert repeated_diff(result(3, DIFF), earlier) == 2
    assert repeated_diff(result(3, ""), earlier) is None
    assert repeated_diff(result(3, DIFF + "+more\n"), earlier) is None


def test_the_eval_report_counts_repeated_diffs():
    rows = [
        {
            "resolved": False,
            "attempt": 1,
            "attempt_results": [
                {"attempt": 1, "resolved": False, "repeats_attempt": None},
                {"attempt": 2, "resolved": False, "repeats_attempt": 1},
                {"attempt": 3, "resolved": False, "repeats_attempt": None},
            ],
        }
    ]
    totals = _attempt_totals(rows)
    assert totals is not None
    assert totals["later_attempts"] == 2 and totals["repeated_diffs"] == 1
    text = "\n".join(
        _attempt_lines({"attempts": totals, "done": 1, "resolved": 0, "resolve_rate": 0.0})
    )
    assert "Of the 2 attempts after a first one, 1 ended with the same diff" in text
    # Records made before attempts recorded it say nothing about repeats.
    for entry in rows[0]["attempt_results"]:
        del entry["repeats_attempt"]
    assert _attempt_totals(rows)["repeated_diffs"] is None
