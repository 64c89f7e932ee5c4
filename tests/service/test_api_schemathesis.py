"""`pullsmith serve`'s API against its own OpenAPI schema, property-based (schemathesis).

A real `pullsmith serve` process on 127.0.0.1, with one worker and a replayed run as its model:
a recording (written by hand) that fixes a one-file repository whose test takes milliseconds,
so every task that is created finishes in about a second. Any other model name would go to a
closed port of 127.0.0.1. Before the fuzzing, one task runs to the end and records PR #1, so
generated cases can hit a real task and a real pull request and not only 404s.

For each operation of /openapi.json, schemathesis generates 25 requests (positive and negative
data, derandomized so that a run is reproducible; no shrinking, to keep the time bounded), sent
with the token header. Every response must:

- not be a 5xx, and leave no traceback in the server's output;
- conform to the schema (its content type and its body's schema, for a documented status);
- if it is an error (4xx), be JSON {"error": "one sentence."} and nothing else;
- for schema-invalid (negative) data, be a rejection;
- for a finished task's event stream, end with task.finished (unless it resumes past it).

Positive cases are steered towards the fixtures: a path's task id or PR number is sometimes the
real one, and POST /api/tasks sometimes names the real repository. A created task's `model` is
always the service's replay, a replay that does not exist, or left out: an arbitrary model name
would start real model work. A URL-like `repo` is replaced too (it would be cloned).

Then, boundary values the generator rarely reaches (64-bit integers, NUL bytes), sent as
schemathesis cases with the same checks; and the schema's own gaps. Each known bug is an
`xfail(strict=True, raises=KnownBug)` that names it: the test still runs, it fails if the
failure is another one than the bug named (KnownBug is raised only when the failure shows the
bug's signature), and it fails once the bug is fixed (then remove the mark). No bug is known
now: the ones this test found (64-bit overflows, NUL bytes, a non-UTF-8 body, undocumented
statuses, the 405's Allow header) are fixed.

What is not checked here: `positive_data_acceptance` (the schema allows inputs the service
rightly refuses with 422: an empty instruction, an unknown state, a repo that does not exist).
To explore beyond the fixed examples, run the CLI against a server: `st run
http://127.0.0.1:PORT/openapi.json -H "Authorization: Bearer TOKEN" --checks all`.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from conftest import git
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from service_helpers import Server, server_env, write_history

from pullsmith.workspace import is_url

MAX_EXAMPLES = 25
# Every operation of the schema, in the order they are tested (test_the_list_is_complete
# keeps it in step with /openapi.json).
OPERATIONS = [
    ("GET", "/api/health"),
    ("GET", "/api/tasks"),
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks/{task_id}"),
    ("GET", "/api/tasks/{task_id}/diff"),
    ("GET", "/api/tasks/{task_id}/events"),
    ("POST", "/api/tasks/{task_id}/cancel"),
    ("POST", "/api/tasks/{task_id}/follow-up"),
    ("POST", "/api/tasks/{task_id}/pr"),
    ("GET", "/api/prs"),
    ("GET", "/api/prs/{number}"),
    ("POST", "/api/prs/{number}/merge"),
    ("GET", "/api/environments"),
    ("POST", "/api/environments"),
    ("GET", "/api/environments/lookup"),
    ("GET", "/api/environments/{env_id}"),
    ("DELETE", "/api/environments/{env_id}"),
]
BIG = 2**63  # one past SQLite's largest INTEGER
NO_RUN = "replay:/nonexistent/pullsmith-run"
# A one-file repository whose test (`python calc.py`) takes milliseconds, and a recorded run
# (written by hand, replayed) that fixes it and finishes.
BUGGY = (
    "def add(a, b):\n    return a - b\n\n\nif __name__ == '__main__':\n    assert add(2, 3) == 5\n"
)
FIXED = BUGGY.replace("return a - b", "return a + b  # fixed")
REPLIES = [
    f"The sign is wrong.\n```bash\ncat > calc.py <<'EOF'\n{FIXED}EOF\n```",
    '```bash\nfinish "add() adds"\n```',
]
FINISHED = ("passed", "failed", "passed-unfinished", "untested", "error", "cancelled")


class KnownBug(Exception):
    """A failure that shows the signature of a bug an xfail names."""


@contextlib.contextmanager
def known_bug(signature: str | None) -> Iterator[None]:
    """Turn a failure whose text holds `signature` into KnownBug; let any other through."""
    if signature is None:
        yield
        return
    try:
        yield
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
        if signature in failure_text(exc):
            raise KnownBug(signature) from exc
        raise


def failure_text(exc: BaseException) -> str:
    """All an exception says: its traceback, notes, and each schemathesis failure's message."""
    parts = ["".join(traceback.format_exception(exc)), *getattr(exc, "__notes__", [])]
    parts += [str(getattr(exc, name, "")) for name in ("title", "message")]
    for inner in getattr(exc, "exceptions", ()):
        parts.append(failure_text(inner))
    return "\n".join(parts)


