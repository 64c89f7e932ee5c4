"""The engine: cancellation, listeners off the agent's thread, worker processes, replay."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ScriptedModel, bwrap_works, git

sys.path.insert(0, str(Path(__file__).parent / "eval"))
from eval_helpers import FIX_PLANS, PlanModel, make_mini_suite  # noqa: E402

from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import Engine, run_task
from pullsmith.eval.harness import EvalOptions, run_suite
from pullsmith.eval.tasks import load_suite
from pullsmith.events import Event, read_events
from pullsmith.executors import ProcessExecutor, ThreadExecutor
from pullsmith.task import Task

SANDBOX = "bwrap" if bwrap_works() else "none"
SLEEP = "```bash\necho $$ > sleeper.pid; sleep 60\n```"
FINISH = '```bash\nfinish "done"\n```'


def settings_for(tmp_path, **extra):
    return load_settings({"sandbox": SANDBOX, **extra}, cwd=tmp_path)


def task_for(repo: Path, **extra) -> Task:
    return Task(instruction="The CSV export drops the last row; fix it.", repo=str(repo), **extra)


def test_cancel_during_a_long_command_kills_it_and_keeps_the_work(example_repo, tmp_path):
    settings = settings_for(tmp_path)
    engine = Engine(settings, ThreadExecutor(1, model=ScriptedModel([SLEEP, FINISH])))
    started = threading.Event()
    handle = engine.submit(
        task_for(example_repo), [lambda e: e.type == "command.started" and started.set()]
    )
    assert started.wait(30), "the command never started"
    time.sleep(0.5)
    handle.cancel()
    result = handle.result(timeout=30)
    engine.close()
    assert result.status == "cancelled" and result.exit_reason == "cancelled"
    assert result.commit is None and result.worktree and Path(result.worktree).is_dir()
    pid = int((Path(result.worktree) / "sleeper.pid").read_text())
    if SANDBOX == "none":  # under bwrap the pid is the sandbox's own namespace's
        assert not Path(f"/proc/{pid}").exists()
    events = read_events(handle.log_path)
    finished = next(e for e in events if e.type == "command.finished")
    assert finished.data["cancelled"] and finished.data["seconds"] < 30
    assert events[-1].type == "task.finished" and events[-1].data["status"] == "cancelled"
    assert "tests.ran" not in [e.type for e in events if e.data.get("phase") == "after"]


def test_a_listener_that_raises_is_reported_and_the_run_goes_on(example_repo, tmp_path):
    from test_runner import rewrite_reply

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    result = run_task(
        task_for(example_repo),
        settings_for(tmp_path),
        model=ScriptedModel([rewrite_reply(example_repo), FINISH]),
        listeners=[broken, lambda e: seen.append(e.type)],
    )
    assert result.status == "passed"
    events = read_events(Path(result.run_dir) / "events.jsonl")
    failed = [e for e in events if e.type == "listener.failed"]
    assert len(failed) == 1 and "listener bug" in failed[0].data["error"]
    assert seen[-1] == "task.finished" and "listener.failed" in seen


def test_a_slow_listener_does_not_hold_up_the_agent(example_repo, tmp_path):
    from test_runner import rewrite_reply

    settings = settings_for(tmp_path)
    seen: list[str] = []
    finished_while_held = threading.Event()

    def held(event: Event) -> None:
        # The first event holds this listener until the attempt is over in the log: only a
        # listener off the agent's thread can see that happen.
        if not seen:
            log = run_dir_for(settings, event.task_id) / "events.jsonl"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if log.exists() and '"attempt.finished"' in log.read_text():
                    finished_while_held.set()
                    break
                time.sleep(0.05)
        seen.append(event.type)

    model = ScriptedModel([rewrite_reply(example_repo), FINISH])
    result = run_task(task_for(example_repo), settings, model, [held])
    assert result.status == "passed"
    assert finished_while_held.is_set(), "the agent waited for its listener"
    assert seen[0] == "task.started" and seen[-1] == "task.finished"


def test_eval_with_two_worker_processes_scores_as_one(tmp_path, monkeypatch):
    suite_dir = make_mini_suite(tmp_path)
    suite = load_suite(suite_dir)
    settings = settings_for(tmp_path)
    recorded = tmp_path / "recorded"
    run = run_suite(suite, suite.tasks, settings, EvalOptions(out=recorded), PlanModel(FIX_PLANS))
    expected = {r.task_id: r.resolved for r in run.records}
    assert expected == {"add": True, "mul": True}
    replay = settings_for(tmp_path, model=f"replay:{recorded}")
    scores = {}
    for workers in (1, 2):
        out = tmp_path / f"replayed-{workers}"
        again = run_suite(suite, suite.tasks, replay, EvalOptions(out=out, workers=workers))
        scores[workers] = {r.task_id: r.resolved for r in again.records}
        assert all(r.model.startswith("replay:") for r in again.records)
        assert all(r.error is None for r in again.records), [r.error for r in again.records]
    assert scores[1] == scores[2] == expected


def test_worker_processes_get_plain_data_and_send_events_back(example_repo, tmp_path):
    """A run in a worker process: no model object, the replay of a recorded run."""
    from test_runner import rewrite_reply

    settings = settings_for(tmp_path)
    first = run_task(
        task_for(example_repo), settings, ScriptedModel([rewrite_reply(example_repo), FINISH])
    )
    fresh = tmp_path / "fresh"
    git("clone", "-q", str(example_repo), str(fresh), cwd=tmp_path)
    replay = settings_for(tmp_path, model=f"replay:{first.task_id}")
    seen: list[Event] = []
    engine = Engine(replay, ProcessExecutor(1))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)  # the worker must not care where the parent stands
        result = engine.run(task_for(fresh), [seen.append])
    finally:
        os.chdir(cwd)
        engine.close()
    assert result.status == "passed", result.error
    assert result.diff == first.diff
    written = read_events(run_dir_for(replay, result.task_id) / "events.jsonl")
    assert [e.id for e in seen] == [e.id for e in written]


def test_a_worker_that_dies_fails_only_its_task(example_repo, tmp_path):
    settings = settings_for(tmp_path, model="replay:/nonexistent")
    executor = ProcessExecutor(1)
    engine = Engine(settings, executor)
    try:
        handle = engine.submit(task_for(example_repo))
        deadline = time.monotonic() + 30
        while not executor._pool and time.monotonic() < deadline:
            time.sleep(0.05)
        executor._pool[0].process.kill()
        result = handle.result(timeout=60)
        assert result.status == "error"
        # Either the worker died first, or the task had already failed on its own.
        assert result.error_kind in ("worker", "model", "run")
        again = engine.submit(task_for(example_repo)).result(timeout=60)
        assert again.status == "error" and "replay" in (again.error or "")
    finally:
        engine.close()


@pytest.mark.parametrize("attempts", [0])
def test_bad_tasks_are_refused_before_anything_runs(example_repo, tmp_path, attempts):
    from pullsmith.errors import UserError

    engine = Engine(settings_for(tmp_path), ThreadExecutor(1, model=ScriptedModel([])))
    with pytest.raises(UserError, match="at least 1"):
        engine.submit(task_for(example_repo, attempts=attempts))
    engine.close()
