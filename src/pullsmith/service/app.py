"""The service's HTTP API (FastAPI): tasks, their events as Server-Sent Events, pull requests.

docs/api.md describes every path with an example; /openapi.json is the schema. Every /api
path needs the access token (see `pullsmith.service.access`); errors are JSON
{"error": "one sentence saying what to do"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    StreamingResponse,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from pullsmith import __version__
from pullsmith.errors import UserError
from pullsmith.events import EVENT_TYPES
from pullsmith.pr import local as local_prs
from pullsmith.pr.merge import merge as merge_pr
from pullsmith.service.access import COOKIE, Access, token_matches
from pullsmith.service.environments import environments_router
from pullsmith.service.errors import Conflict, Invalid, NotFound, ServiceError
from pullsmith.service.queue import MAX_ATTEMPTS, NewTask, TaskService, check_repo
from pullsmith.service.tables import FINISHED_STATES, ServiceTask
from pullsmith.store import PR_STATES, PullRequestRecord, ReviewRecord, StoreUnavailable
from pullsmith.task import AttemptResult

# How long an idle event stream waits before it sends a comment to keep the connection open.
KEEPALIVE_S = 15.0
EVENT_BATCH = 500
# The web UI: one page (index.html) and its two static files, no build step.
WEB = Path(__file__).resolve().parent / "web"
STATIC = {"app.css": "text/css", "app.js": "text/javascript"}
# Nothing the pages load comes from another origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


# --- request bodies ----------------------------------------------------------------------


# The largest id, number or offset the API takes: the store's integers are 64-bit.
MAX_ID = 2**63 - 1


# What each API operation may answer besides its success, as docs/api.md says.
ERROR_STATUSES = {
    "401": "No token, or a wrong one: send `Authorization: Bearer TOKEN` (or open the printed URL).",
    "403": "A cookie-signed request from another origin.",
    "404": "No such task, pull request or path.",
    "409": "The request conflicts with the state of the task or pull request.",
    "422": "The request is not valid: the sentence says what to send.",
    "503": "The store can't be written just now (read-only, disk full); nothing was kept.",
}
EXTRA_SUCCESS = {
    ("post", "/api/tasks/{task_id}/cancel"): ("202", "The running task was asked to stop."),
    ("post", "/api/tasks/{task_id}/pr"): ("201", "The pull request was recorded now."),
    ("post", "/api/environments"): ("200", "The repository's environment was replaced."),
}


def documented(schema: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI schema with what it really sends: its error shape on every status it
    may answer, the extra success codes, and the token as the security scheme."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string", "description": "One sentence: what to do."}},
        "required": ["error"],
    }
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE},
    }
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if not path.startswith("/api/"):
                continue
            responses = operation.setdefault("responses", {})
            for status, meaning in ERROR_STATUSES.items():
                responses[status] = {"description": meaning, "content": error_body}
            extra = EXTRA_SUCCESS.get((method, path))
            if extra is not None:
                responses[extra[0]] = {
                    "description": extra[1],
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            operation["security"] = [{"bearer": []}, {"cookie": []}]
    return schema


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` serves at `path` (several routes may share a path)."""
    methods: set[str] = set()
    for route in app.routes:
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


class TaskRequest(BaseModel):
    """A task to queue."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="Absolute path of a git repository on the server, or its URL.")
    instruction: str = Field(description="What to do, in words.")
    base: str | None = Field(None, description="Branch, tag or commit to start from (HEAD).")
    attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS, description="Independent attempts.")
    until_pass: bool = Field(False, description="Stop at the first attempt whose tests pass.")
    model: str | None = Field(None, description="Model name, or replay:RUN (the service's).")


class FollowUpRequest(BaseModel):
    """More work on a finished task's pull request."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field(description="What to do next on the same branch, in words.")


class MergeRequest(BaseModel):
    """How to merge a pull request."""

    model_config = ConfigDict(extra="forbid")

    squash: bool = False
    delete_branch: bool = False
    into: str | None = None


# --- views -------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None


