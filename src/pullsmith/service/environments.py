"""Environments in the service: per repository, a setup command run before each attempt's agent.

A task's environment is the service's own for its repository (set through the API or the web
UI, kept in `service_environments`), or else the `[environment]` table of the `pullsmith.toml`
at the top of the repository's working tree, whose secrets are read from the service's own
environment variables. The service's settings never give a task an environment of another
repository's: the `[environment]` of the directory `pullsmith serve` started in is not used.

Secret values go to the setup command only; the API shows their names, never their values.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from pullsmith.config import SECRET_NAME, Environment, config_table, environment_from_table
from pullsmith.errors import UserError
from pullsmith.service.errors import Invalid, NotFound
from pullsmith.service.tables import ServiceEnvironment
from pullsmith.store import Store, utcnow

MAX_TIMEOUT_S = 24 * 3600.0
MAX_SECRETS = 50


class EnvironmentRequest(BaseModel):
    """A repository's environment, to create or replace."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="The repository's absolute path or URL, as tasks name it.")
    setup: str = Field(
        description="The shell command run in the sandbox on each attempt's fresh worktree, "
        "before the agent (e.g. `pip install -e .`)."
    )
    network: bool = Field(False, description="The setup command may use the network.")
    secrets: dict[str, str] | None = Field(
        None,
        description="Environment variables the setup command gets, by name. Left out: the "
        "values kept so far stay; {} removes them all.",
    )
    timeout_s: float = Field(600.0, gt=0, le=MAX_TIMEOUT_S, description="Seconds setup may run.")


class Environments:
    """The service's environments in its store, and the environment of a task's repository."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, body: EnvironmentRequest, repo: str) -> tuple[ServiceEnvironment, bool]:
        """Create or replace the environment of `repo` (checked by the caller); and whether it
        was created now."""
        setup = body.setup.strip()
        if not setup:
            raise Invalid('setup is empty; send the command to run, e.g. "pip install -e .".')
        for text in (body.setup, *(body.secrets or {}), *(body.secrets or {}).values()):
            if "\x00" in text:
                raise Invalid("the environment holds a NUL character; send it without one.")
        if body.secrets is not None:
            if len(body.secrets) > MAX_SECRETS:
                raise Invalid(f"an environment holds at most {MAX_SECRETS} secrets.")
            for name, value in body.secrets.items():
                if not SECRET_NAME.match(name):
                    raise Invalid(
                        f"secret name {name!r} is not an environment variable name; use "
                        "letters, digits and underscores, not starting with a digit."
                    )
                if not value:
                    raise Invalid(f"secret {name} is empty; send its value, or leave it out.")
        with self.store.session() as session:
            row = session.scalars(
                select(ServiceEnvironment).where(ServiceEnvironment.repo == repo)
            ).first()
            created = row is None
            if row is None:
                row = ServiceEnvironment(repo=repo, secrets={}, created_at=utcnow())
                session.add(row)
            row.setup = setup
            row.network = body.network
            row.timeout_s = body.timeout_s
            if body.secrets is not None:
                row.secrets = dict(body.secrets)
            row.updated_at = utcnow()
            session.flush()
            session.expunge(row)
        return row, created

    def list(self) -> list[ServiceEnvironment]:
        with self.store.session() as session:
            rows = list(session.scalars(select(ServiceEnvironment).order_by(ServiceEnvironment.id)))
            for row in rows:
                session.expunge(row)
            return rows

    def require(self, env_id: int) -> ServiceEnvironment:
        with self.store.session() as session:
            row = session.get(ServiceEnvironment, env_id)
            if row is None:
                raise NotFound(
                    f"there is no environment {env_id}; GET /api/environments lists them."
                )
            session.expunge(row)
            return row

    def delete(self, env_id: int) -> None:
        with self.store.session() as session:
            row = session.get(ServiceEnvironment, env_id)
            if row is None:
                raise NotFound(
                    f"there is no environment {env_id}; GET /api/environments lists them."
                )
            session.delete(row)

    def row_for(self, repo: str) -> ServiceEnvironment | None:
        with self.store.session() as session:
            row = session.scalars(
                select(ServiceEnvironment).where(ServiceEnvironment.repo == repo)
            ).first()
            if row is not None:
                session.expunge(row)
            return row

    def for_repo(self, repo: str) -> Environment | None:
        """The environment a task on `repo` runs with: the service's, else the repository's
        own pullsmith.toml, else none. UserError when that file's table is wrong."""
        row = self.row_for(repo)
        if row is None:
            return repo_file_environment(repo)
        return Environment(
            setup=row.setup,
            network=row.network,
            secrets=tuple(sorted(row.secrets.items())),
            timeout_s=row.timeout_s,
        )


