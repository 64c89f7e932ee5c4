"""The queue outlives the process: a killed server's running task is run again, queued tasks
wait, and a stop drains (running tasks cancelled, queued ones kept)."""

from __future__ import annotations

import json
import signal
import time

from conftest import git
from service_helpers import (
    Server,
    alive,
    make_repo,
    stream,
)

from pullsmith.config import load_settings
from pullsmith.events import EventLog
from pullsmith.executors import ThreadExecutor
from pullsmith.service.queue import TaskService
from pullsmith.service.tables import ServiceTask
from pullsmith.store import Store, utcnow


def test_a_killed_server_runs_its_task_again_and_a_stop_drains(tmp_path, recordings):
    data = tmp_path / "data"
    repos = [make_repo(tmp_path / f"repo{n}") for n in range(4)]

    first = Server(data, "--workers", "1").start()
    killed = first.create(repos[0], recordings["slow"])["id"]
    waiting = first.create(repos[1], recordings["good"])["id"]
    first.wait_event(killed, lambda e: e.get("data", {}).get("command") == "sleep 4")
    assert first.task(waiting)["state"] == "queued"
    lost = stream(first, killed, until=lambda e: e["type"] == "command.started")
    orphans = first.kill()
    assert orphans  # its workers (and the sandboxed sleep) ...
    deadline = time.monotonic() + 3
    while alive(orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(orphans)  # ... died with it

    second = Server(data, "--workers", "1").start()
    assert second.token == first.token  # kept in the data directory
    assert "1 interrupted task(s) queued again" in second.output
    task = second.wait(killed, ("passed", "failed", "error", "interrupted"), timeout=90)
    assert task["state"] == "passed", task
    assert task["tries"] == 2 and task["interruptions"] == 1
    events = stream(second, killed)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[: len(lost)] == lost  # the lost attempt's events are still there
    warning = next(e for e in events if e["type"] == "warning")
    assert "the service stopped while this task ran (try 1)" in warning["data"]["message"]
    assert [e["type"] for e in events].count("task.started") == 2
    assert [e["type"] for e in events].count("task.finished") == 1
    assert events[-1]["type"] == "task.finished" and events[-1]["data"]["status"] == "passed"
    # The lost attempt's branch is set aside, not deleted.
    branches = git("branch", "--list", "pullsmith/*", cwd=repos[0]).split()
    assert f"pullsmith/{killed}-lost-1" in branches and f"pullsmith/{killed}" in branches
    assert second.wait(waiting, ("passed", "failed", "error"))["state"] == "passed"

    # Ctrl-C: the running task is cancelled, the queued one stays for the next start.
    running = second.create(repos[2], recordings["sleepy"])["id"]
    queued = second.create(repos[3], recordings["good"])["id"]
    second.wait_event(running, lambda e: e.get("data", {}).get("command") == "sleep 60")
    started = time.monotonic()
    assert second.stop(signal.SIGINT) == 0, second.logs
    assert time.monotonic() - started < 20
    assert "stopped; 1 queued task wait for the next start." in second.output

    third = Server(data, "--workers", "1").start()
    assert third.task(running)["state"] == "cancelled"
    assert stream(third, running)[-1]["data"]["status"] == "cancelled"
    assert third.wait(queued, ("passed", "failed", "error"))["state"] == "passed"
    third.close()


def test_a_task_interrupted_twice_stays_interrupted(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data")}, cwd=tmp_path)
    store = Store.open(settings)
    service = TaskService(settings, store, 1, executor=ThreadExecutor(1))
    try:
        for task_id, tries in (("20990101-000000-0001", 1), ("20990101-000000-0002", 2)):
            store.add(
                ServiceTask(
                    id=task_id,
                    repo=str(tmp_path / "gone"),
                    instruction="x",
                    state="running",
                    created_at=utcnow(),
                    tries=tries,
                    model_options={},
                )
            )
            log = EventLog(task_id, settings.runs_dir / task_id / "events.jsonl")
            log.emit("task.started", **_started())
            log.close()
            with open(settings.runs_dir / task_id / "events.jsonl", "a") as handle:
                handle.write('{"v": 1, "id": 2, "type": "comm')  # torn by the kill
        assert service.recover() == (1, 1)
        once, twice = service.get("20990101-000000-0001"), service.get("20990101-000000-0002")
        assert (once.state, once.interruptions, once.finished_at) == ("queued", 1, None)
        assert (twice.state, twice.interruptions) == ("interrupted", 1)
        assert twice.finished_at is not None and "not run again" in twice.error
        for row in (once, twice):
            events = service.events_after(row.id)
            assert [(e.id, e.type) for e in events] == [(1, "task.started"), (2, "warning")]
            lines = (settings.runs_dir / row.id / "events.jsonl").read_text().splitlines()
            assert [json.loads(line)["id"] for line in lines] == [1, 2]
    finally:
        service.close(timeout=5)
        store.close()


def _started() -> dict:
    return {
        "instruction": "x",
        "repo": "/gone",
        "base": "main",
        "model": "replay:x",
        "protocol": "text",
        "edit_forms": [],
        "sandbox": "none",
    }
