"""A pull request's review in the service: GET /api/prs/{number} carries the latest one."""

from __future__ import annotations

import time

from conftest import ScriptedModel
from fastapi.testclient import TestClient
from service_helpers import GOOD_REPLIES, INSTRUCTION, SANDBOX, make_repo

from pullsmith.config import load_settings
from pullsmith.executors import ThreadExecutor
from pullsmith.review.diff import resolve_change
from pullsmith.review.pull_request import store_review
from pullsmith.review.runner import review_change
from pullsmith.service.access import Access
from pullsmith.service.app import create_app
from pullsmith.service.queue import TaskService
from pullsmith.store import Store

TOKEN = "t" * 32


def test_the_pr_api_shows_the_latest_review(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path / "data"), "sandbox": SANDBOX}, tmp_path)
    repo = make_repo(tmp_path / "inventory")
    store = Store.open(settings)
    executor = ThreadExecutor(1, model=ScriptedModel(list(GOOD_REPLIES)))
    service = TaskService(settings, store, 1, executor=executor)
    service.start()
    try:
        with TestClient(create_app(service, Access(TOKEN, "--token"))) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            body = {"repo": str(repo), "instruction": INSTRUCTION}
            task_id = client.post("/api/tasks", json=body, headers=auth).json()["id"]
            deadline = time.monotonic() + 240  # a real run: its tests, three times
            while (task := client.get(f"/api/tasks/{task_id}", headers=auth).json())["state"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            number = task["pr"]
            pr = client.get(f"/api/prs/{number}", headers=auth).json()
            assert pr["review"] is None
            record = store.pull_request(number)
            change = resolve_change(repo, base=record.base_commit, head=record.head_commit)
            path = change.files[0].path
            line = change.files[0].changed_lines[0]
            reply = (
                f"FINDING: a nit\nPRIORITY: P3\nCONFIDENCE: 0.4\nFILE: {path}\nLINES: {line}\n"
                "WHY: could be shorter.\nVERDICT: correct\nREASON: The export is fixed."
            )
            review = review_change(change, ScriptedModel([reply]), settings)
            store_review(store, record, review)
            shown = client.get(f"/api/prs/{number}", headers=auth).json()["review"]
            assert shown["verdict"] == "correct" and shown["reasoning"] == "The export is fixed."
            assert shown["head"] == record.head_commit and shown["remote_url"] is None
            (finding,) = shown["findings"]
            assert finding["priority"] == "P3" and finding["location"]["path"] == path
    finally:
        service.close(timeout=10)
        store.close()
