"""Follow-ups through the API: a new instruction on a finished task's pull request branch."""

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

TOKEN = "f" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOTE = "```bash\necho 'Every row is exported.' > NOTES.md\n```"
DONE = '```bash\nfinish "noted the fix in NOTES.md"\n```'


def wait(client: TestClient, task_id: str) -> dict:
    deadline = time.monotonic() + 60
    while (task := client.get(f"/api/tasks/{task_id}", headers=AUTH).json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, task
        time.sleep(0.1)
    return task


def test_a_follow_up_adds_a_commit_to_the_same_pull_request(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data"), "sandbox": SANDBOX}, tmp_path)
    repo = make_repo(tmp_path / "inventory")
    store = Store.open(settings)
    model = ScriptedModel([*GOOD_REPLIES, NOTE, DONE])
    service = TaskService(settings, store, 1, executor=ThreadExecutor(1, model=model))
    service.start()
    try:
        with TestClient(create_app(service, Access(TOKEN, "--token"))) as client:
            body = {"repo": str(repo), "instruction": INSTRUCTION}
            first = wait(client, client.post("/api/tasks", json=body, headers=AUTH).json()["id"])
            assert first["state"] == "passed" and first["pr"] is not None

            early = client.post(
                f"/api/tasks/{first['id']}/follow-up", json={"instruction": " "}, headers=AUTH
            )
            assert early.status_code == 422 and "instruction is empty" in early.json()["error"]
            asked = client.post(
                f"/api/tasks/{first['id']}/follow-up",
                json={"instruction": "Note the fix in NOTES.md."},
                headers=AUTH,
            )
            assert asked.status_code == 201, asked.text
            second = wait(client, asked.json()["id"])
            assert second["state"] == "passed", second
            assert second["follows"] == first["id"] and second["pr"] == first["pr"]
            branch = f"pullsmith/{first['id']}"
            assert "Every row" in git("show", f"{branch}:NOTES.md", cwd=repo)
            assert "for row in rows:" in git("show", f"{branch}:inventory/export.py", cwd=repo)
            pr = client.get(f"/api/prs/{first['pr']}", headers=AUTH).json()
            assert pr["head"] == branch and "NOTES.md" in pr["body"]

            merged = client.post(f"/api/prs/{first['pr']}/merge", json={}, headers=AUTH)
            assert merged.status_code == 200, merged.text
            refused = client.post(
                f"/api/tasks/{first['id']}/follow-up",
                json={"instruction": "more"},
                headers=AUTH,
            )
            assert refused.status_code == 409 and "merged" in refused.json()["error"]
            missing = client.post(
                "/api/tasks/nope/follow-up", json={"instruction": "more"}, headers=AUTH
            )
            assert missing.status_code == 404
    finally:
        service.close(timeout=10)
        store.close()
