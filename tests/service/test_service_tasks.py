"""`pullsmith serve` end to end: real tasks (replayed runs) through the REST API.

One server process serves every test of this module; each test works on its own copy of the
example repository.
"""

from __future__ import annotations

import time

import pytest
from conftest import git
from service_helpers import (
    FIXED_EXPORT,
    INSTRUCTION,
    Server,
    make_repo,
    stream,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serve") / "data", "--workers", "2").start()
    yield server
    server.close()


def test_a_task_passes_and_its_pr_is_merged(server, recordings, tmp_path):
    repo = make_repo(tmp_path / "inventory")
    created = server.create(repo, recordings["good"])
    assert created["state"] == "queued" and created["repo"] == str(repo)
    assert created["instruction"] == INSTRUCTION and created["attempts"] == 1

    task = server.wait(created["id"], ("passed", "failed", "error", "untested"))
    assert task["state"] == "passed", task
    assert task["tries"] == 1 and task["started_at"] and task["finished_at"]
    assert task["verdicts"] == [
        {
            "attempt": 1,
            "status": "passed",
            "tests_pass": True,
            "tests_exit_code": 0,
            "test_command": "python -m pytest -q",
            "branch": f"pullsmith/{created['id']}",
            "commit": task["commit"],
            "chosen": True,
        }
    ]
    assert task["usage"]["turns"] == 3
    assert task["result"]["status"] == "passed"

    diff = server.get(f"/api/tasks/{created['id']}/diff").json()
    assert diff["attempt"] == 1 and diff["chosen"] and diff["commit"] == task["commit"]
    assert "+    for row in rows:" in diff["diff"]
    assert server.get(f"/api/tasks/{created['id']}/diff?attempt=2").status_code == 404

    # The run recorded its pull request already; asking again names the same one.
    number = task["pr"]
    assert number is not None
    again = server.post(f"/api/tasks/{created['id']}/pr")
    assert again.status_code == 200 and again.json()["number"] == number
    assert again.json()["created"] is False and "Tests pass" in again.json()["body"]
    prs = server.get("/api/prs").json()["prs"]
    mine = [pr for pr in prs if pr["number"] == number]
    assert mine and mine[0]["state"] == "open" and mine[0]["checks"] == "passing"
    assert mine[0]["task_id"] == created["id"]

    # A change on main that touches the same lines: the merge refuses, changing nothing.
    export = repo / "inventory" / "export.py"
    export.write_text(export.read_text().replace("for i in range", "for index in range"))
    git("commit", "-qam", "conflicting change", cwd=repo)
    conflict = server.post(f"/api/prs/{number}/merge")
    assert conflict.status_code == 409, conflict.text
    assert "conflicts with 'main' in inventory/export.py" in conflict.json()["error"]
    git("reset", "-q", "--hard", "HEAD~1", cwd=repo)

    merged = server.post(f"/api/prs/{number}/merge")
    assert merged.status_code == 200, merged.text
    assert merged.json()["state"] == "merged" and merged.json()["method"] == "fast-forward"
    assert export.read_text() == FIXED_EXPORT
    assert server.post(f"/api/prs/{number}/merge").status_code == 409
    assert server.post("/api/prs/999/merge").status_code == 404

    listed = server.get("/api/tasks", params={"state": "passed", "repo": str(repo)}).json()
    assert [t["id"] for t in listed["tasks"]] == [created["id"]] and listed["total"] == 1


def test_events_stream_replays_and_resumes(server, recordings, tmp_path):
    repo = make_repo(tmp_path / "inventory")
    task_id = server.create(repo, recordings["good"])["id"]
    # Connect while it is queued or running, and drop the connection after three events.
    first = stream(server, task_id, until=lambda e: e["id"] == 3)
    assert [e["id"] for e in first] == [1, 2, 3]
    # Reconnect as a browser does: exactly the rest, ending after task.finished.
    rest = stream(server, task_id, headers={"Last-Event-ID": "3"})
    assert [e["id"] for e in rest] == list(range(4, len(rest) + 4))
    assert rest[-1]["type"] == "task.finished" and rest[-1]["data"]["status"] == "passed"
    every = first + rest
    assert every[0]["type"] == "task.started" and every[0]["task_id"] == task_id
    types = [e["type"] for e in every]
    assert "model.reply" in types and "pr.opened" in types and types.count("task.finished") == 1

    # A finished task replays everything and ends; ?after= resumes as the header does.
    assert stream(server, task_id) == every
    assert stream(server, task_id, params={"after": 5}) == every[5:]
    assert stream(server, task_id, params={"after": len(every)}) == []


def test_cancel_a_running_task(server, recordings, tmp_path):
    repo = make_repo(tmp_path / "inventory")
    task_id = server.create(repo, recordings["sleepy"])["id"]
    server.wait_event(
        task_id, lambda e: e["type"] == "command.started" and "sleep 60" in e["data"]["command"]
    )
    started = time.monotonic()
    response = server.post(f"/api/tasks/{task_id}/cancel")
    assert response.status_code == 202 and response.json()["cancelling"] is True
    task = server.wait(task_id, ("cancelled", "error", "failed"), timeout=20)
    assert task["state"] == "cancelled", task
    assert time.monotonic() - started < 10
    events = stream(server, task_id)
    assert events[-1]["type"] == "task.finished" and events[-1]["data"]["status"] == "cancelled"
    assert server.post(f"/api/tasks/{task_id}/cancel").status_code == 409
    refused = server.post(f"/api/tasks/{task_id}/pr")
    assert refused.status_code == 409 and "without a commit" in refused.json()["error"]