def task_view(service: TaskService, row: ServiceTask, detail: bool = False) -> dict[str, Any]:
    result = row.result or {}
    view: dict[str, Any] = {
        "id": row.id,
        "state": row.state,
        "repo": row.repo,
        "base": row.base,
        "instruction": row.instruction,
        "attempts": row.attempts,
        "until_pass": bool(row.until_pass),
        "model": service.model_name(row),
        "created_at": _time(row.created_at),
        "started_at": _time(row.started_at),
        "finished_at": _time(row.finished_at),
        "tries": row.tries,
        "interruptions": row.interruptions,
        "pr": row.pr_number,
        "follows": row.follows,
        "branch": result.get("branch") or None,
        "commit": result.get("commit"),
        "summary": result.get("summary") or "",
        "error": row.error,
        "links": {
            "self": f"/api/tasks/{row.id}",
            "events": f"/api/tasks/{row.id}/events",
            "diff": f"/api/tasks/{row.id}/diff",
        },
    }
    if detail:
        view["model_options"] = {k: v for k, v in (row.model_options or {}).items()}
        view["verdicts"] = verdicts(result) if result else []
        view["usage"] = AttemptResult.from_dict(result).totals() if result else None
        view["result"] = result or None
    return view


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """What the tests said of each attempt (one for a single-attempt task)."""
    keys = ("attempt", "status", "tests_pass", "failing_tests", "changed_lines", "branch")
    listed = [a for a in result.get("attempts") or [] if isinstance(a, dict)]
    if listed:
        chosen = result.get("attempt")
        return [
            {
                **{k: a.get(k) for k in keys},
                "commit": a.get("commit"),
                "chosen": a.get("attempt") == chosen,
            }
            for a in listed
        ]
    after = result.get("tests_after") or None
    return [
        {
            "attempt": result.get("attempt") or 1,
            "status": result.get("status"),
            "tests_pass": bool(after and after.get("exit_code") == 0),
            "tests_exit_code": after.get("exit_code") if after else None,
            "test_command": result.get("test_command"),
            "branch": result.get("branch") or None,
            "commit": result.get("commit"),
            "chosen": True,
        }
    ]


def pr_view(
    pr: PullRequestRecord, body: bool = False, working: Iterable[ServiceTask] = ()
) -> dict[str, Any]:
    """A pull request as the API shows it; `working`: its follow-ups queued or running."""
    view: dict[str, Any] = {
        "number": pr.number,
        "task_id": pr.task_id,
        "repo": pr.repo,
        "title": pr.title,
        "head": pr.head,
        "base": pr.base,
        "state": pr.state,
        "checks": pr.checks,
        "base_commit": pr.base_commit,
        "head_commit": pr.head_commit,
        "created_at": _time(pr.created_at),
        "updated_at": _time(pr.updated_at),
        "merged_at": _time(pr.merged_at),
        "merge_commit": pr.merge_commit,
        "merge_method": pr.merge_method,
        "closed_at": _time(pr.closed_at),
        "remote_url": pr.remote_url,
        # The follow-ups queued or running on its branch: it can be merged once there is none.
        "working": [{"id": row.id, "state": row.state} for row in working],
    }
    if body:
        view["body"] = pr.body
    return view


def review_view(row: ReviewRecord) -> dict[str, Any]:
    """A pull request's stored review as the API shows it: the review (as `pullsmith review
    --json` prints it) and where it was posted."""
    return {
        "id": row.id,
        "created_at": _time(row.created_at),
        "head_commit": row.head_commit,
        "remote_url": row.remote_review_url,
        **row.data,
    }


def sse_frame(event: dict[str, Any]) -> str:
    data = json.dumps(event, ensure_ascii=False, default=str)
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n"


# --- errors ------------------------------------------------------------------------------


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def validation_sentence(errors: list[Any]) -> str:
    """FastAPI's validation errors as one sentence about the first of them."""
    if not errors:
        return "the request is not valid; see /openapi.json for what each path takes."
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = [str(part) for part in first.get("loc", ())]
    where, names = (loc[0] if loc else ""), loc[1:]
    field = ".".join(names)
    if kind == "json_invalid":
        return (
            "the request body is not valid JSON; send a JSON object such as "
            '{"repo": "/path/to/repo", "instruction": "fix the failing test"}.'
        )
    if where == "body" and not names:
        if kind == "missing":
            return "the request has no body; send a JSON object (see docs/api.md)."
        return "the request body must be a JSON object (see docs/api.md)."
    label = {"body": "field", "query": "query parameter", "path": "path parameter"}.get(
        where, where or "value"
    )
    if kind == "missing":
        return f"{label} '{field}' is missing; send it (see docs/api.md)."
    if kind == "extra_forbidden":
        return f"{label} '{field}' is not one this path takes; leave it out (see docs/api.md)."
    message = str(first.get("msg", "is not valid")).rstrip(".")
    message = message[:1].lower() + message[1:]
    return f"{label} '{field}' is not valid ({message}); fix it and send the request again."


