"""Recording a pull request the run could not, and what the service prints of its settings."""

from __future__ import annotations

import time

from conftest import ScriptedModel
from fastapi.testclient import TestClient
from service_helpers import GOOD_REPLIES, INSTRUCTION, SANDBOX, make_repo

from pullsmith.config import load_settings
from pullsmith.errors import UserError
from pullsmith.executors import ThreadExecutor
from pullsmith.service.access import Access
from pullsmith.service.app import create_app
from pullsmith.service.queue import TaskService
from pullsmith.service.server import describe_model, redact
from pullsmith.store import Store

TOKEN = "t" * 32


class BrokenStore:
    """A publisher whose store can not be written at the time."""

    def publish(self, task, result, events):
        raise UserError("the store at sqlite:///x.db could not be written (disk I/O error).")


def test_a_pr_the_run_could_not_record_is_recorded_later(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data"), "sandbox": SANDBOX}, tmp_path)
    repo = make_repo(tmp_path / "inventory")
    store = Store.open(settings)
    executor = ThreadExecutor(1, model=ScriptedModel(list(GOOD_REPLIES)))
    service = TaskService(settings, store, 1, executor=executor, publisher=BrokenStore())
    service.start()
    try:
        with TestClient(create_app(service, Access(TOKEN, "--token"))) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            body = {"repo": str(repo), "instruction": INSTRUCTION}
            created = client.post("/api/tasks", json=body, headers=auth)
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            deadline = time.monotonic() + 60
            while (task := client.get(f"/api/tasks/{task_id}", headers=auth).json())["state"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert task["state"] == "passed" and task["pr"] is None and task["commit"]

            recorded = client.post(f"/api/tasks/{task_id}/pr", headers=auth)
            assert recorded.status_code == 201, recorded.text
            pr = recorded.json()
            assert pr["created"] is True and pr["checks"] == "passing"
            assert pr["head"] == f"pullsmith/{task_id}" and pr["task_id"] == task_id
            assert client.get(f"/api/tasks/{task_id}", headers=auth).json()["pr"] == pr["number"]
            again = client.post(f"/api/tasks/{task_id}/pr", headers=auth)
            assert again.status_code == 200 and again.json()["number"] == pr["number"]
            # The PR's event is in the task's log, after task.finished.
            types = [e.type for e in service.events_after(task_id)]
            assert types.index("task.finished") < types.index("pr.opened")
            assert "warning" in types
    finally:
        service.close(timeout=10)
        store.close()


def test_what_serve_prints_hides_passwords(tmp_path):
    assert redact("postgresql://ada:s3cret@db:5432/pullsmith") == (
        "postgresql://ada:***@db:5432/pullsmith"
    )
    assert redact("sqlite:////home/ada/pullsmith.db") == "sqlite:////home/ada/pullsmith.db"
    flags = {"model": "gpt-4.1", "base_url": "https://api.example/v1"}
    assert describe_model(load_settings(flags, tmp_path), 2) == "gpt-4.1 at https://api.example/v1"
    assert "bundled" in describe_model(load_settings({}, tmp_path), 2)
