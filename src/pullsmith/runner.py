"""One task, start to end: workspace, sandbox, test runs, the agent, the commit, the result."""

from __future__ import annotations

import dataclasses
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
    evidence_sources,
    file_listing,
)
from pullsmith.agent.failures import failure_count, parse_test_output, summarize
from pullsmith.agent.loop import Agent, AgentLimits, Outcome, clip
from pullsmith.agent.prompts import TaskContext, prompts_for, tests_still_fail
from pullsmith.config import Settings, user_config_path
from pullsmith.errors import UserError
from pullsmith.events import EventLog
from pullsmith.models import Model, open_model
from pullsmith.models.base import Usage
from pullsmith.models.openai_compat import ModelError
from pullsmith.models.profiles import resolve_edit_forms, resolve_protocol
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import MIB, CommandResult, Limits, Sandbox, SandboxPolicy, policy_preset
from pullsmith.tools.edit_forms import classify as classify_edits
from pullsmith.workspace import Workspace, resolve_repo

TEST_OUTPUT_CHARS = 3000
EDIT_FEEDBACK_CHARS = 2000
WRITES_FILES = re.compile(
    r">|\bapply_patch\b|\breplace_function\b|\bsearch_replace\b|\bsed\s+-i|\btee\b|\bmv\b|\bcp\b|\brm\b|\bpatch\b"
)
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
    attempts: int = 1
    until_pass: bool = False
    # Paths the agent's commands must not see (an eval hides its suite, which holds the
    # hidden tests and reference solutions).
    hidden_paths: tuple[str, ...] = ()
    # End the attempt when the model repeats a reply exactly (another attempt follows).
    stop_when_stuck: bool = False


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
    # Best-of-N: which attempt this is (1-based), and every attempt's scores when it was chosen.
    attempt: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "passed"

    @property
    def tests_pass(self) -> bool:
        """Whether pullsmith's own run of the visible tests passed after the agent stopped."""
        return self.tests_after is not None and self.tests_after.passed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dir_for(settings: Settings, task_id: str) -> Path:
    return settings.runs_dir / task_id


