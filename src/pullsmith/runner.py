"""One task, start to end: workspace, sandbox, test runs, the agent, the commit, the result."""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pullsmith.agent.context import (
    collect_agents_md,
    detect_test_command,
    file_listing,
    relevant_sources,
    source_excerpt,
)
from pullsmith.agent.loop import Agent, AgentLimits, Outcome, clip
from pullsmith.agent.prompts import SYSTEM_PROMPT, TaskContext, first_message, tests_still_fail
from pullsmith.config import Settings, user_config_path
from pullsmith.errors import UserError
from pullsmith.events import EventLog
from pullsmith.models import Model, open_model
from pullsmith.models.base import Usage
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import MIB, CommandResult, Limits, Sandbox, SandboxPolicy, policy_preset
from pullsmith.workspace import Workspace, resolve_repo

TEST_OUTPUT_CHARS = 3000
EDIT_FEEDBACK_CHARS = 2000
WRITES_FILES = re.compile(r">|\bapply_patch\b|\bsed\s+-i|\btee\b|\bmv\b|\bcp\b|\brm\b|\bpatch\b")
TRAILER = "Co-authored-by: pullsmith <pullsmith@users.noreply.local>"


def new_task_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@dataclass(frozen=True)
class FollowUp:
    """Continue earlier work: the same branch, checked out at `worktree`, from its tip.

    `briefing` is the earlier work compacted (the task, the model's summary, the diff so far,
    the last test result); the model reads it after the new instruction.
    """

    branch: str
    start_commit: str
    worktree: str
    briefing: str
    base_ref: str | None = None


@dataclass
class Task:
    """What to do and where."""

    instruction: str
    repo: str = "."
    base: str | None = None
    task_id: str = field(default_factory=new_task_id)
    subdir: str | None = None
    keep_worktree: bool = False
    follow_up: FollowUp | None = None


@dataclass
class TestRun:
    """One run of the repository's tests by pullsmith itself."""

    phase: str
    command: str
    exit_code: int
    output: str
    seconds: float
    timed_out: bool
    event_id: int

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


@dataclass
class AttemptResult:
    task_id: str
    status: str
    exit_reason: str
    instruction: str
    repo: str
    branch: str
    base_commit: str
    worktree: str
    run_dir: str
    base_ref: str = ""
    summary: str = ""
    commit: str | None = None
    diff: str = ""
    diff_stat: str = ""
    test_command: str | None = None
    tests_before: TestRun | None = None
    tests_after: TestRun | None = None
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dir_for(settings: Settings, task_id: str) -> Path:
    return settings.runs_dir / task_id


def sandbox_policy(settings: Settings) -> SandboxPolicy:
    """The policy for the agent's commands: the `sandbox_policy` preset and limits of
    `settings`, our own tools on PATH, no caches left in the diff, and pullsmith's own
    configuration (which may hold API keys) and run logs out of sight."""
    tools_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return policy_preset(
        settings.sandbox_policy,
        env_set={
            "PATH": f"{tools_dir}:{path}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTEST_ADDOPTS": "-p no:cacheprovider",
        },
        hidden_paths=(
            user_config_path().parent,
            Path.cwd() / "pullsmith.toml",
            settings.runs_dir,
        ),
        limits=Limits(
            timeout_s=settings.command_timeout_s,
            output_bytes=settings.sandbox_output_kb * 1024,
            memory_bytes=settings.sandbox_memory_mb * MIB,
            processes=settings.sandbox_processes,
            file_size_bytes=settings.sandbox_file_size_mb * MIB,
            cpu_seconds=settings.sandbox_cpu_s,
            cgroup=settings.sandbox_cgroup,
        ),
    )