# --- access ------------------------------------------------------------------------------


class TokenGate:
    """Every /api request needs the token: `Authorization: Bearer TOKEN` or the cookie."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/api" or path.startswith("/api/")):
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token_matches(given.strip(), self.access.token):
            return None
        if not scheme and token_matches(_cookie(headers), self.access.token):
            origin = headers.get("origin")
            unsafe = scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if unsafe and origin is not None and origin != own:
                return error(
                    403, f"requests from {origin} may not use this service; call it from {own}."
                )
            return None
        return error(
            401,
            "the access token is missing or wrong; send Authorization: Bearer TOKEN with the "
            "token `pullsmith serve` printed (or open the URL it printed once).",
            {"WWW-Authenticate": "Bearer"},
        )


def _cookie(headers: Headers) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


# --- the app -----------------------------------------------------------------------------


def _single_query_values(request: Request) -> None:
    """Every query parameter of the API takes one value: a repeated one is refused (422)
    rather than silently read as its last value."""
    for name in request.query_params:
        count = len(request.query_params.getlist(name))
        if count > 1:
            raise Invalid(f"query parameter {name!r} was given {count} times; give it once.")


def create_app(
    service: TaskService,
    access: Access,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The API over `service`. `on_shutdown` runs when the server stops (the drain)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    app = FastAPI(
        title="pullsmith",
        version=__version__,
        description="A task in words becomes a tested pull request. See docs/api.md.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        dependencies=[Depends(_single_query_values)],
    )
    app.add_middleware(TokenGate, access=access)

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return error(409, exc.message)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # The service's fault (or its disk's), not the request's: 503, said in the log too.
        print(
            f"pullsmith serve: {request.method} {request.url.path} failed: {exc.message}",
            file=sys.stderr,
            flush=True,
        )
        return error(503, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_sentence(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"there is no {request.url.path}; /openapi.json lists the paths there are."
        elif exc.status_code == 405:
            allowed = _allowed_methods(app, request.url.path)
            message = (
                f"{request.method} is not allowed on {request.url.path}; use "
                f"{' or '.join(allowed) or 'another path'} (see /openapi.json)."
            )
            return error(405, message, {"Allow": ", ".join(allowed)})
        elif exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return error(
                422,
                "the request body is not JSON (UTF-8); send a JSON object, e.g. "
                '{"repo": "/path/to/repo", "instruction": "fix X"}.',
            )
        else:
            message = str(exc.detail).rstrip(".") + "."
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        import traceback

        traceback.print_exception(exc)
        return error(
            500,
            f"pullsmith failed handling this request ({type(exc).__name__}); the server's "
            "output has the details.",
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = documented(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(func, *args, **kwargs)

    # --- signing in ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def home(request: Request, token: str | None = None) -> Any:
        if token is not None:
            if not token_matches(token, access.token):
                return error(401, "that token is wrong; open the URL `pullsmith serve` printed.")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                COOKIE, access.token, httponly=True, samesite="strict", max_age=30 * 86400
            )
            return response
        if "text/html" in request.headers.get("accept", ""):
            return page()
        signed_in = token_matches(request.cookies.get(COOKIE), access.token)
        return {
            "service": "pullsmith",
            "version": __version__,
            "signed_in": signed_in,
            "api": "/api",
            "openapi": "/openapi.json",
            "note": "this browser may call the API now"
            if signed_in
            else "open the URL `pullsmith serve` printed (with ?token=) once to sign in",
        }

    # --- the web UI's pages (their data comes from /api, with the cookie) -------------

    @app.get("/tasks/{task_id}", include_in_schema=False)
    async def task_page(task_id: str) -> HTMLResponse:
        return page()

    @app.get("/prs", include_in_schema=False)
    async def prs_page() -> HTMLResponse:
        return page()

    @app.get("/environments", include_in_schema=False)
    async def environments_page() -> HTMLResponse:
        return page()

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC:
            raise StarletteHTTPException(404)
        return FileResponse(WEB / name, media_type=STATIC[name], headers=PAGE_HEADERS)

    app.include_router(
        environments_router(
            service.environments,
            lambda repo: check_repo(repo, service.settings),
            call,
            MAX_ID,
        )
    )

    # --- health ------------------------------------------------------------------------

    @app.get("/api/health", summary="Whether the service is up, and what it runs with")
    async def health() -> dict[str, Any]:
        def counts() -> dict[str, int]:
            return {state: service.count(state) for state in ("queued", "running")}

        return {
            "status": "draining" if service.stopping else "ok",
            "version": __version__,
            "workers": service.workers,
            "executor": "process",
            "model": service.settings.model_name,
            "tasks": await call(counts),
        }

    # --- tasks -------------------------------------------------------------------------

    @app.post("/api/tasks", status_code=201, summary="Queue a task")
    async def create_task(body: TaskRequest) -> dict[str, Any]:
        new = NewTask(**body.model_dump())
        row = await call(service.create, new)
        return task_view(service, row, detail=True)

    @app.get("/api/tasks", summary="List tasks, newest first")
    async def list_tasks(
        state: str | None = Query(None, description="A state, or several comma-separated."),
        repo: str | None = Query(None, description="Only the tasks of this repository."),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0, le=MAX_ID),
    ) -> dict[str, Any]:
        states = tuple(s.strip() for s in (state or "").split(",") if s.strip())
        rows, total = await call(service.list, states, repo, limit, offset)
        return {
            "tasks": [task_view(service, row) for row in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    @app.get("/api/tasks/{task_id}", summary="A task: state, attempts, verdicts, usage, result")
    async def get_task(task_id: str) -> dict[str, Any]:
        row = await call(service.require, task_id)
        return task_view(service, row, detail=True)

    @app.get("/api/tasks/{task_id}/diff", summary="The diff of the chosen attempt (or ?attempt=N)")
    async def task_diff(
        task_id: str, attempt: int | None = Query(None, ge=1, le=MAX_ID)
    ) -> dict[str, Any]:
        return {"task_id": task_id, **(await call(service.diff, task_id, attempt))}

    @app.post("/api/tasks/{task_id}/cancel", summary="Cancel a queued or running task")
    async def cancel_task(task_id: str) -> JSONResponse:
        row, running = await call(service.cancel, task_id)
        view = task_view(service, row)
        view["cancelling"] = running
        return JSONResponse(view, status_code=202 if running else 200)

    @app.post(
        "/api/tasks/{task_id}/follow-up",
        status_code=201,
        summary="Queue a follow-up: a new instruction on the task's pull request branch",
    )
    async def follow_up_task(task_id: str, body: FollowUpRequest) -> dict[str, Any]:
        row = await call(service.follow_up, task_id, body.instruction)
        return task_view(service, row, detail=True)

    @app.post("/api/tasks/{task_id}/pr", summary="Record the task's pull request")
    async def task_pr(task_id: str) -> JSONResponse:
        number, created = await call(service.record_pr, task_id)

        def load() -> dict[str, Any]:
            working = service.working_on([number]).get(number, [])
            return pr_view(service.store.pull_request(number), body=True, working=working)

        view = await call(load)
        view["created"] = created
        return JSONResponse(view, status_code=201 if created else 200)

    @app.get(
        "/api/tasks/{task_id}/events",
        summary="The task's events as Server-Sent Events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def task_events(
        task_id: str,
        after: int | None = Query(None, ge=0, le=MAX_ID, description="Resume after this event id."),
        last_event_id: str | None = Header(None, description="Resume after this event id."),
    ) -> StreamingResponse:
        await call(service.require, task_id)
        cursor = after or 0
        if last_event_id is not None and last_event_id.strip():
            try:
                cursor = int(last_event_id.strip())
                if not 0 <= cursor <= MAX_ID:
                    raise ValueError(cursor)
            except ValueError:
                raise RequestValidationError(
                    [
                        {
                            "type": "int_parsing",
                            "loc": ("header", "Last-Event-ID"),
                            "msg": "must be an event id",
                        }
                    ]
                ) from None
        return StreamingResponse(
            _stream(service, task_id, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # --- pull requests -----------------------------------------------------------------

    @app.get("/api/prs", summary="List pull requests, newest first")
    async def list_prs(
        state: str | None = Query(None, description="open, merged, closed or all (default all)."),
        repo: str | None = Query(None),
    ) -> dict[str, Any]:
        states: tuple[str, ...] | None = None
        if state and state != "all":
            states = tuple(s.strip() for s in state.split(",") if s.strip())
            unknown = [s for s in states if s not in PR_STATES]
            if unknown:
                raise Invalid(
                    f"unknown pull request state {unknown[0]!r}; use open, merged, closed or all."
                )

        def load() -> list[dict[str, Any]]:
            prs = service.store.pull_requests(repo=repo, states=states)
            working = service.working_on()
            return [pr_view(pr, working=working.get(pr.number, [])) for pr in prs]

        return {"prs": await call(load)}

    @app.get("/api/prs/{number}", summary="A pull request, with its description")
    async def get_pr(number: int = PathParam(ge=1, le=MAX_ID)) -> dict[str, Any]:
        def load() -> dict[str, Any]:
            pr = _pull_request(service, number)
            working = service.working_on([number]).get(number, [])
            view = pr_view(pr, body=True, working=working)
            latest = service.store.latest_review(number)
            view["review"] = review_view(latest) if latest is not None else None
            return view

        return await call(load)

    @app.post("/api/prs/{number}/merge", summary="Merge a pull request into its base")
    async def merge(request: Request, number: int = PathParam(ge=1, le=MAX_ID)) -> dict[str, Any]:
        raw = await request.body()
        options = MergeRequest()
        if raw.strip():
            try:
                options = MergeRequest.model_validate_json(raw)
            except ValueError as exc:
                errors = getattr(exc, "errors", lambda: [])()
                for item in errors:
                    item["loc"] = ("body", *item.get("loc", ()))
                raise RequestValidationError(errors) from None

        def run() -> dict[str, Any]:
            pr = _pull_request(service, number)
            try:
                with service.merging(number):
                    merged = merge_pr(
                        service.store,
                        pr,
                        service.settings,
                        squash=options.squash,
                        into=options.into,
                        delete_branch=options.delete_branch,
                    )
            except (ServiceError, StoreUnavailable):
                raise
            except UserError as exc:
                raise Conflict(exc.message) from None
            view = pr_view(merged.pull_request)
            view.update(
                method=merged.method, commit=merged.commit, branch_deleted=merged.branch_deleted
            )
            return view

        return await call(run)

    return app


@cache
def _page_text() -> str:
    return (WEB / "index.html").read_text().replace("{{event_types}}", ",".join(EVENT_TYPES))


def page() -> HTMLResponse:
    """The web UI's page; it renders the task list, a task or the PR list by its path."""
    return HTMLResponse(_page_text(), headers=PAGE_HEADERS)


