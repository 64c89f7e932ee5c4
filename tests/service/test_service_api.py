"""`pullsmith serve`'s API contract: the access token, and one-sentence errors for bad input."""

from __future__ import annotations

import stat
import subprocess
import sys

import httpx
import pytest
from service_helpers import (
    Server,
    make_repo,
    server_env,
    stream,
)

SECRET = "sk-test-do-not-show-me-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve") / "data"
    server = Server(data, "--workers", "1", env=server_env(data, OPENAI_API_KEY=SECRET)).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repo") / "inventory")


def refused(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert fragment in body["error"], body["error"]
    assert body["error"].endswith(".") and "\n" not in body["error"], body["error"]


def test_the_token_is_made_once_and_kept_private(server):
    path = server.data_home / "pullsmith" / "service-token"
    assert path.read_text().strip() == server.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"token     {path} (mode 0600)" in server.output
    assert "executor  1 worker process" in server.output


def test_every_api_call_needs_the_token(server):
    for path in ("/api/health", "/api/tasks", "/api/prs", "/api/tasks/x/events", "/api/nope"):
        refused(httpx.get(server.base + path), 401, "access token is missing or wrong")
        refused(server.get(path, headers=server.headers("wrong-token")), 401, "Bearer TOKEN")
    refused(httpx.post(server.base + "/api/tasks", json={}), 401, "access token")
    assert server.get("/api/health").json()["status"] == "ok"


def test_the_printed_url_signs_a_browser_in(server):
    refused(httpx.get(server.base + "/?token=wrong"), 401, "that token is wrong")
    signed_in = httpx.get(f"{server.base}/?token={server.token}")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    cookies = {"pullsmith_token": signed_in.cookies["pullsmith_token"]}
    assert httpx.get(server.base + "/api/health", cookies=cookies).status_code == 200
    assert httpx.get(server.base + "/", cookies=cookies).json()["signed_in"] is True
    # No CORS, and a cookie is no use to another origin's page.
    forged = httpx.post(
        server.base + "/api/tasks/x/cancel",
        cookies=cookies,
        headers={"Origin": "http://127.0.0.1:9"},
    )
    refused(forged, 403, "may not use this service")
    preflight = httpx.options(
        server.base + "/api/tasks",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_openapi_lists_every_path(server):
    paths = httpx.get(server.base + "/openapi.json").json()["paths"]
    for path in (
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/diff",
        "/api/tasks/{task_id}/events",
        "/api/tasks/{task_id}/cancel",
        "/api/tasks/{task_id}/pr",
        "/api/prs",
        "/api/prs/{number}/merge",
        "/api/health",
    ):
        assert path in paths, path


def test_bad_tasks_are_refused_with_one_sentence(server, repo, tmp_path, recordings):
    def create(**body):
        return server.post("/api/tasks", json=body)

    (tmp_path / "plain").mkdir()
    refused(create(repo=str(tmp_path / "plain"), instruction="x"), 422, "is not a git repository")
    refused(create(repo=str(tmp_path / "gone"), instruction="x"), 422, "does not exist")
    refused(create(repo="inventory", instruction="x"), 422, "is a relative path")
    refused(create(repo=str(repo), instruction="  "), 422, "the instruction is empty")
    refused(create(repo=str(repo), instruction="x", base="no-such"), 422, "base 'no-such' is not")
    refused(create(repo=str(repo), instruction="x", attempts=0), 422, "field 'attempts'")
    refused(create(repo=str(repo), instruction="x", colour="red"), 422, "'colour' is not one")
    refused(create(instruction="x"), 422, "field 'repo' is missing")
    refused(
        create(repo=str(repo), instruction="x", model="replay:/no/such/run"),
        422,
        "there is no recorded run",
    )
    not_json = server.post(
        "/api/tasks", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    refused(not_json, 422, "the request body is not valid JSON")
    refused(server.post("/api/tasks", json=[1, 2]), 422, "must be a JSON object")
    refused(server.post("/api/tasks"), 422, "the request has no body")
    refused(server.get("/api/tasks", params={"state": "done"}), 422, "unknown state 'done'")
    refused(server.get("/api/tasks", params={"limit": 0}), 422, "query parameter 'limit'")
    refused(server.get("/api/prs", params={"state": "shut"}), 422, "unknown pull request state")
    assert server.get("/api/tasks").json()["total"] == 0


def test_unknown_tasks_and_prs_are_404(server):
    for method, path in (
        ("GET", "/api/tasks/20990101-000000-abcd"),
        ("GET", "/api/tasks/20990101-000000-abcd/diff"),
        ("GET", "/api/tasks/20990101-000000-abcd/events"),
        ("POST", "/api/tasks/20990101-000000-abcd/cancel"),
        ("POST", "/api/tasks/20990101-000000-abcd/pr"),
    ):
        refused(server.request(method, path), 404, "there is no task '20990101-000000-abcd'")
    refused(server.get("/api/prs/7"), 404, "there is no pull request #7")
    refused(server.post("/api/prs/7/merge"), 404, "there is no pull request #7")
    refused(server.get("/api/nothing"), 404, "/openapi.json lists the paths")
    refused(server.request("DELETE", "/api/tasks"), 405, "DELETE is not allowed")


def test_a_queued_task_is_listed_and_cancelled_and_no_secret_shows(server, repo, recordings):
    created = server.create(repo, recordings["sleepy"], base="main")
    assert created["base"] == "main" and created["model"] == recordings["sleepy"]
    assert created["model_options"]["model"] == recordings["sleepy"]
    task_id = created["id"]
    listed = server.get("/api/tasks", params={"state": "queued,running", "limit": 1}).json()
    assert listed["total"] == 1 and listed["tasks"][0]["id"] == task_id
    assert server.get("/api/tasks", params={"offset": 1}).json()["tasks"] == []
    server.wait_event(task_id, lambda e: e["type"] == "command.started")
    # One worker, and it is busy: the next task waits, and a cancel ends it before it starts.
    behind = server.create(repo, recordings["good"])["id"]
    assert server.task(behind)["state"] == "queued"
    cancelled = server.post(f"/api/tasks/{behind}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["cancelling"] is False
    assert stream(server, behind) == []
    for path in ("/api/health", "/api/tasks", f"/api/tasks/{task_id}", "/openapi.json"):
        assert SECRET not in server.get(path).text
    assert server.post(f"/api/tasks/{task_id}/cancel").status_code == 202
    done = server.wait(task_id, ("cancelled",), timeout=20)
    assert SECRET not in str(done)
    refused(server.post(f"/api/tasks/{task_id}/cancel"), 409, "already cancelled")
    never = server.task(behind)
    assert never["state"] == "cancelled" and never["tries"] == 0 and never["started_at"] is None
    refused(server.get(f"/api/tasks/{task_id}/diff?attempt=3"), 404, "has no attempt 3")


def test_serving_the_network_needs_a_chosen_token(tmp_path):
    def serve(*args, **env):
        return subprocess.run(
            [sys.executable, "-c", "from pullsmith.cli import main; main()", "serve", *args],
            env=server_env(tmp_path / "data", **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = serve("--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pullsmith: --host 0.0.0.0 is reachable from other machines")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "pullsmith" / "service-token").exists()
    short = serve("--host", "0.0.0.0", "--port", "0", PULLSMITH_TOKEN="short")
    assert short.returncode == 2 and "shorter than 16 characters" in short.stderr