def known(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(reason=reason, strict=True, raises=KnownBug)


class Api:
    """The server, its schema, and what the fixtures made there."""

    def __init__(
        self, server: Server, repo: str, task_id: str, pr: int, good: str, env_repo: str
    ) -> None:
        self.server = server
        self.repo = repo
        # Generated environments go to this repository of their own: their setup commands
        # never run before the fixture's or the generated tasks.
        self.env_repo = env_repo
        self.task_id = task_id
        self.pr = pr
        self.good = good
        self.last_event = _last_event_id(server, task_id)
        self.schema = schemathesis.openapi.from_url(
            f"{server.base}/openapi.json", headers=server.headers(), timeout=30
        )
        # schemathesis reads 20 events of a stream by default; read a task's whole stream.
        self.schema.config.max_stream_events = 10_000

    def operation(self, method: str, path: str) -> Any:
        return self.schema[path][method]

    def validate(self, case: Any, checks: list[Any] | None = None) -> Any:
        """Send `case` with the token, run the checks on its response, and check that the
        server printed no traceback meanwhile."""
        before = len(self.server.errors)
        try:
            response = case.call(headers=self.server.headers(), timeout=30)
        except requests.RequestException as exc:  # the response broke off
            time.sleep(0.2)
            raise AssertionError(
                f"{case.method} {case.formatted_path}: the response broke off ({exc}); the "
                f"server printed:\n{self.server.errors[before:]}"
            ) from exc
        streamed = case.path.endswith("/events") and response.status_code == 200
        if response.status_code >= 500 or streamed:
            time.sleep(0.2)  # uvicorn logs an error once the response (or the stream) ended
        printed = self.server.errors[before:]
        case.validate_response(
            response,
            checks=checks if checks is not None else self.checks(),
            headers=self.server.headers(),
        )
        assert "Traceback" not in printed, (
            f"{case.method} {case.formatted_path} ({response.status_code}) made the server "
            f"print:\n{printed}"
        )
        return response

    def checks(self) -> list[Any]:
        return [
            not_a_server_error,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
            errors_are_one_sentence,
            self.streams_end,
        ]

    def streams_end(self, ctx: Any, response: Any, case: Any) -> None:
        """A finished task's event stream ends with task.finished, unless it resumes past it."""
        if not case.path.endswith("/events") or response.status_code != 200:
            return
        if (case.path_parameters or {}).get("task_id") != self.task_id:
            return
        cursor = (case.query or {}).get("after") or 0
        header = {k.lower(): v for k, v in (case.headers or {}).items()}.get("last-event-id")
        if header is not None and str(header).strip():
            cursor = int(str(header).strip())
        if cursor < self.last_event:
            assert "\nevent: task.finished\n" in response.text, (
                f"the stream after event {cursor} did not end with task.finished: "
                f"{response.text[-300:]!r}"
            )


def _last_event_id(server: Server, task_id: str) -> int:
    response = server.get(f"/api/tasks/{task_id}/events")
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    return max(ids)


def errors_are_one_sentence(ctx: Any, response: Any, case: Any) -> None:
    """An error is JSON {"error": "one sentence."} and nothing else."""
    if response.status_code < 400:
        return
    kind = (response.headers.get("content-type") or [""])[0]
    assert kind.startswith("application/json"), f"an error of type {kind!r}: {response.text!r}"
    body = json.loads(response.text)
    assert isinstance(body, dict) and list(body) == ["error"], f"not {{'error': ...}}: {body!r}"
    message = body["error"]
    assert isinstance(message, str) and message.strip(), f"an empty error: {body!r}"
    assert "\n" not in message, f"an error of more than one line: {message!r}"


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "calc.py").write_text(BUGGY)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "initial", cwd=path)
    return path


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    good = f"replay:{write_history(root / 'recording', REPLIES)}"
    data = root / "data"
    env = server_env(
        data, OPENAI_BASE_URL="http://127.0.0.1:9/v1", PULLSMITH_TEST_COMMAND="python calc.py"
    )
    server = Server(data, "--workers", "1", "--model", good, env=env).start()
    try:
        repo = make_repo(root / "calc")
        created = server.create(repo, good)
        task = server.wait(created["id"], FINISHED, timeout=60)
        assert task["state"] == "passed" and task["pr"], task
        env_repo = make_repo(root / "env-calc")
        yield Api(server, str(repo), task["id"], task["pr"], good, str(env_repo))
    finally:
        server.close()