def _pull_request(service: TaskService, number: int) -> PullRequestRecord:
    with service.store.session() as session:
        pr = session.get(PullRequestRecord, number)
    if pr is None:
        raise NotFound(
            f"there is no pull request #{number}; GET /api/prs lists the ones there are."
        )
    repo = None
    try:
        repo = local_prs.repo_path(pr, service.settings)
    except UserError:
        pass
    return local_prs.refresh(service.store, pr, repo) if pr.state == "open" and repo else pr


async def _stream(service: TaskService, task_id: str, cursor: int) -> AsyncIterator[str]:
    """Every stored event after `cursor`, then each new one, until task.finished (or the
    task ended without one, or the service stops)."""
    yield "retry: 2000\n\n"
    with service.notifier.subscribe(task_id) as wake:
        while True:
            wake.clear()
            # The state first: a finished task's events are all stored before its state.
            row = await run_in_threadpool(service.get, task_id)
            events = await run_in_threadpool(service.events_after, task_id, cursor, EVENT_BATCH)
            for event in events:
                cursor = event.id
                yield sse_frame(event.to_dict())
                if event.type == "task.finished":
                    return
            if len(events) == EVENT_BATCH:
                continue
            if row is None or row.state in FINISHED_STATES:
                return
            if service.stopping and not service.is_running(task_id):
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