class Runner:
    """Runs one task; every step is an event in `events`."""

    def __init__(
        self, task: Task, settings: Settings, events: EventLog, model: Model | None = None
    ) -> None:
        self.task = task
        self.settings = settings
        self.events = events
        self.model = model
        self.run_dir = run_dir_for(settings, task.task_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> AttemptResult:
        started = time.monotonic()
        task, settings = self.task, self.settings
        repo = resolve_repo(task.repo, settings.data_dir / "clones")
        self.events.emit(
            "task.started",
            instruction=task.instruction,
            repo=str(repo),
            base=task.base or "HEAD",
            model=settings.model_name,
            sandbox=settings.sandbox,
        )
        workspace = self._workspace(repo)
        self.events.emit(
            "workspace.created",
            path=str(workspace.path),
            branch=workspace.branch,
            base_commit=workspace.base_commit,
            user_tree_dirty=workspace.dirty,
        )
        result = AttemptResult(
            task_id=task.task_id,
            status="error",
            exit_reason="",
            instruction=task.instruction,
            repo=str(repo),
            branch=workspace.branch,
            base_commit=workspace.base_commit,
            worktree=str(workspace.path),
            run_dir=str(self.run_dir),
            base_ref=workspace.base_ref,
            model=settings.model_name,
        )
        sandbox = make_sandbox(
            settings.sandbox,
            workspace.path,
            sandbox_policy(settings),
            image=settings.sandbox_image,
        )
        owns_model = self.model is None
        try:
            self._attempt(workspace, sandbox, result)
        except UserError as exc:
            result.status, result.exit_reason, result.error = "error", "error", exc.message
            self.events.emit("error", message=exc.message)
            self._finish(workspace, result, started)
            raise
        finally:
            sandbox.close()
            if owns_model and self.model is not None:
                self.model.close()
        self._finish(workspace, result, started)
        return result

    def _workspace(self, repo: Path) -> Workspace:
        follow_up = self.task.follow_up
        if follow_up is None:
            return Workspace.create(
                repo, self.task.task_id, self.settings.worktrees_dir, base=self.task.base
            )
        # The branch's tip is this run's base: its diff and commit are the follow-up's own.
        return Workspace.open(
            repo,
            Path(follow_up.worktree),
            follow_up.branch,
            follow_up.start_commit,
            self.task.task_id,
            base_ref=follow_up.base_ref,
        )

    def _instruction(self) -> str:
        follow_up = self.task.follow_up
        if follow_up is None or not follow_up.briefing.strip():
            return self.task.instruction
        return f"{self.task.instruction.strip()}\n\n{follow_up.briefing.strip()}"

    def _attempt(self, workspace: Workspace, sandbox: Sandbox, result: AttemptResult) -> None:
        agents_md = collect_agents_md(
            workspace.path, Path(self.task.subdir) if self.task.subdir else None
        )
        test_command = self.settings.test_command or detect_test_command(workspace.path, agents_md)
        result.test_command = test_command
        before = self._run_tests(sandbox, test_command, "before")
        result.tests_before = before
        sources: tuple[str, ...] = ()
        if before and not before.passed:
            paths = relevant_sources(workspace.path, before.output)
            sources = tuple(source_excerpt(workspace.path, path) for path in paths)
        context = TaskContext(
            instruction=self._instruction(),
            files=file_listing(workspace.path),
            agents_md=agents_md,
            test_command=test_command,
            test_exit_code=before.exit_code if before else None,
            test_output=clip(before.output, TEST_OUTPUT_CHARS) if before else "",
            sources=sources,
        )
        if self.model is None:
            self.model = open_model(self.settings, log_path=self.run_dir / "model-server.log")

        def verify() -> str | None:
            run = self._run_tests(sandbox, test_command, "check")
            if run is None or run.passed:
                return None
            return tests_still_fail(run.command, run.exit_code, clip(run.output, TEST_OUTPUT_CHARS))

        agent = Agent(
            self.model,
            sandbox,
            self.events,
            limits=self._agent_limits(),
            verify=verify,
            history_path=self.run_dir / "history.json",
            after_command=ChangeReporter(self, workspace, sandbox, test_command),
        )
        try:
            outcome = agent.run(SYSTEM_PROMPT, first_message(context))
        finally:
            result.turns = agent.turns
            result.usage = agent.usage
            result.model_seconds = round(agent.model_seconds, 3)
        after = self._run_tests(sandbox, test_command, "after")
        result.tests_after = after
        result.summary = outcome.summary
        result.exit_reason = outcome.exit_reason
        result.status = self._status(outcome, after)

    def _agent_limits(self) -> AgentLimits:
        s = self.settings
        return AgentLimits(
            max_turns=s.max_turns,
            max_time_s=s.max_time_s,
            max_tokens=s.max_tokens,
            context_tokens=s.n_ctx if s.uses_local_model else None,
            reply_tokens=s.max_reply_tokens,
            format_errors=s.format_error_limit,
            finish_retries=s.finish_retries,
        )

    @staticmethod
    def _status(outcome: Outcome, after: TestRun | None) -> str:
        if after is None:
            return "untested"
        if after.passed:
            return "passed" if outcome.finished else "passed-unfinished"
        return "failed"

    def _run_tests(self, sandbox: Sandbox, command: str | None, phase: str) -> TestRun | None:
        if not command:
            return None
        self.events.emit("tests.started", phase=phase, command=command)
        res = sandbox.run(command, timeout_s=max(self.settings.command_timeout_s, 300.0))
        event = self.events.emit(
            "tests.ran",
            phase=phase,
            command=command,
            exit_code=res.exit_code,
            seconds=round(res.duration_s, 3),
            output=res.output,
            timed_out=res.timed_out,
        )
        return TestRun(
            phase=phase,
            command=command,
            exit_code=res.exit_code,
            output=res.output,
            seconds=round(res.duration_s, 3),
            timed_out=res.timed_out,
            event_id=event.id,
        )

    def _finish(self, workspace: Workspace, result: AttemptResult, started: float) -> None:
        result.diff = workspace.diff()
        result.diff_stat = workspace.diff_stat()
        if result.diff.strip():
            result.commit = workspace.commit(commit_message(result), trailer=TRAILER)
            if result.commit:
                self.events.emit("commit.created", commit=result.commit, branch=workspace.branch)
        if result.commit is None and result.status == "error" and result.turns == 0:
            # Nothing was done: leave no empty branch behind (a follow-up's holds earlier work).
            workspace.remove(delete_branch=self.task.follow_up is None)
            result.worktree = ""
        elif not self.task.keep_worktree and result.status != "error":
            # The branch holds the work; the checkout can go.
            workspace.remove()
            result.worktree = ""
        result.wall_seconds = round(time.monotonic() - started, 3)
        (self.run_dir / "result.json").write_text(
            json.dumps(result.to_dict(), indent=1, default=str), encoding="utf-8"
        )
        self.events.emit(
            "attempt.finished",
            status=result.status,
            exit_reason=result.exit_reason,
            summary=result.summary,
            branch=result.branch,
            commit=result.commit,
            diff_stat=result.diff_stat,
            diff=result.diff,
            turns=result.turns,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cached_tokens=result.usage.cached_tokens,
            wall_seconds=result.wall_seconds,
            worktree=result.worktree,
        )


class ChangeReporter:
    """Tells the model what its last command changed, and what the tests say about it.

    A small model rarely notices on its own that a rewrite left a file as it was, and running
    the tests after every edit saves it a turn each time.
    """

    def __init__(
        self, runner: Runner, workspace: Workspace, sandbox: Sandbox, test_command: str | None
    ) -> None:
        self.runner = runner
        self.workspace = workspace
        self.sandbox = sandbox
        self.test_command = test_command
        self.last_diff = workspace.diff()

    def __call__(self, command: str, result: CommandResult) -> str | None:
        diff = self.workspace.diff()
        if diff == self.last_diff:
            if WRITES_FILES.search(command):
                return (
                    "Note: every file is exactly as it was before this command; it changed nothing."
                )
            return None
        self.last_diff = diff
        changed = ", ".join(f"{p} (+{a} -{r})" for p, a, r in self.workspace.changed_files())
        note = f"Files changed so far: {changed or 'none (everything is back as it started)'}."
        if self.test_command and self.test_command not in command:
            run = self.runner._run_tests(self.sandbox, self.test_command, "edit")
            if run is not None:
                output = clip(run.output, EDIT_FEEDBACK_CHARS).rstrip()
                note += (
                    f"\nAfter this change `{run.command}` exits with code {run.exit_code}:"
                    f"\n```\n{output}\n```"
                )
                if run.passed:
                    note += (
                        "\nThe tests pass now. If the task is done, reply with a ```bash block "
                        'holding only: finish "one sentence saying what you changed"'
                    )
        return note


def commit_message(result: AttemptResult) -> str:
    title = (result.summary or result.instruction).strip().splitlines()[0]
    if len(title) > 72:
        title = title[:71].rstrip() + "…"
    lines = [title, "", f"Task: {result.instruction.strip()}"]
    if result.tests_after is not None:
        verdict = "pass" if result.tests_after.passed else "FAIL"
        lines.append(
            f"Tests: `{result.tests_after.command}` {verdict} (exit {result.tests_after.exit_code})"
        )
    lines.append(f"Run: {result.task_id} ({result.exit_reason or result.status})")
    return "\n".join(lines)


def run_task(
    task: Task, settings: Settings, events: EventLog, model: Model | None = None
) -> AttemptResult:
    """Run one task from start to end; the one code path `exec`, the service and `eval` share."""
    return Runner(task, settings, events, model).run()