def test_the_list_is_complete(api):
    listed = sorted(
        (method.upper(), path)
        for path, item in api.schema.raw_schema["paths"].items()
        for method in item
    )
    assert listed == sorted(OPERATIONS)


def test_an_accepted_instruction_can_be_run(api, tmp_path):
    # First, so that it does not wait behind the tasks the generated requests queue.
    repo = make_repo(tmp_path / "calc")
    body = {"repo": str(repo), "instruction": "fix it\x00", "model": api.good}
    case = api.operation("POST", "/api/tasks").Case(body=body)
    response = api.validate(case)
    if response.status_code == 422:
        return  # refused: as good as a run
    task = api.server.wait(response.json()["id"], FINISHED, timeout=60)
    with known_bug("NUL byte in commit log message not allowed"):
        assert task["state"] != "error", task["error"]


def _steer(api: Api, case: Any, data: Any) -> None:
    """Point a positive case at the fixtures now and then, and keep model work out."""
    params = case.path_parameters
    if params and "task_id" in params and data.draw(st.booleans(), label="real task"):
        params["task_id"] = api.task_id
    if params and "number" in params and data.draw(st.booleans(), label="real PR"):
        params["number"] = api.pr
    if case.path.startswith("/api/environments") and data.draw(st.booleans(), label="env repo"):
        if isinstance(case.body, dict):
            case.body["repo"] = api.env_repo
        if isinstance(case.query, dict) and "repo" in case.query:
            case.query["repo"] = api.env_repo
    if case.method == "POST" and case.path == "/api/tasks" and isinstance(case.body, dict):
        repo = case.body.get("repo")
        if data.draw(st.booleans(), label="real repo") or not isinstance(repo, str):
            case.body["repo"] = api.repo
            base = data.draw(st.sampled_from(["generated", None, "main", "HEAD"]), label="base")
            if base != "generated":
                case.body["base"] = base
            case.body["attempts"] = data.draw(st.sampled_from([1, 2]), label="attempts")
        elif is_url(repo):
            case.body["repo"] = "/nonexistent" + "/" + repo.replace(":", "_")
        model = data.draw(st.sampled_from([None, api.good, NO_RUN, "leave out"]), label="model")
        if model == "leave out":
            case.body.pop("model", None)
        else:
            case.body["model"] = model


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests(api, method, path):
    operation = api.operation(method, path)
    positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    has_input = bool(operation.path_parameters or operation.query or operation.headers) or (
        operation.body
    )
    modes = [GenerationMode.POSITIVE]
    if has_input:
        modes.append(GenerationMode.NEGATIVE)
    strategies = {GenerationMode.POSITIVE: positive}
    if has_input:
        strategies[GenerationMode.NEGATIVE] = operation.as_strategy(
            generation_mode=GenerationMode.NEGATIVE
        )
    seen: dict[str, int] = {}

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        mode = data.draw(st.sampled_from(modes), label="mode")
        case = data.draw(strategies[mode], label="case")
        if mode == GenerationMode.POSITIVE:
            _steer(api, case, data)
        response = api.validate(case)
        key = f"{mode.value} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1

    run()
    assert sum(seen.values()) >= 1, seen
    print(f"{method} {path}: {seen}")


# --- boundary values: 64-bit integers and NUL bytes --------------------------------------

OVERFLOW = (
    "integers past 2**63 - 1 are sent to SQLite as they are and raise OverflowError ('Python "
    "int too large to convert to SQLite INTEGER'), since the schema gives them no maximum"
)


