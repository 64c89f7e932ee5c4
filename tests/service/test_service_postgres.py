"""`pullsmith serve --database-url postgresql+psycopg://...`: the service on PostgreSQL.

A real server process on a database of the tests' PostgreSQL server (tests/postgres_fixture.py)
runs a replayed task to the end while its events stream; a second server process on the same
database finds everything as the first left it.
"""

from __future__ import annotations

from service_helpers import GOOD_REPLIES, Server, make_repo, stream, write_history
from sqlalchemy import func, select

from pullsmith.service.tables import ServiceEvent, ServiceTask
from pullsmith.store import Store

FINISHED = ("passed", "failed", "error", "untested", "cancelled")


def test_a_task_runs_on_postgres_and_survives_a_restart(tmp_path, postgres_url):
    data = tmp_path / "data"
    repo = make_repo(tmp_path / "inventory")
    # The good run's replies as a hand-written recording: the session's `recordings` fixture
    # would record them with `pullsmith exec` once more for this module, which takes a while.
    good = f"replay:{write_history(tmp_path / 'recorded', GOOD_REPLIES)}"

    first = Server(data, "--workers", "1", "--database-url", postgres_url).start()
    try:
        assert f"database  {postgres_url}" in first.output  # no password to hide
        created = first.create(repo, good)
        task_id = created["id"]
        # Streamed from while it is queued or running to the end of the run.
        events = stream(first, task_id)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["type"] == "task.started" and events[0]["task_id"] == task_id
        types = [e["type"] for e in events]
        assert "model.reply" in types and "pr.opened" in types
        assert events[-1]["type"] == "task.finished"
        assert events[-1]["data"]["status"] == "passed", first.logs
        task = first.wait(task_id, FINISHED)
        assert task["state"] == "passed" and task["tries"] == 1, task
        number = task["pr"]
        assert number == 1
        prs = first.get("/api/prs").json()["prs"]
        assert [(p["number"], p["task_id"], p["checks"]) for p in prs] == [(1, task_id, "passing")]
    finally:
        assert first.stop() == 0, first.logs
    assert not (data / "pullsmith" / "pullsmith.db").exists()  # it never used SQLite

    # What the server wrote is in PostgreSQL, as the store reads it.
    with Store(postgres_url) as store:
        assert store.find_pull_request(task_id).number == number
        (attempt,) = store.attempts(number)
        assert attempt.status == "passed" and attempt.tests_after["exit_code"] == 0
        with store.session() as session:
            row = session.get(ServiceTask, task_id)
            assert row.state == "passed" and row.result["status"] == "passed"
            assert row.started_at <= row.finished_at
            stored = session.scalar(
                select(func.count())
                .select_from(ServiceEvent)
                .where(ServiceEvent.task_id == task_id)
            )
        assert stored == len(events)

    second = Server(data, "--workers", "1", "--database-url", postgres_url).start()
    try:
        assert "queue     0 queued" in second.output
        again = second.task(task_id)
        assert (again["state"], again["pr"], again["tries"]) == ("passed", number, 1)
        assert again["result"] == task["result"]
        assert stream(second, task_id) == events
        assert stream(second, task_id, params={"after": 3}) == events[3:]
        listed = second.get("/api/tasks").json()
        assert [t["id"] for t in listed["tasks"]] == [task_id] and listed["total"] == 1
        pr = second.get(f"/api/prs/{number}").json()
        assert (pr["state"], pr["task_id"]) == ("open", task_id)
        merged = second.post(f"/api/prs/{number}/merge")  # and it writes there too
        assert merged.status_code == 200 and merged.json()["state"] == "merged", merged.text
    finally:
        assert second.stop() == 0, second.logs
    with Store(postgres_url) as store:
        pr = store.pull_request(number)
        assert pr.state == "merged" and pr.merged_at is not None and pr.merge_commit
        assert store.count_pull_requests() == {"merged": 1}
