"""`pullsmith serve`: the API and the queue in one process, run by uvicorn until a signal.

The socket is bound before anything is printed, so the URL printed is one that answers. The
first SIGINT or SIGTERM drains (running tasks cancelled and recorded "cancelled", queued ones
kept for the next start); a second Ctrl-C exits at once, and the next start marks what was
running interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from types import FrameType

import uvicorn

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.service.access import Access, resolve_access
from pullsmith.service.app import create_app
from pullsmith.service.queue import TaskService
from pullsmith.store import Store, database_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# How long a stop waits for the cancelled runs to end before it leaves them to the next start.
DRAIN_TIMEOUT_S = 60.0


def redact(url: str) -> str:
    """A database URL with its password replaced by ***."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(
            f"--host {host} is not an address of this machine ({exc.strerror})."
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise UserError(
                f"port {port} on {host} is in use; pass --port with another one (0 picks a free one)."
            ) from None
        raise UserError(
            f"can not listen on {host}:{port} ({exc.strerror}); pass another --host or --port."
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def describe_model(settings: Settings, workers: int) -> str:
    if settings.model and settings.model.startswith("replay:"):
        return f"{settings.model} (a recorded run, played back)"
    if settings.uses_local_model:
        if settings.local_server_url:
            return f"{settings.model_name} (bundled, served at {settings.local_server_url})"
        return (
            f"{settings.model_name} (bundled; one llama.cpp server with {workers} slot"
            f"{'s' if workers != 1 else ''}, started with the first task)"
        )
    where = settings.base_url or "the OpenAI API"
    return f"{settings.model_name} at {where}"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 2,
    token: str | None = None,
) -> int:
    """Run the service until a signal; the exit code."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers}).")
    access = resolve_access(host, settings.data_dir, token)
    sock = bind(host, port)
    store = Store.open(settings)  # its migrations make the service's tables too
    try:
        # The executor connects here (Ray: its cluster); failing, every task stays queued.
        service = TaskService(settings, store, workers)
    except BaseException:
        store.close()
        sock.close()
        raise
    try:
        started = service.start()
    except BaseException:
        service.close(timeout=5)
        store.close()
        sock.close()
        raise
    actual_port = sock.getsockname()[1]
    base = f"http://{url_host(host)}:{actual_port}"
    _announce(settings, access, base, workers, started, service.executor)

    def drain() -> None:
        service.close(timeout=DRAIN_TIMEOUT_S)
        queued = service.count("queued")
        print(
            f"pullsmith serve: stopped; {queued} queued task{'s' if queued != 1 else ''} "
            "wait for the next start.",
            flush=True,
        )

    app = create_app(service, access, on_shutdown=drain)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # the sign-in URL carries the token
        lifespan="on",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )
    server = _Server(config, service)
    try:
        server.run(sockets=[sock])
    finally:
        store.close()
        sock.close()
    return 0


def describe_executor(executor: object, workers: int) -> str:
    describe = getattr(executor, "describe", None)
    if callable(describe):
        return str(describe())
    return f"{workers} worker process{'es' if workers != 1 else ''}"


def _announce(
    settings: Settings,
    access: Access,
    base: str,
    workers: int,
    started: dict[str, int],
    executor: object = None,
) -> None:
    lines = [
        f"pullsmith serve: listening on {base}",
        f"  open      {base}/?token={access.token}",
        f"  api       {base}/api (Authorization: Bearer <token>; docs/api.md, {base}/openapi.json)",
        f"  token     {access.source}" + (" (mode 0600)" if access.path is not None else ""),
        f"  database  {redact(database_url(settings))}",
        f"  executor  {describe_executor(executor, workers)}",
        f"  model     {describe_model(settings, workers)}",
        f"  data      {settings.data_dir}",
    ]
    queue = f"  queue     {started['queued']} queued"
    if started["requeued"]:
        queue += f"; {started['requeued']} interrupted task(s) queued again"
    if started["interrupted"]:
        queue += f"; {started['interrupted']} interrupted twice, left interrupted"
    lines.append(queue)
    lines.append("Ctrl-C stops: running tasks are cancelled, queued ones wait for the next start.")
    print("\n".join(lines), flush=True)


class _Server(uvicorn.Server):
    """uvicorn's Server, whose first signal also starts the drain, and which does not raise
    the signal again once it has stopped (the drain is the clean end)."""

    def __init__(self, config: uvicorn.Config, service: TaskService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            if sig == signal.SIGINT:
                print(
                    "pullsmith serve: interrupted again; exiting now (running tasks are marked "
                    "interrupted at the next start).",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(130)
            return
        print(
            "pullsmith serve: stopping; cancelling the running tasks (Ctrl-C again to exit at "
            "once)…",
            file=sys.stderr,
            flush=True,
        )
        self.service.begin_drain()
        self.should_exit = True
