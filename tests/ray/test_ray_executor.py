"""The Ray executor on a real local Ray instance: the same results as the local executor,
best-of-N at once, a killed worker, a cancel, and the network it uses."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import bwrap_works, git
from ray_helpers import (  # noqa: F401
    GOOD_REPLIES,
    INSTRUCTION,
    TEST_COMMAND,
    make_repo,
    ray_cluster_fixture,
    record,
    slow_recording,
)

from pullsmith.config import load_settings
from pullsmith.engine import Engine
from pullsmith.events import read_events
from pullsmith.executors import ThreadExecutor, make_executor
from pullsmith.ray_executor import RayExecutor
from pullsmith.task import Task

SANDBOX = "bwrap" if bwrap_works() else "none"


def settings_for(tmp_path: Path, **extra):
    return load_settings({"sandbox": SANDBOX, "test_command": TEST_COMMAND, **extra}, cwd=tmp_path)


def run_on(executor, settings, task: Task, listeners=()):
    engine = Engine(settings, executor)
    try:
        return engine.run(task, listeners)
    finally:
        engine.close()


def comparable(events) -> list[tuple[str, object]]:
    """What two runs of one recording share: each event's type and its phase or status."""
    return [(e.type, e.data.get("phase") or e.data.get("status")) for e in events]


def test_a_task_on_ray_gives_the_local_executors_result(ray_cluster, tmp_path):
    spec, _ = record(tmp_path, settings_for(tmp_path))
    local_repo = make_repo(tmp_path / "local")
    ray_repo = make_repo(tmp_path / "on-ray")
    local = run_on(
        ThreadExecutor(1),
        settings_for(tmp_path, model=spec),
        Task(instruction=INSTRUCTION, repo=str(local_repo)),
    )
    settings = settings_for(tmp_path, model=spec, executor="ray")
    seen = []
    executor = make_executor(settings, 1)
    assert isinstance(executor, RayExecutor)
    remote = run_on(
        executor, settings, Task(instruction=INSTRUCTION, repo=str(ray_repo)), [seen.append]
    )
    assert local.status == remote.status == "passed", remote.error
    assert remote.diff == local.diff and remote.diff_stat == local.diff_stat
    assert remote.tests_after.exit_code == local.tests_after.exit_code == 0
    # The branch came back into the user's repository: its commit is there, with the change.
    assert remote.repo == str(ray_repo) and remote.commit
    assert git("rev-parse", remote.branch, cwd=ray_repo).strip() == remote.commit
    assert git("diff", f"{remote.base_commit}..{remote.commit}", cwd=ray_repo) == git(
        "diff", f"{local.base_commit}..{local.commit}", cwd=local_repo
    )
    # The log was written here from the streamed events, numbered as one file, and the
    # listeners saw the same events.
    run_dir = Path(remote.run_dir)
    assert run_dir == settings.runs_dir / remote.task_id
    written = read_events(run_dir / "events.jsonl")
    assert [e.id for e in written] == list(range(1, len(written) + 1))
    assert [e.id for e in seen] == [e.id for e in written]
    assert comparable(written) == comparable(read_events(Path(local.run_dir) / "events.jsonl"))
    assert (run_dir / "history.json").is_file()
    # The cited test run is the one in this log.
    cited = next(e for e in written if e.id == remote.tests_after.event_id)
    assert cited.type == "tests.ran" and cited.data["phase"] == "after"
    # The worker worked elsewhere: none of its files are under this machine's data directory.
    workspace = next(e for e in written if e.type == "workspace.created").data["path"]
    assert not Path(workspace).is_relative_to(settings.data_dir)
    assert not Path(workspace).exists()


