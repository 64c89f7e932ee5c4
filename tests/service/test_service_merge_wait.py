"""A pull request is not merged while a follow-up of it is queued or running on its branch."""

from __future__ import annotations

import time

from conftest import ScriptedModel, git
from fastapi.testclient import TestClient
from service_helpers import GOOD_REPLIES, INSTRUCTION, SANDBOX, make_repo

from pullsmith.config import load_settings
from pullsmith.executors import ThreadExecutor
from pullsmith.service.access import Access
from pullsmith.service.app import create_app
from pullsmith.service.queue import TaskService
from pullsmith.store import Store

TOKEN = "m" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLEEP = "Let me wait.\n```bash\nsleep 60\n```"


def wait_for(client: TestClient, task_id: str, leave: tuple[str, ...]) -> dict:
    """The task once its state is none of `leave`."""
    deadline = time.monotonic() + 60
    while (task := client.get(f"/api/tasks/{task_id}", headers=AUTH).json())["state"] in leave:
        assert time.monotonic() < deadline, task
        time.sleep(0.05)
    return task


def test_a_merge_waits_for_the_follow_ups_of_its_pr(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data"), "sandbox": SANDBOX}, tmp_path)
    repo = make_repo(tmp_path / "inventory")
    other = make_repo(tmp_path / "other")
    store = Store.open(settings)
    # The first task fixes the bug; the follow-up and the unrelated task each sleep 60 s.
    model = ScriptedModel([*GOOD_REPLIES, SLEEP, SLEEP])
    service = TaskService(settings, store, 1, executor=ThreadExecutor(1, model=model))
    service.start()
    try:
        with TestClient(create_app(service, Access(TOKEN, "--token"))) as client:

            def post(path: str, body: dict) -> dict:
                answer = client.post(path, json=body, headers=AUTH)
                assert answer.status_code == 201, answer.text
                return answer.json()

            first = post("/api/tasks", {"repo": str(repo), "instruction": INSTRUCTION})
            first = wait_for(client, first["id"], ("queued", "running"))
            assert first["state"] == "passed" and first["pr"] is not None
            number = first["pr"]
            merge_path = f"/api/prs/{number}/merge"

            # A running follow-up: the merge is refused in one sentence naming it.
            running = post(f"/api/tasks/{first['id']}/follow-up", {"instruction": "Add a test."})
            assert wait_for(client, running["id"], ("queued",))["state"] == "running"
            refused = client.post(merge_path, json={}, headers=AUTH)
            assert refused.status_code == 409, refused.text
            sentence = refused.json()["error"]
            assert sentence == (
                f"follow-up task {running['id']} of pull request #{number} is running; wait "
                f"for it to finish, or cancel it (POST /api/tasks/{running['id']}/cancel), "
                "then merge."
            )
            pr = client.get(f"/api/prs/{number}", headers=AUTH).json()
            assert (pr["state"], pr["working"]) == (
                "open",
                [{"id": running["id"], "state": "running"}],
            )
            listed = client.get("/api/prs", headers=AUTH).json()["prs"]
            assert [p["working"] for p in listed] == [[{"id": running["id"], "state": "running"}]]
            assert (
                client.post(f"/api/tasks/{running['id']}/cancel", headers=AUTH).status_code == 202
            )
            assert wait_for(client, running["id"], ("running",))["state"] == "cancelled"

            # A queued one (the only worker busy with another repository's task): refused too.
            busy = post("/api/tasks", {"repo": str(other), "instruction": "wait"})
            assert wait_for(client, busy["id"], ("queued",))["state"] == "running"
            queued = post(f"/api/tasks/{first['id']}/follow-up", {"instruction": "Add a test."})
            assert (
                client.get(f"/api/tasks/{queued['id']}", headers=AUTH).json()["state"] == "queued"
            )
            refused = client.post(merge_path, json={}, headers=AUTH)
            assert refused.status_code == 409, refused.text
            assert (
                f"follow-up task {queued['id']} of pull request #{number} is queued"
                in (refused.json()["error"])
            )
            assert "for row in rows:" not in git("show", "main:inventory/export.py", cwd=repo)

            # Cancelled, it no longer holds the merge back.
            cancelled = client.post(f"/api/tasks/{queued['id']}/cancel", headers=AUTH)
            assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
            assert client.get(f"/api/prs/{number}", headers=AUTH).json()["working"] == []
            merged = client.post(merge_path, json={}, headers=AUTH)
            assert merged.status_code == 200, merged.text
            assert merged.json()["state"] == "merged"
            assert "for row in rows:" in git("show", "main:inventory/export.py", cwd=repo)
            client.post(f"/api/tasks/{busy['id']}/cancel", headers=AUTH)
            wait_for(client, busy["id"], ("queued", "running"))
    finally:
        service.close(timeout=10)
        store.close()