def sandbox_policy(settings: Settings, hidden: tuple[str, ...] = ()) -> SandboxPolicy:
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
            *(Path(path) for path in hidden),
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
        self.result: AttemptResult | None = None

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
            protocol=resolve_protocol(settings.protocol, settings.model_name),
            edit_forms=list(resolve_edit_forms(settings.edit_forms, settings.model_name)),
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
        self.result = result
        sandbox = make_sandbox(
            settings.sandbox,
            workspace.path,
            sandbox_policy(settings, task.hidden_paths),
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
        failures = ""
        if before and not before.passed:
            sources = tuple(evidence_sources(workspace.path, before.output))
            failures = summarize(parse_test_output(workspace.path, before.output))
        context = TaskContext(
            instruction=self._instruction(),
            files=file_listing(workspace.path),
            agents_md=agents_md,
            test_command=test_command,
            test_exit_code=before.exit_code if before else None,
            # With the failures summed up above it, the raw output needs less room.
            test_output=clip(before.output, 1500 if failures else TEST_OUTPUT_CHARS)
            if before
            else "",
            test_timed_out=bool(before and before.timed_out),
            failures=failures,
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
            protocol=resolve_protocol(self.settings.protocol, self.settings.model_name),
        )
        try:
            edit_forms = resolve_edit_forms(self.settings.edit_forms, self.settings.model_name)
            outcome = agent.run(*prompts_for(agent.protocol, context, edit_forms))
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
            stuck_repeats=1 if self.task.stop_when_stuck else None,
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
        res = sandbox.run(command, timeout_s=self.settings.test_timeout_s)
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
        for use in classify_edits(command, result.exit_code, result.output):
            self.runner.events.emit("edit", form=use.form, ok=use.ok, detail=use.detail)
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
    """Run one task from start to end; the one code path `exec`, the service and `eval` share.

    With `task.attempts` > 1 the task runs as independent attempts and the one the tests
    like best is returned (see `BestOfN`).
    """
    if task.attempts < 1:
        raise UserError(f"--attempts must be at least 1 (got {task.attempts}).")
    if task.attempts == 1:
        return Runner(task, settings, events, model).run()
    if task.follow_up is not None:
        raise UserError(
            "a follow-up continues one branch, so it runs as one attempt; drop --attempts."
        )
    return BestOfN(task, settings, events, model).run()


# Attempt 1 samples at the configured temperature (the model's best guess); the others
# sample hotter so that they explore different fixes instead of repeating the first.
RETRY_TEMPERATURE = 0.7


class _Sampling:
    """The shared model, sampled at one attempt's temperature (and seed, when one is set)."""

    def __init__(self, model: Model, temperature: float | None, seed: int | None) -> None:
        self.model = model
        self.name = model.name
        self.temperature = temperature
        self.seed = seed

    def complete(self, messages: list[Any], *, temperature: float | None = None, **kw: Any) -> Any:
        if self.seed is not None:
            kw["seed"] = self.seed
        chosen = temperature if temperature is not None else self.temperature
        return self.model.complete(messages, temperature=chosen, **kw)

    def close(self) -> None:
        """The model belongs to the whole task; the attempts leave it open."""


def attempt_rank(result: AttemptResult, root: Path | None = None) -> tuple[int, int, int, int]:
    """Sort key, best first: visible tests pass; then fewest failing tests; then an attempt
    that changed something; then the smallest diff."""
    after = result.tests_after
    if after is None:
        failing = 0 if result.status == "untested" and result.exit_reason == "finished" else 1
    else:
        failing = failure_count(root or Path(result.repo), after.output, after.exit_code)
    changed = sum(
        1
        for line in result.diff.splitlines()
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    )
    return (0 if result.tests_pass else 1, failing, 0 if changed else 1, changed)


def attempt_summary(result: AttemptResult, rank: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "attempt": result.attempt,
        "task_id": result.task_id,
        "branch": result.branch,
        "commit": result.commit,
        "status": result.status,
        "exit_reason": result.exit_reason,
        "tests_pass": result.tests_pass,
        "failing_tests": rank[1],
        "changed_lines": rank[3],
        "turns": result.turns,
        "tokens": result.usage.total_tokens,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cached_tokens": result.usage.cached_tokens,
        "model_seconds": result.model_seconds,
        "wall_seconds": result.wall_seconds,
        "run_dir": result.run_dir,
        "error": result.error,
    }


class BestOfN:
    """N independent attempts at one task, each in its own worktree and on its own branch
    (`pullsmith/<task-id>-<n>`), scored by the repository's visible tests; the best is chosen.

    Every attempt keeps its branch and its run log, so the ones not chosen stay inspectable.
    Attempts share one model (and its prompt cache: they all start from the same prompt).
    """

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
        task, settings = self.task, self.settings
        self.events.emit("attempts.started", attempts=task.attempts, until_pass=task.until_pass)
        owns_model = self.model is None
        results: list[tuple[tuple[int, int, int, int], AttemptResult]] = []
        stopped: UserError | None = None
        try:
            if self.model is None:
                self.model = open_model(settings, log_path=self.run_dir / "model-server.log")
            for number in range(1, task.attempts + 1):
                try:
                    result = self._attempt(number)
                except ModelError as exc:
                    # The model is gone: the attempts already made still count.
                    stopped = exc
                    break
                rank = attempt_rank(result)
                results.append((rank, result))
                self.events.emit("attempt.scored", **attempt_summary(result, rank))
                if task.until_pass and result.tests_pass:
                    break
        finally:
            if owns_model and self.model is not None:
                self.model.close()
        if not results:
            raise stopped or UserError("no attempt ran; see the run log.")
        ranked = sorted(results, key=lambda pair: (pair[0], pair[1].attempt))
        chosen = ranked[0][1]
        chosen.attempts = [attempt_summary(r, k) for k, r in results]
        if stopped is not None:
            self.events.emit("error", message=stopped.message)
        self.events.emit(
            "attempts.selected",
            attempt=chosen.attempt,
            of=len(results),
            branch=chosen.branch,
            status=chosen.status,
            reason=_selection_reason(chosen, [r for _, r in results], task.attempts),
        )
        (self.run_dir / "result.json").write_text(
            json.dumps(chosen.to_dict(), indent=1, default=str), encoding="utf-8"
        )
        return chosen

    def _attempt(self, number: int) -> AttemptResult:
        task, settings = self.task, self.settings
        sub = dataclasses.replace(
            task,
            task_id=f"{task.task_id}-{number}",
            attempts=1,
            until_pass=False,
            # A model stuck repeating itself gets a fresh start in the next attempt.
            stop_when_stuck=number < task.attempts,
        )
        log = EventLog(sub.task_id, run_dir_for(settings, sub.task_id) / "events.jsonl")
        log.subscribe(lambda event: self.events.emit(event.type, attempt=number, **event.data))
        temperature = None if number == 1 else max(settings.temperature, RETRY_TEMPERATURE)
        seed = None if settings.seed is None else settings.seed + number - 1
        assert self.model is not None
        runner = Runner(sub, settings, log, _Sampling(self.model, temperature, seed))
        try:
            result = runner.run()
        except ModelError:
            raise
        except UserError as exc:
            if runner.result is None:
                raise
            result = runner.result
            result.error = result.error or exc.message
        finally:
            log.close()
        result.attempt = number
        return result


def _selection_reason(chosen: AttemptResult, results: list[AttemptResult], asked: int) -> str:
    if len(results) < asked and chosen.tests_pass:
        return f"its tests pass, so --until-pass stopped after {len(results)} of {asked}"
    if len(results) == 1:
        return "the only attempt that ran"
    if chosen.tests_pass:
        passing = sum(1 for r in results if r.tests_pass)
        return f"its tests pass ({passing} of {len(results)} attempts pass)"
    return "no attempt passes the tests; it has the fewest failing tests, then the smallest diff"