def _edge(
    name: str,
    method: str,
    path: str,
    bug: str | None = None,
    signature: str | None = None,
    **parts: Any,
) -> Any:
    """A case of `method path` made of `parts`; with `bug`, an xfail naming it, whose failure
    must show `signature`."""
    marks = [known(bug)] if bug else []
    return pytest.param(method, path, parts, signature, marks=marks, id=name)


EDGES = [
    _edge("tasks offset 2**63-1", "GET", "/api/tasks", query={"offset": BIG - 1}),
    _edge(
        "tasks offset 2**63",
        "GET",
        "/api/tasks",
        query={"offset": BIG},
    ),
    _edge(
        "pr 2**63",
        "GET",
        "/api/prs/{number}",
        path_parameters={"number": BIG},
    ),
    _edge(
        "merge pr 2**63",
        "POST",
        "/api/prs/{number}/merge",
        path_parameters={"number": BIG},
    ),
    _edge(
        "events after 2**63",
        "GET",
        "/api/tasks/{task_id}/events",
        path_parameters={"task_id": "REAL"},
        query={"after": BIG},
    ),
    _edge(
        "events Last-Event-ID 2**63",
        "GET",
        "/api/tasks/{task_id}/events",
        path_parameters={"task_id": "REAL"},
        headers={"Last-Event-ID": str(BIG)},
    ),
    _edge(
        "diff attempt 2**63",
        "GET",
        "/api/tasks/{task_id}/diff",
        path_parameters={"task_id": "REAL"},
        query={"attempt": BIG},
    ),
    _edge(
        "task id with NUL",
        "GET",
        "/api/tasks/{task_id}",
        path_parameters={"task_id": "REAL\x00"},
    ),
    _edge(
        "repo with NUL",
        "POST",
        "/api/tasks",
        body={"repo": "REPO\x00x", "instruction": "fix it", "model": NO_RUN},
    ),
    _edge(
        "base with NUL",
        "POST",
        "/api/tasks",
        body={"repo": "REPO", "instruction": "fix it", "base": "main\x00", "model": NO_RUN},
    ),
    _edge(
        "model with NUL",
        "POST",
        "/api/tasks",
        body={"repo": "REPO", "instruction": "fix it", "model": "replay:\x00"},
    ),
]


def _fill(api: Api, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _fill(api, v) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("REAL", api.task_id).replace("REPO", api.repo)
    return value


@pytest.mark.parametrize(("method", "path", "parts", "signature"), EDGES)
def test_boundary_values(api, method, path, parts, signature):
    case = api.operation(method, path).Case(**_fill(api, parts))
    with known_bug(signature):
        api.validate(case)


def test_a_body_that_is_not_utf8_is_refused_like_other_bad_json(api):
    response = api.server.post(
        "/api/tasks", content=b"\xb5\x9b3", headers={"Content-Type": "application/json"}
    )
    errors_are_one_sentence(None, _response(response), None)
    with known_bug("There was an error parsing the body"):
        assert response.status_code == 422, response.text


def _response(response: httpx.Response) -> Any:
    return schemathesis.Response.from_any(response)


# --- the schema's own gaps ---------------------------------------------------------------


def test_every_status_sent_is_documented(api):
    unknown = api.operation("GET", "/api/tasks/{task_id}").Case(path_parameters={"task_id": "x"})
    finished = api.operation("POST", "/api/tasks/{task_id}/cancel").Case(
        path_parameters={"task_id": api.task_id}
    )
    failed = []
    for case in (unknown, finished):
        try:
            api.validate(case, [status_code_conformance])
        except BaseExceptionGroup as exc:
            if "Undocumented status code" not in failure_text(exc):
                raise
            failed.append(case.formatted_path)
    if failed:
        raise KnownBug(f"undocumented statuses: {failed}")


def test_the_documented_error_is_the_one_sent(api):
    responses = api.schema.raw_schema["paths"]["/api/tasks"]["post"]["responses"]
    schema = responses["422"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = api.schema.raw_schema["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    with known_bug("HTTPValidationError"):
        assert schema.get("required") == ["error"], schema


def test_a_405_allows_every_method_of_the_path(api):
    case = api.operation("GET", "/api/tasks").Case(method="OPTIONS")
    with known_bug("Missing documented methods: GET"):
        api.validate(case, [allow_header_conformance])
