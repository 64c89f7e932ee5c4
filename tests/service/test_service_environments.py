"""Environments through `pullsmith serve`: set per repository over the API or in the repository's
pullsmith.toml; each task's attempts run the setup command (network, secrets) before the agent."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from conftest import git
from service_helpers import (
    Server,
    make_repo,
    recordings_fixture,  # noqa: F401 (the recordings fixture)
    server_env,
    stream,
)

SECRET = "tok-9f8e7d6c5b4a"
FROM_FILE = "file-secret-1234"


@pytest.fixture(scope="module")
def index_url():
    """A loopback HTTP server standing in for a package index."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"index-ok")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve-env") / "data"
    server = Server(data, "--workers", "1", env=server_env(data, REPO_TOKEN=FROM_FILE)).start()
    yield server
    server.close()


def setup_command(index_url: str) -> str:
    fetch = f"import urllib.request as u; print('fetched', u.urlopen('{index_url}').read())"
    return (
        f'python3 -c "{fetch}" && echo "token=$DEPLOY_TOKEN" '
        "&& mkdir -p .venv && echo installed > .venv/marker"
    )


def test_environments_are_kept_per_repository_and_never_show_secret_values(
    server, tmp_path, index_url
):
    repo = make_repo(tmp_path / "inventory")
    body = {
        "repo": str(repo) + "/",
        "setup": setup_command(index_url),
        "network": True,
        "secrets": {"DEPLOY_TOKEN": SECRET},
    }
    created = server.post("/api/environments", json=body)
    assert created.status_code == 201, created.text
    env = created.json()
    assert env["repo"] == str(repo) and env["secrets"] == ["DEPLOY_TOKEN"] and env["created"]
    assert env["network"] and env["timeout_s"] == 600

    # Replacing it without `secrets` keeps the values it had.
    again = server.post("/api/environments", json={**body, "secrets": None, "timeout_s": 120})
    assert again.status_code == 200 and again.json()["id"] == env["id"]
    assert again.json()["secrets"] == ["DEPLOY_TOKEN"] and again.json()["timeout_s"] == 120

    listed = server.get("/api/environments")
    assert [e["id"] for e in listed.json()["environments"]] == [env["id"]]
    lookup = server.get("/api/environments/lookup", params={"repo": str(repo)}).json()
    assert lookup["environment"]["id"] == env["id"]
    assert lookup["environment"]["source"] == "service"
    for response in (created, again, listed, server.get(f"/api/environments/{env['id']}")):
        assert SECRET not in response.text

    assert server.request("DELETE", f"/api/environments/{env['id']}").json() == {
        "deleted": env["id"]
    }
    missing = server.get(f"/api/environments/{env['id']}")
    assert missing.status_code == 404 and "GET /api/environments" in missing.json()["error"]
    assert server.get("/api/environments").json()["environments"] == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"repo": "/no/such/repository"}, "does not exist"),
        ({"setup": "  "}, "setup is empty"),
        ({"secrets": {"BAD-NAME": "x"}}, "not an environment variable name"),
        ({"secrets": {"TOKEN": ""}}, "secret TOKEN is empty"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"shell": "bash"}, "shell"),
    ],
)
def test_a_wrong_environment_is_a_422_sentence(server, tmp_path, change, words):
    repo = make_repo(tmp_path / "inventory")
    response = server.post("/api/environments", json={"repo": str(repo), "setup": "true", **change})
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]


def test_a_task_runs_setup_with_network_and_secrets_and_keeps_its_leftovers_out(
    server, recordings, tmp_path, index_url
):
    repo = make_repo(tmp_path / "inventory")
    body = {
        "repo": str(repo),
        "setup": setup_command(index_url),
        "network": True,
        "secrets": {"DEPLOY_TOKEN": SECRET},
    }
    assert server.post("/api/environments", json=body).status_code == 201
    created = server.create(repo, recordings["good"])
    task = server.wait(created["id"], ("passed", "failed", "error", "untested"))
    assert task["state"] == "passed", task

    events = stream(server, created["id"], until=lambda e: e["type"] == "task.finished")
    assert SECRET not in json.dumps(events)
    by_type = {event["type"]: event["data"] for event in events}
    ran, started = by_type["setup.ran"], by_type["setup.started"]
    assert ran["exit_code"] == 0 and "fetched b'index-ok'" in ran["output"]
    assert "token=[secret DEPLOY_TOKEN]" in ran["output"] and ran["left_out"] == [".venv"]
    assert started["secrets"] == ["DEPLOY_TOKEN"] and started["network"]

    diff = server.get(f"/api/tasks/{created['id']}/diff").json()["diff"]
    assert ".venv" not in diff and "inventory/export.py" in diff
    files = git("show", "--name-only", "--format=", task["commit"], cwd=repo).split()
    assert files == ["inventory/export.py"]


def test_the_repositorys_own_pullsmith_toml_gives_the_environment(server, recordings, tmp_path):
    repo = make_repo(tmp_path / "inventory")
    (repo / "pullsmith.toml").write_text(
        '[environment]\nsetup = "echo from-file=$REPO_TOKEN"\nsecrets = ["REPO_TOKEN"]\n'
    )
    git("add", "pullsmith.toml", cwd=repo)
    git("commit", "-q", "-m", "environment", cwd=repo)
    lookup = server.get("/api/environments/lookup", params={"repo": str(repo)}).json()
    assert lookup["environment"]["source"] == "pullsmith.toml"
    assert lookup["environment"]["secrets"] == ["REPO_TOKEN"]

    created = server.create(repo, recordings["good"])
    task = server.wait(created["id"], ("passed", "failed", "error", "untested"))
    assert task["state"] == "passed", task
    ran = server.wait_event(created["id"], lambda e: e["type"] == "setup.ran")["data"]
    assert ran["output"].strip() == "from-file=[secret REPO_TOKEN]"

    # A secret the service's environment does not have: the task is refused, with the fix.
    (repo / "pullsmith.toml").write_text(
        '[environment]\nsetup = "true"\nsecrets = ["NOT_EXPORTED_TOKEN"]\n'
    )
    refused = server.post("/api/tasks", json={"repo": str(repo), "instruction": "fix it"})
    assert refused.status_code == 422
    assert "$NOT_EXPORTED_TOKEN is not set" in refused.json()["error"]