def repo_file_environment(repo: str) -> Environment | None:
    """The `[environment]` of `repo`'s own pullsmith.toml (a local repository's working tree)."""
    if not Path(repo).is_absolute():
        return None
    path = Path(repo) / "pullsmith.toml"
    table = config_table(path).get("environment")
    return None if table is None else environment_from_table(table, str(path))


def environment_view(row: ServiceEnvironment) -> dict[str, Any]:
    """An environment as the API shows it: secrets by name only."""

    def stamp(value: datetime | None) -> str | None:
        return value.isoformat() + "Z" if value else None

    return {
        "id": row.id,
        "repo": row.repo,
        "setup": row.setup,
        "network": row.network,
        "secrets": sorted(row.secrets),
        "timeout_s": row.timeout_s,
        "created_at": stamp(row.created_at),
        "updated_at": stamp(row.updated_at),
    }


def file_environment_view(repo: str, env: Environment) -> dict[str, Any]:
    return {
        "id": None,
        "repo": repo,
        "setup": env.setup,
        "network": env.network,
        "secrets": env.secret_names,
        "timeout_s": env.timeout_s,
        "source": "pullsmith.toml",
    }


def environments_router(
    environments: Environments,
    check_repo: Callable[[str], str],
    call: Callable[..., Awaitable[Any]],
    max_id: int,
) -> APIRouter:
    """The /api/environments paths. `check_repo` turns what a client sent into the repository
    a task would name (Invalid when it is none); `call` runs blocking work off the event loop."""
    router = APIRouter()
    ident = PathParam(..., ge=1, le=max_id)

    @router.get("/api/environments", summary="List the repositories' environments")
    async def list_environments() -> dict[str, Any]:
        rows = await call(environments.list)
        return {"environments": [environment_view(row) | {"source": "service"} for row in rows]}

    @router.post(
        "/api/environments",
        status_code=201,
        summary="Create or replace a repository's environment",
    )
    async def put_environment(body: EnvironmentRequest, response: Response) -> dict[str, Any]:
        if "\x00" in body.repo:
            raise Invalid("repo holds a NUL character; send it without one.")
        repo = await call(check_repo, body.repo)
        row, created = await call(environments.put, body, repo)
        if not created:
            response.status_code = 200
        return environment_view(row) | {"source": "service", "created": created}

    @router.get(
        "/api/environments/lookup",
        summary="The environment a task on this repository would run with",
    )
    async def lookup_environment(repo: str) -> dict[str, Any]:
        if "\x00" in repo:
            raise Invalid("repo holds a NUL character; send it without one.")
        checked = await call(check_repo, repo)

        def find() -> dict[str, Any] | None:
            row = environments.row_for(checked)
            if row is not None:
                return environment_view(row) | {"source": "service"}
            try:
                env = repo_file_environment(checked)
            except UserError as exc:
                raise Invalid(exc.message) from None
            return None if env is None else file_environment_view(checked, env)

        return {"repo": checked, "environment": await call(find)}

    @router.get("/api/environments/{env_id}", summary="One environment")
    async def get_environment(env_id: int = ident) -> dict[str, Any]:
        row = await call(environments.require, env_id)
        return environment_view(row) | {"source": "service"}

    @router.delete("/api/environments/{env_id}", summary="Remove an environment")
    async def delete_environment(env_id: int = ident) -> dict[str, Any]:
        await call(environments.delete, env_id)
        return {"deleted": env_id}

    return router
