"""`pullsmith mcp-server`: pullsmith as an MCP server (stdio), so another agent or an editor
can hand it work.

Two tools, each one task through the Engine exactly as `pullsmith exec` runs it (a
`ThreadExecutor(1)`, the `LocalPublisher`, settings from the config files, the environment and
the tool's `model` argument):

- `run_task(instruction, repo, base?, attempts?, model?)`: a new branch from `base`;
- `follow_up(pull_request, instruction, model?)`: more work on a pull request's branch
  (`exec --continue`).

Each returns the task id, status, branch, diff stat, test verdict, pull request number and
summary; while it runs, the steps of its event stream are progress notifications. A task that
can not run, or ends in an error, is a tool error of one sentence.

This is a front end: nothing imports it.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from pullsmith import __version__
from pullsmith.attempt import run_dir_for
from pullsmith.config import Settings, load_settings
from pullsmith.engine import Engine
from pullsmith.errors import UserError
from pullsmith.events import Event
from pullsmith.executors import ThreadExecutor
from pullsmith.pr import commands as pr_commands
from pullsmith.pr.publish import LocalPublisher
from pullsmith.task import AttemptResult, Task
from pullsmith.workspace import is_url

POLL_S = 0.2
INSTRUCTIONS = (
    "pullsmith turns a task written in words into a tested commit on a new branch of a git "
    "repository, recorded as a local pull request. Call run_task with the instruction and the "
    "repository's absolute path; call follow_up with a pull request's number for more work "
    "on its branch. Each call runs the whole task (minutes with a local model) and reports "
    "its steps as progress."
)


def build_server() -> MCPServer:
    """The MCP server with pullsmith's tools."""
    server = MCPServer("pullsmith", instructions=INSTRUCTIONS, version=__version__)

    @server.tool(
        name="run_task",
        description=(
            "Run a task on a git repository: pullsmith works on a new branch in a sandbox, "
            "runs the tests, commits and records a local pull request. Returns the branch, "
            "the diff stat, the test verdict and the pull request number."
        ),
    )
    async def run_task(
        instruction: Annotated[str, Field(description="What to do, in words.")],
        repo: Annotated[str, Field(description="The repository: an absolute path or a git URL.")],
        ctx: Context,
        base: Annotated[
            str | None, Field(description="Branch, tag or commit to start from (default HEAD).")
        ] = None,
        attempts: Annotated[
            int, Field(description="Independent attempts; the visible tests pick the best.")
        ] = 1,
        model: Annotated[
            str | None, Field(description="The model (default: the configured one).")
        ] = None,
    ) -> dict[str, Any]:
        if not instruction.strip():
            raise ToolError("The instruction is empty; say what you want done.")
        if attempts < 1:
            raise ToolError("attempts must be 1 or more.")
        settings = _settings(model)
        task = Task(instruction=instruction, repo=_repo(repo), base=base or None, attempts=attempts)
        return await run_through_engine(settings, task, ctx)

    @server.tool(
        name="follow_up",
        description=(
            "Follow a pull request of pullsmith's up: more work on its branch with the earlier "
            "work as a briefing, recorded on the same pull request. Returns what run_task does."
        ),
    )
    async def follow_up(
        pull_request: Annotated[int, Field(description="The pull request's number.")],
        instruction: Annotated[str, Field(description="What to do next, in words.")],
        ctx: Context,
        model: Annotated[
            str | None, Field(description="The model (default: the configured one).")
        ] = None,
    ) -> dict[str, Any]:
        if not instruction.strip():
            raise ToolError("The instruction is empty; say what you want done.")
        settings = _settings(model)
        try:
            task, _ = await anyio.to_thread.run_sync(
                pr_commands.follow_up_task,
                settings,
                str(pull_request),
                instruction,
                False,
                ".",
                None,
            )
        except UserError as exc:
            raise ToolError(exc.message) from None
        return await run_through_engine(settings, task, ctx)

    return server


def serve() -> None:
    """Serve the tools on stdin and stdout until the client goes away."""
    build_server().run()


async def run_through_engine(settings: Settings, task: Task, ctx: Context) -> dict[str, Any]:
    """Run `task` as `exec` does, each step of its event stream a progress notification."""
    events: queue.Queue[Event] = queue.Queue()
    run_dir = run_dir_for(settings, task.task_id)
    executor = ThreadExecutor(1, log_path=run_dir / "model-server.log")
    engine = Engine(settings, executor, LocalPublisher(settings))
    step = 0
    handle = None
    try:
        handle = engine.submit(task, [events.put])
        while True:
            done = handle.done()  # before draining: every event is queued once it is set
            while True:
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    break
                message = progress_message(event)
                if message:
                    step += 1
                    await ctx.report_progress(step, None, message)
            if done:
                break
            await anyio.sleep(POLL_S)
        result = handle.result()
    except UserError as exc:
        raise ToolError(exc.message) from None
    finally:
        if handle is not None and not handle.done():
            handle.cancel()  # the client went away or cancelled the request
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(engine.close)
    if result.status == "error":
        raise ToolError((result.error or "the run failed").rstrip())
    return result_summary(result)


def result_summary(result: AttemptResult) -> dict[str, Any]:
    """What a tool call returns about a finished task."""
    after = result.tests_after
    verdict = "not run" if after is None else ("passed" if after.passed else "failed")
    return {
        "task_id": result.task_id,
        "status": result.status,
        "branch": result.branch,
        "commit": result.commit,
        "diff_stat": result.diff_stat,
        "tests": verdict,
        "test_command": after.command if after is not None else result.test_command,
        "pull_request": result.pull_request,
        "summary": result.summary,
        "exit_reason": result.exit_reason,
    }


def progress_message(event: Event) -> str | None:
    """One line about an event worth a progress notification, or None."""
    d = event.data
    kind = event.type
    if kind == "task.started":
        return f"started on {d['repo']} with {d['model']}"
    if kind == "tests.ran":
        return f"tests {d['phase']}: exit code {d['exit_code']}"
    if kind == "command.finished":
        command = " ".join(str(d["command"]).split())
        command = command if len(command) <= 80 else command[:79] + "…"
        return f"turn {d['turn']}: `{command}` exited {d['exit_code']}"
    if kind == "mcp.called":
        return f"turn {d['turn']}: MCP {d['server']} {d['tool']} ({'ok' if d['ok'] else 'failed'})"
    if kind == "agent.finished":
        return f"turn {d['turn']}: the model finished"
    if kind == "limit.reached":
        return f"stopped: {d['reason']}"
    if kind == "commit.created":
        return f"committed {str(d['commit'])[:12]} on {d['branch']}"
    if kind in ("pr.opened", "pr.updated"):
        return f"pull request #{d['number']} {kind.split('.')[1]} (tests {d['checks']})"
    if kind == "warning":
        return f"warning: {d['message']}"
    if kind == "task.finished":
        return f"finished: {d['status']}"
    return None


def _settings(model: str | None) -> Settings:
    try:
        return load_settings({"model": model})
    except UserError as exc:
        raise ToolError(exc.message) from None


def _repo(repo: str) -> str:
    """An absolute repository path (a URL as it is); relative paths are refused, since the
    server's directory is rarely the caller's."""
    if is_url(repo):
        return repo
    path = Path(repo).expanduser()
    if not path.is_absolute():
        raise ToolError(f"repo must be an absolute path or a git URL, not {repo!r}.")
    return str(path.resolve())