def test_best_of_n_attempts_run_at_once_and_are_ranked_here(ray_cluster, tmp_path):
    # A best-of-2 recording: attempt 1 sleeps first, attempt 2 fixes at once.
    from conftest import ScriptedModel

    recorded = run_on(
        ThreadExecutor(
            1, model=ScriptedModel(["```bash\nsleep 3\n```", *GOOD_REPLIES, *GOOD_REPLIES])
        ),
        settings_for(tmp_path),
        Task(instruction=INSTRUCTION, repo=str(make_repo(tmp_path / "rec2")), attempts=2),
    )
    assert [a["status"] for a in recorded.attempts] == ["passed", "passed"], recorded.attempts
    whole_run = Path(recorded.run_dir).parent / recorded.task_id.rsplit("-", 1)[0]
    settings = settings_for(tmp_path, model=f"replay:{whole_run}", executor="ray")
    repo = make_repo(tmp_path / "bo2")
    executor = RayExecutor(settings, 1)
    result = run_on(executor, settings, Task(instruction=INSTRUCTION, repo=str(repo), attempts=2))
    assert result.status == "passed", result.error
    assert [a["attempt"] for a in result.attempts] == [1, 2]
    assert all(a["status"] == "passed" for a in result.attempts), [
        a["error"] for a in result.attempts
    ]
    # Both pass; the smaller diff wins, as BestOfN ranks them: the same choice as recorded.
    assert result.attempt == recorded.attempt
    for entry in result.attempts:
        branch = entry["branch"]
        assert git("rev-parse", branch, cwd=repo).strip() == entry["commit"]
        assert Path(entry["run_dir"]).is_relative_to(settings.runs_dir)
    parent = result.task_id.rsplit("-", 1)[0]
    events = read_events(settings.runs_dir / parent / "events.jsonl")
    types = [(e.type, e.data.get("attempt")) for e in events]
    # At once: attempt 2 started while attempt 1 was still running (in its sleep).
    assert ("task.started", 2) in types, types
    assert types.index(("task.started", 2)) < types.index(("attempt.finished", 1))
    assert [t for t in types if t[0] == "attempts.selected"] == [
        ("attempts.selected", result.attempt)
    ]
    assert sum(1 for t in types if t[0] == "attempt.scored") == 2


def test_a_worker_killed_mid_attempt_is_retried_and_its_events_are_kept(ray_cluster, tmp_path):
    spec = slow_recording(tmp_path, 3)
    settings = settings_for(tmp_path, model=spec, executor="ray", ray_max_retries=2)
    repo = make_repo(tmp_path / "repo")
    executor = RayExecutor(settings, 1)
    engine = Engine(settings, executor)
    sleeping = threading.Event()
    handle = engine.submit(
        Task(instruction=INSTRUCTION, repo=str(repo)),
        [lambda e: e.type == "command.started" and sleeping.set()],
    )
    try:
        assert sleeping.wait(60), "the first command never started"
        (pid,) = handle._job.worker_pids
        os.kill(pid, signal.SIGKILL)
        result = handle.result(timeout=120)
    finally:
        engine.close()
    assert result.status == "passed", result.error
    assert len(handle._job.worker_pids) == 2 and handle._job.worker_pids[0] == pid
    events = read_events(handle.log_path)
    types = [e.type for e in events]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    # The lost try's events up to the kill, then the mark of the lost try, then a whole run.
    lost = next(i for i, e in enumerate(events) if e.type == "warning")
    assert "died" in events[lost].data["message"] and "try 2" in events[lost].data["message"]
    assert types[:lost][-1] == "command.started" and "attempt.finished" not in types[:lost]
    assert types[lost + 1] == "task.started"
    assert types.count("attempt.finished") == 1 and types[-1] == "task.finished"
    cited = next(e for e in events if e.id == result.tests_after.event_id)
    assert cited.type == "tests.ran" and cited.data["phase"] == "after"
    assert git("rev-parse", result.branch, cwd=repo).strip() == result.commit


def test_a_task_cancelled_on_ray_cancels_the_ray_task(ray_cluster, tmp_path):
    spec = slow_recording(tmp_path, 60)
    settings = settings_for(tmp_path, model=spec, executor="ray")
    repo = make_repo(tmp_path / "repo")
    executor = RayExecutor(settings, 1)
    engine = Engine(settings, executor)
    sleeping = threading.Event()
    handle = engine.submit(
        Task(instruction=INSTRUCTION, repo=str(repo)),
        [lambda e: e.type == "command.started" and sleeping.set()],
    )
    try:
        assert sleeping.wait(60), "the command never started"
        handle.cancel()
        result = handle.result(timeout=60)
        import ray

        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(handle._job.runs[0].ref, timeout=30)
    finally:
        engine.close()
    assert result.status == "cancelled" and result.exit_reason == "cancelled", result.error
    assert result.commit is None
    events = read_events(handle.log_path)
    finished = next(e for e in events if e.type == "command.finished")
    assert finished.data["cancelled"]
    assert events[-1].type == "task.finished" and events[-1].data["status"] == "cancelled"
    # The cancelled attempt's checkout is kept here, as the local executor keeps it.
    assert result.worktree and Path(result.worktree).is_relative_to(settings.worktrees_dir)
    assert (
        git("rev-parse", "--abbrev-ref", "HEAD", cwd=Path(result.worktree)).strip() == result.branch
    )
