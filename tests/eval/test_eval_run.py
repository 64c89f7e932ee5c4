"""Running a suite: one shared model, records as JSONL, resume, reports, best-of-N."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import bwrap_works
from eval_helpers import FINISH, FIX_PLANS, PlanModel, make_mini_suite

from pullsmith.config import load_settings
from pullsmith.errors import UserError
from pullsmith.eval.harness import (
    EvalOptions,
    Listener,
    Steps,
    TaskRecord,
    load_records,
    run_suite,
)
from pullsmith.eval.tasks import load_suite
from pullsmith.events import Event, read_events
from pullsmith.models import ModelError

SANDBOX = "bwrap" if bwrap_works() else "none"


@pytest.fixture
def settings(tmp_path):
    return load_settings({"sandbox": SANDBOX}, cwd=tmp_path)


@pytest.fixture
def suite(tmp_path):
    return load_suite(make_mini_suite(tmp_path))


class Recorder(Listener):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.steps: list[tuple[str, str]] = []
        self.finished: list[str] = []

    def task_started(self, task_id):
        self.started.append(task_id)

    def task_step(self, task_id, step):
        self.steps.append((task_id, step))

    def task_finished(self, record):
        self.finished.append(record.task_id)


def test_the_progress_hears_each_direct_repair_try_and_each_turn():
    listener = Recorder()
    steps = Steps(listener, "semver-01")
    for number, (type_, data) in enumerate(
        [
            (
                "repair.tried",
                {"attempt": 1, "function": "Version.next_version", "outcome": "failed"},
            ),
            ("tests.ran", {"attempt": 1, "exit_code": 1}),
            ("repair.tried", {"attempt": 1, "function": "cmd_nextver", "outcome": "unchanged"}),
            ("model.reply", {"attempt": 1, "turn": 1}),
            ("model.reply", {"attempt": 2, "turn": 3}),
            ("repair.tried", {"attempt": 2, "function": "parse", "outcome": "passed"}),
        ]
    ):
        steps(Event(id=number, type=type_, task_id="r", ts=0.0, data=data))
    assert [step for _, step in listener.steps] == [
        "repair 1: next_version failed",
        "repair 2: cmd_nextver unchanged",
        "turn 1",
        "attempt 2, turn 3",
        "attempt 2, repair 3: parse passed",
    ]


def test_run_records_every_task_and_writes_reports(suite, settings, tmp_path):
    out = tmp_path / "out"
    model = PlanModel({"calc.py": FIX_PLANS["calc.py"]})  # mul gets "finish" right away
    listener = Recorder()
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=out), model, listener)
    assert not model.closed  # a model passed in belongs to the caller
    records = load_records(out / "records.jsonl")
    assert set(records) == {"add", "mul"}
    assert records["add"].resolved and not records["mul"].resolved
    assert records["mul"].status == "failed" and records["mul"].exit_reason
    assert sorted(listener.finished) == ["add", "mul"] and ("add", "turn 1") in listener.steps
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(run.report))
    totals = report["totals"]
    assert totals["done"] == 2 and totals["resolved"] == 1 and totals["resolve_rate"] == 0.5
    assert totals["per_resolved_task"]["count"] == 1
    assert report["groups"]["bug_type"]["operator misuse"] == {"done": 1, "resolved": 1}
    markdown = (out / "report.md").read_text()
    assert "1 / 2 resolved (50.0%, 95% CI 9.5%–90.5%)" in markdown
    assert "| add | ✅ |" in markdown and "| mul | ❌ |" in markdown
    assert json.loads((out / "run.json").read_text())["selection"] == ["add", "mul"]


def test_resume_skips_recorded_tasks(suite, settings, tmp_path):
    out = tmp_path / "out"
    first = PlanModel(FIX_PLANS)
    run_suite(suite, suite.tasks[:1], settings, EvalOptions(out=out), first)
    assert first.calls == 2
    # A run that stopped half-way through writing a line leaves a torn line behind.
    with (out / "records.jsonl").open("a") as sink:
        sink.write('{"task_id": "mul", "resol')
    with pytest.raises(UserError, match="pass --resume"):
        run_suite(suite, suite.tasks, settings, EvalOptions(out=out), PlanModel(FIX_PLANS))
    second = PlanModel(FIX_PLANS)
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=out, resume=True), second)
    assert second.calls == 2  # only mul ran
    assert run.skipped == 1
    assert {r.task_id: r.resolved for r in run.records} == {"add": True, "mul": True}
    again = PlanModel(FIX_PLANS)
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=out, resume=True), again)
    assert again.calls == 0 and run.skipped == 2 and run.report["totals"]["resolved"] == 2


def test_resume_refuses_another_model(suite, settings, tmp_path):
    out = tmp_path / "out"
    run_suite(suite, suite.tasks[:1], settings, EvalOptions(out=out), PlanModel(FIX_PLANS))
    other = load_settings({"sandbox": SANDBOX, "model": "other-model"}, cwd=tmp_path)
    with pytest.raises(UserError, match="with model"):
        run_suite(suite, suite.tasks, other, EvalOptions(out=out, resume=True), PlanModel({}))


def test_model_errors_are_retried_on_resume_and_stop_a_run(tmp_path, settings):
    class DeadModel(PlanModel):
        def complete(self, messages, temperature=None, **kw):
            self.calls += 1
            raise ModelError("the model server could not be reached; check that it is running.")

    suite_dir = make_mini_suite(tmp_path)
    for n in range(3):
        clone = suite_dir / f"add{n}"
        clone.mkdir()
        for item in (suite_dir / "add").iterdir():
            target = clone / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                target.write_bytes(item.read_bytes())
    suite = load_suite(suite_dir)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="3 tasks in a row failed outside the agent's control"):
        run_suite(suite, suite.tasks, settings, EvalOptions(out=out), DeadModel({}))
    records = load_records(out / "records.jsonl")
    assert len(records) == 3  # the run stopped; the other tasks were not started
    assert all(r.error_kind == "model" and not r.resolved for r in records.values())
    model = PlanModel(FIX_PLANS)
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=out, resume=True), model)
    assert run.skipped == 0 and run.report["totals"]["done"] == 5
    assert run.report["totals"]["errors"] == 0


def test_jobs_run_tasks_concurrently_with_one_model(suite, settings, tmp_path):
    model = PlanModel(FIX_PLANS)
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=tmp_path / "o", workers=2), model)
    assert sorted(r.task_id for r in run.records if r.resolved) == ["add", "mul"]
    assert [r["task_id"] for r in run.report["tasks"]] == ["add", "mul"]  # suite order


def test_one_model_serves_every_task_and_stays_the_callers(suite, settings, tmp_path):
    model = PlanModel(FIX_PLANS)
    run_suite(suite, suite.tasks, settings, EvalOptions(out=tmp_path / "o"), model)
    assert model.calls == 4 and not model.closed


class HotterFixes(PlanModel):
    """Gives up at the first attempt's temperature; fixes when sampled hotter."""

    def complete(self, messages, temperature=None, **kw):
        reply = super().complete(messages, temperature)
        if temperature is None:
            reply.text = FINISH
        return reply


