"""Time per task: the run after the agent is the finish's check when nothing changed since,
and `task_time_s` bounds a whole task, every attempt counted."""

from __future__ import annotations

from conftest import ScriptedModel, bwrap_works

import pullsmith.best_of_n as best_of_n
from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.task import Task

SANDBOX = "bwrap" if bwrap_works() else "none"
RIGHT = (
    "Fix it.\n```bash\nsed -i 's/range(len(rows) - 1)/range(len(rows))/' inventory/export.py\n```"
)
WRONG = (
    "Try.\n```bash\nsed -i 's/range(len(rows) - 1)/range(1, len(rows))/' inventory/export.py\n```"
)
FINISH = '```bash\nfinish "the export writes every row"\n```'


def run(repo, tmp_path, replies, attempts=1, **extra):
    settings = load_settings({"sandbox": SANDBOX, **extra}, cwd=tmp_path)
    task = Task(
        instruction="The CSV export drops the last row; fix it.",
        repo=str(repo),
        attempts=attempts,
    )
    result = run_task(task, settings, model=ScriptedModel(replies))
    return result, read_events(run_dir_for(settings, task.task_id) / "events.jsonl")


def test_after_a_checked_finish_the_tests_do_not_run_again(example_repo, tmp_path):
    result, events = run(example_repo, tmp_path, [RIGHT, FINISH], shrink_diff=False)
    assert result.status == "passed"
    started = [e.data["phase"] for e in events if e.type == "tests.started"]
    ran = {e.data["phase"]: e for e in events if e.type == "tests.ran"}
    assert started.count("check") == 1 and "after" not in started
    after, check = ran["after"], ran["check"]
    assert after.data["same_as"] == check.id and after.data["seconds"] == 0.0
    assert after.data["exit_code"] == 0 and after.data["output"] == check.data["output"]
    assert result.tests_after.event_id == after.id and result.tests_after.passed


def test_without_a_finish_the_tests_run_after_the_agent(example_repo, tmp_path):
    # The turn limit ends the agent, not a finish: there is no check to stand for the run.
    result, events = run(example_repo, tmp_path, [RIGHT], max_turns=1, shrink_diff=False)
    assert result.status == "passed-unfinished"
    after = [e for e in events if e.type == "tests.ran" and e.data["phase"] == "after"]
    assert len(after) == 1 and after[0].data.get("same_as") is None
    assert after[0].data["seconds"] > 0


def test_the_task_time_budget_stops_further_attempts(example_repo, tmp_path, monkeypatch):
    # A budget of 1 s and no minimum per attempt: the first attempt uses it up (its test runs
    # alone take longer), so the second is not started and the log says why.
    monkeypatch.setattr(best_of_n, "MIN_ATTEMPT_S", 0.5)
    result, events = run(
        example_repo, tmp_path, [WRONG, WRONG], attempts=2, task_time_s=1.0, max_turns=1
    )
    assert len(result.attempts) == 1
    warnings = [e.data["message"] for e in events if e.type == "warning"]
    assert any("time budget (1 s) was used up after 1 of 2 attempts" in w for w in warnings)


def test_a_used_up_budget_keeps_the_finish_summary_without_asking(example_repo, tmp_path):
    # The agent's 1 s is gone after the fix's command (it sleeps 1.5 s): the attempt passed
    # unfinished, and the summary is not asked for from the diff.
    model = ScriptedModel(
        [RIGHT.replace("inventory/export.py\n", "inventory/export.py; sleep 1.5\n")]
    )
    settings = load_settings(
        {"sandbox": SANDBOX, "task_time_s": 1.0, "summary_from_diff": True, "max_turns": 2},
        cwd=tmp_path,
    )
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(example_repo))
    result = run_task(task, settings, model=model)
    events = read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    assert result.status == "passed-unfinished" and len(model.seen) == 1
    (written,) = [e for e in events if e.type == "summary.written"]
    assert written.data["source"] == "finish" and written.data["error"] is None
    assert written.data["reason"] == "the task's time budget was used up"
