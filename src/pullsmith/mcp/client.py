"""The MCP client of a run: start its configured servers, list their tools, call them.

The MCP SDK is async and the agent loop is not, so an `McpHub` runs one asyncio loop on a
thread of its own for the whole run; the agent's thread hands it coroutines with
`asyncio.run_coroutine_threadsafe` and waits for their results. Each server lives in one
task of that loop, which enters the SDK's `stdio_client` and `ClientSession` and stays in them
until the hub closes (anyio's scopes must be left by the task that entered them).

A server that does not start, or does not answer `initialize` and `tools/list` within its
`startup_timeout`, is one sentence (a `warning` event) and the run goes on without it. A call
that fails, errs or times out is an `McpResult` with `ok` False: an observation for the model,
never an exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, PaginatedRequestParams

from pullsmith.config import McpServer
from pullsmith.errors import UserError
from pullsmith.events import EventLog, WarningEvent
from pullsmith.mcp.tools import McpCall, McpResult, McpTool, with_native_names
from pullsmith.sandbox import Sandbox, long_lived_process

# How a server is started: its argv, environment and working directory.
Launch = tuple[list[str], dict[str, str], Path | None]
Launcher = Callable[[McpServer], Launch]

# Beyond a server's own timeouts: the time its task gets to notice them and wind down.
GRACE_S = 5.0
# The SDK's shutdown waits up to 2 s for the server to exit, then 2 s after SIGTERM.
CLOSE_S = 8.0
POLL_S = 0.1


def launcher_for(sandbox: Sandbox | None, workspace: Path) -> Launcher:
    """How the servers of a run start: inside `sandbox` (its policy, the workspace as their
    directory) unless the config marks them trusted, then on this machine as they are."""

    def launch(server: McpServer) -> Launch:
        argv = [server.command, *server.args]
        cwd = Path(server.cwd) if server.cwd else workspace
        if server.trusted:
            return argv, dict(server.env), cwd
        assert sandbox is not None, "an untrusted server needs the run's sandbox"
        confined, env = long_lived_process(sandbox, argv, dict(server.env), cwd, own_files(server))
        return confined, env, cwd

    return launch


def own_files(server: McpServer) -> list[Path]:
    """The directories of the files a server's command line names (its script, its package)
    and its `cwd`: a sandboxed server sees them read-only wherever they are."""
    found: list[Path] = []
    for item in (server.command, *server.args, server.cwd or ""):
        path = Path(item).expanduser()
        if not path.is_absolute() or not path.exists():
            continue
        path = path.resolve()
        found.append(path if path.is_dir() else path.parent)
    return list(dict.fromkeys(found))


class _Connection:
    """A started server: its session and tools (used on the hub's loop only)."""

    def __init__(self, server: McpServer, session: ClientSession, tools: list[McpTool]) -> None:
        self.server = server
        self.session = session
        self.tools = tools


class McpHub:
    """The MCP servers of one run, on one asyncio loop on a thread of its own.

    `start()` starts them all at once and keeps those that answered; `tools` is what they
    offer (filtered by `enabled_tools`, with native names); `call()` calls one; `close()`
    stops them and the loop. Each server's stderr goes to `log_dir/mcp-NAME.log` (a temporary
    file without `log_dir`), and its last line is quoted when the server fails to start.
    """

    def __init__(
        self,
        servers: Sequence[McpServer],
        launch: Launcher,
        events: EventLog | None = None,
        log_dir: Path | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.servers = list(servers)
        self.launch = launch
        self.events = events
        self.log_dir = log_dir
        self.cancel = cancel
        self.tools: list[McpTool] = []
        # One sentence per server that did not start (or a tool that enabled_tools names but
        # the server lacks), in the order of the config.
        self.failures: list[str] = []
        self._connections: dict[str, _Connection] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pullsmith-mcp", daemon=True
        )
        self._stop = asyncio.Event()
        self._lifetimes: list[concurrent.futures.Future[None]] = []
        self._logs: list[IO[str]] = []
        self._closed = False

    def __enter__(self) -> McpHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> McpHub:
        """Start every server at once; wait for each to answer or to run out of time."""
        if not self._thread.is_alive():
            self._thread.start()
        readies: list[tuple[McpServer, concurrent.futures.Future[_Connection]]] = []
        for server in self.servers:
            ready: concurrent.futures.Future[_Connection] = concurrent.futures.Future()
            log = self._open_log(server)
            lifetime = asyncio.run_coroutine_threadsafe(self._serve(server, ready, log), self._loop)
            self._lifetimes.append(lifetime)
            readies.append((server, ready))
        tools: list[McpTool] = []
        for (server, ready), log in zip(readies, self._logs, strict=True):
            try:
                connection = ready.result(timeout=server.startup_timeout_s + GRACE_S)
            except concurrent.futures.TimeoutError:
                self._fail(server, _did_not_answer(server))
                continue
            except BaseException as exc:  # whatever the SDK raised, as one sentence
                self._fail(server, _start_failure(server, exc, _last_line(log)))
                continue
            self._connections[server.name] = connection
            tools += connection.tools
            offered = {tool.name for tool in connection.tools}
            if server.enabled_tools is not None:
                for missing in [t for t in server.enabled_tools if t not in offered]:
                    self._fail(
                        server,
                        f"MCP server {server.name} has no tool {missing!r} (named in its "
                        "enabled_tools); the run goes on without it.",
                    )
        self.tools = with_native_names(tools)
        for name, connection in self._connections.items():
            connection.tools = [tool for tool in self.tools if tool.server == name]
        return self

    @property
    def started(self) -> list[str]:
        """The names of the servers that started and answered."""
        return list(self._connections)

    def call(self, call: McpCall) -> McpResult:
        """Call one tool and wait for its result (or its timeout, or the run's cancel)."""
        started = time.monotonic()
        connection = self._connections.get(call.server)
        if connection is None:
            names = ", ".join(sorted(self._connections)) or "none"
            return McpResult(
                False, f"There is no MCP server {call.server!r}; the servers are: {names}."
            )
        if call.tool not in {tool.name for tool in connection.tools}:
            names = ", ".join(tool.name for tool in connection.tools) or "none"
            return McpResult(
                False,
                f"MCP server {call.server} has no tool {call.tool!r}; its tools are: {names}.",
            )
        timeout = connection.server.call_timeout_s
        future = asyncio.run_coroutine_threadsafe(self._call(connection, call, timeout), self._loop)
        deadline = started + timeout + GRACE_S
        while True:
            try:
                ok, output = future.result(timeout=POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if self.cancel is not None and self.cancel.is_set():
                    future.cancel()
                    ok, output = False, "The call was cancelled with the run."
                    break
                if time.monotonic() > deadline:
                    future.cancel()
                    ok, output = False, _timed_out(call, timeout)
                    break
            except BaseException as exc:  # noqa: BLE001 - the model is told, the run goes on
                ok, output = False, f"The call failed: {_describe(exc)}."
                break
        return McpResult(ok, output, round(time.monotonic() - started, 3))

    def close(self) -> None:
        """Stop every server and the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            done, pending = concurrent.futures.wait(self._lifetimes, timeout=CLOSE_S)
            for lifetime in pending:
                lifetime.cancel()
            concurrent.futures.wait(pending, timeout=CLOSE_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=CLOSE_S)
        if not self._thread.is_alive():
            self._loop.close()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()

    # On the hub's loop ---------------------------------------------------------------------

    async def _serve(
        self, server: McpServer, ready: concurrent.futures.Future[_Connection], log: IO[str]
    ) -> None:
        """The life of one server: start, initialize, list tools, wait for the hub to close."""
        try:
            argv, env, cwd = self.launch(server)
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=cwd)
            async with stdio_client(params, errlog=log) as (read, write):
                async with ClientSession(read, write) as session:
                    with anyio.fail_after(server.startup_timeout_s):
                        await session.initialize()
                        tools = await _list_tools(session, server)
                    ready.set_result(_Connection(server, session, tools))
                    await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _call(
        self, connection: _Connection, call: McpCall, timeout: float
    ) -> tuple[bool, str]:
        try:
            with anyio.fail_after(timeout):
                result = await connection.session.call_tool(
                    call.tool, call.arguments, read_timeout_seconds=timeout
                )
        except TimeoutError:
            return False, _timed_out(call, timeout)
        except MCPError as exc:
            if "timed out" in str(exc).lower():
                return False, _timed_out(call, timeout)
            return False, f"MCP server {call.server} refused the call: {exc}."
        except Exception as exc:  # a dead server, a broken pipe
            return False, f"MCP server {call.server} did not answer: {_describe(exc)}."
        return not result.is_error, result_text(result)

    # Helpers -------------------------------------------------------------------------------

    def _open_log(self, server: McpServer) -> IO[str]:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log: IO[str] = open(  # noqa: SIM115 - closed by close()
                self.log_dir / f"mcp-{server.name}.log", "a+", encoding="utf-8"
            )
        else:
            log = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._logs.append(log)
        return log

    def _fail(self, server: McpServer, sentence: str) -> None:
        self.failures.append(sentence)
        if self.events is not None:
            self.events.emit(WarningEvent(message=sentence))


async def _list_tools(session: ClientSession, server: McpServer) -> list[McpTool]:
    tools: list[McpTool] = []
    cursor: str | None = None
    while True:
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        for tool in page.tools:
            if server.enabled_tools is None or tool.name in server.enabled_tools:
                schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
                tools.append(McpTool(server.name, tool.name, tool.description or "", schema))
        cursor = page.next_cursor
        if not cursor:
            return tools


def result_text(result: CallToolResult) -> str:
    """A tool's result as text for the model: its text blocks, else its structured content."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(getattr(block, "text", "")))
        elif kind == "resource" and hasattr(getattr(block, "resource", None), "text"):
            parts.append(str(block.resource.text))  # type: ignore[union-attr]
        else:
            parts.append(f"[{kind or 'unknown'} content left out]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    exc = _leaf(exc)
    text = " ".join(str(exc).split()).rstrip(".")
    return text or type(exc).__name__


def _last_line(log: IO[str]) -> str:
    with contextlib.suppress(OSError, ValueError):
        log.flush()
        log.seek(0)
        lines = [line.strip() for line in log.read().splitlines() if line.strip()]
        log.seek(0, 2)
        return lines[-1][:200] if lines else ""
    return ""


def _did_not_answer(server: McpServer) -> str:
    return (
        f"MCP server {server.name} did not answer within its startup_timeout of "
        f"{server.startup_timeout_s:g} s; the run goes on without it."
    )


def _start_failure(server: McpServer, exc: BaseException, stderr: str) -> str:
    leaf = _leaf(exc)
    if isinstance(leaf, TimeoutError):
        return _did_not_answer(server)
    if isinstance(leaf, UserError):
        return f"MCP server {server.name} was not started: {leaf.message.rstrip('.')}."
    why = _describe(leaf)
    if stderr and stderr not in why:
        why += f"; it said: {stderr.rstrip('.')}"
    return f"MCP server {server.name} did not start ({why}); the run goes on without it."


def _timed_out(call: McpCall, timeout: float) -> str:
    return (
        f"The call of {call.tool} on MCP server {call.server} timed out after {timeout:g} s "
        "(its call_timeout); try something else."
    )