def test_best_of_n_scores_every_attempt_with_the_hidden_tests(suite, settings, tmp_path):
    out = tmp_path / "o"
    add = [t for t in suite.tasks if t.id == "add"]
    opts = EvalOptions(out=out, attempts=3, until_pass=True)
    run_suite(suite, add, settings, opts, HotterFixes({"calc.py": FIX_PLANS["calc.py"]}))
    record = load_records(out / "records.jsonl")["add"]
    assert record.resolved and record.attempt == 2 and record.attempts == 2
    assert [a["resolved"] for a in record.attempt_results] == [False, True]
    assert [a["tests_pass"] for a in record.attempt_results] == [False, True]
    assert record.edits  # the fix was an edit the log recorded
    # The task's cost counts both attempts, not only the chosen one.
    assert record.turns == sum(a["turns"] for a in record.attempt_results)
    assert record.wall_seconds > record.attempt_results[1]["wall_seconds"]
    report = json.loads((out / "report.json").read_text())
    attempts = report["totals"]["attempts"]
    assert (attempts["first_resolved"], attempts["any_resolved"]) == (0, 1)
    assert attempts["chosen_not_first"] == 1
    markdown = (out / "report.md").read_text()
    assert "| first attempt alone | 0 / 1 |" in markdown
    assert "| chosen by the visible tests (the result) | 1 / 1 |" in markdown


def test_record_round_trip():
    record = TaskRecord(task_id="x", resolved=True, prompt_tokens=3, completion_tokens=4)
    again = TaskRecord.from_dict({**record.to_dict(), "unknown_future_field": 1})
    assert again == record and again.total_tokens == 7


@pytest.mark.skipif(SANDBOX != "bwrap", reason="hiding paths needs the bwrap sandbox")
def test_the_agent_cannot_read_the_suite(suite, settings, tmp_path):
    out = tmp_path / "o"
    peek = f"```bash\ncat {suite.path}/add/hidden/hidden_test_calc.py; ls {suite.path}\n```"
    add = [t for t in suite.tasks if t.id == "add"]
    run_suite(suite, add, settings, EvalOptions(out=out), PlanModel({"calc.py": [peek, FINISH]}))
    record = load_records(out / "records.jsonl")["add"]

    logs = [e for e in read_events(Path(record.run_log)) if e.type == "command.finished"]
    assert logs and "hidden_test_calc" in logs[0].data["command"]
    assert logs[0].data["exit_code"] != 0
    assert "assert" not in logs[0].data["output"] and "task.toml" not in logs[0].data["output"]
