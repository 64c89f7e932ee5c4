"""The service with the bundled model: one real task, queued over HTTP, run to the end."""

from __future__ import annotations

import pytest
from service_helpers import Server, make_repo, server_env, stream


@pytest.mark.e2e
def test_e2e_a_task_on_the_bundled_model_through_the_service(tmp_path):
    data = tmp_path / "data"
    env = server_env(data, PULLSMITH_MAX_TURNS="2")
    server = Server(data, "--workers", "1", env=env).start(timeout=60)
    try:
        repo = make_repo(tmp_path / "inventory")
        body = {
            "repo": str(repo),
            "instruction": "The CSV export drops the last row; fix to_csv so every row is exported.",
        }
        created = server.post("/api/tasks", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        done = server.wait(task_id, ("passed", "failed", "passed-unfinished", "error"), 600)
        # Whether the model fixes it is its business; that the service ran it through the
        # engine, with the bundled model, and streamed every stored event is ours.
        assert done["state"] != "error", done.get("error") or server.logs
        assert done["model"] == "qwen2.5-coder-1.5b-instruct"
        events = list(stream(server, task_id, timeout=30))
        types = [e["type"] for e in events]
        assert types[0] == "task.started" and types[-1] == "task.finished"
        assert "model.reply" in types and [e["id"] for e in events] == sorted(
            e["id"] for e in events
        )
        replies = [e for e in events if e["type"] == "model.reply"]
        assert replies[0]["data"]["completion_tokens"] > 0
    finally:
        server.close()
