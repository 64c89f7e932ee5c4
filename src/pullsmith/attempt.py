"""One attempt at a task: workspace, sandbox, test runs, the agent, the commit, the result."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pullsmith.agent.context import (
    collect_agents_md,
    detect_test_command,
    evidence_sources,
    file_listing,
    without_progress,
)
from pullsmith.agent.failures import (
    TestReport,
    cpu_capped,
    cpu_exceeded,
    cpu_used,
    hang_note,
    parse_test_output,
    summarize,
)
from pullsmith.agent.feedback import ChangeReporter, RewriteGuard
from pullsmith.agent.localize import Candidate, rank_functions
from pullsmith.agent.loop import Agent, AgentLimits, Approve, Outcome, clip
from pullsmith.agent.prompts import (
    TaskContext,
    closing_for,
    prompts_for,
    retry_message,
    tests_still_fail,
)
from pullsmith.agent.protocol import protocol_for
from pullsmith.agent.repair import RepairTry, direct_repair, repair_candidates
from pullsmith.agent.summary import summary_request, write_summary
from pullsmith.config import MIN_ATTEMPT_S, Settings
from pullsmith.errors import UserError
from pullsmith.events import (
    AttemptFinished,
    CommitCreated,
    DiffShrunk,
    ErrorEvent,
    EventLog,
    RanTests,
    RepairTried,
    SetupRan,
    SetupStarted,
    StartedTests,
    SummaryWritten,
    TaskStarted,
    WorkspaceCreated,
)
from pullsmith.models import Model, open_model
from pullsmith.models.prices import check_budget, pricing_for
from pullsmith.models.profiles import resolve_edit_forms, resolve_protocol
from pullsmith.models.replay import REPLAY_PREFIX, is_replay, load_recordings
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import Sandbox, SandboxPolicy
from pullsmith.sandbox.policy import agent_policy
from pullsmith.shrink import ShrinkResult, cannot_decide, shrink
from pullsmith.task import AttemptResult, Task, TestRun
from pullsmith.text import one_line, subject_line
from pullsmith.workspace import Workspace, resolve_repo

if TYPE_CHECKING:
    from pullsmith.mcp.client import McpHub

TEST_OUTPUT_CHARS = 3000
# How much of a direct repair reply its repair.tried event keeps.
REPAIR_REPLY_CHARS = 8000
# The run before the agent may use this many times `test_cpu_s` of CPU time (see cpu_cap).
BEFORE_CPU_FACTOR = 3
# Why a failed attempt keeps its finish summary (summary.written's `reason`).
FAILED_REASON = "the tests fail after this change"
BUDGET_REASON = "the task's time budget was used up"
TRAILER = "Co-authored-by: pullsmith <pullsmith@users.noreply.local>"


@dataclasses.dataclass(frozen=True)
class Findings:
    """The test run before any change, parsed (`report`), and the functions most likely at
    fault for its failures, ranked (`ranked`): made once per attempt, for the first message
    and for direct repair."""

    report: TestReport
    ranked: list[Candidate]


def find_faults(root: Path, before: TestRun) -> Findings:
    """`before`'s failures and the ranking of the functions they most likely reach."""
    root = root.resolve()
    report = parse_test_output(root, before.output)
    return Findings(report, rank_functions(root, report) if report.failures else [])


def task_context(
    root: Path,
    instruction: str,
    agents_md: str,
    test_command: str | None,
    before: TestRun | None,
    test_note: str = "",
    localize: bool = True,
    findings: Findings | None = None,
) -> TaskContext:
    """What the first message is made of, from the test run before any change (`before`):
    the failing tests summed up and the code they point to (benchmarks/localization.py
    measures it the same way); `test_note` says what to tell the model of a run that hung;
    `localize` off shows the tracebacks' files instead of the ranked functions; `findings`,
    `before` already parsed and ranked (see `find_faults`)."""
    sources: tuple[str, ...] = ()
    failures = ""
    if before and not before.passed:
        if findings is None:
            findings = find_faults(root, before)
        sources = tuple(
            evidence_sources(
                root,
                before.output,
                rank=localize,
                report=findings.report,
                ranked=findings.ranked,
            )
        )
        failures = summarize(findings.report)
    return TaskContext(
        instruction=instruction,
        files=file_listing(root),
        agents_md=agents_md,
        test_command=test_command,
        test_exit_code=before.exit_code if before else None,
        # With the failures summed up above it, the raw output needs less room (and none of
        # pytest's progress lines).
        test_output=(
            clip(without_progress(before.output), 1500)
            if failures
            else clip(before.output, TEST_OUTPUT_CHARS)
        )
        if before
        else "",
        test_timed_out=bool(before and before.timed_out),
        test_note=test_note,
        failures=failures,
        sources=sources,
    )


def run_dir_for(settings: Settings, task_id: str) -> Path:
    return settings.runs_dir / task_id


class Attempt:
    """Runs one attempt of a task; every step is an event in `events`.

    `run` raises UserError (after recording what was done in `result` and result.json) when
    the attempt can not go on; `cancel`, once set, ends it between turns and kills a running
    command.
    """

    def __init__(
        self,
        task: Task,
        settings: Settings,
        events: EventLog,
        model: Model | None = None,
        cancel: threading.Event | None = None,
        cost_before: float = 0.0,
        approve: Approve | None = None,
        time_left_s: float | None = None,
    ) -> None:
        self.task = task
        # What is left of the task's time budget (`task_time_s`, best-of-N: after the earlier
        # attempts): the agent's turns stop by then, however long `max_time_s` is.
        self.deadline = time.monotonic() + time_left_s if time_left_s else None
        # A terminal's approval hook for the agent's commands (see Agent); None asks nothing.
        self.approve = approve
        self.settings = settings
        self.events = events
        self.model = model
        self.cancel = cancel or threading.Event()
        # The model's price, and what earlier attempts of the task spent (best-of-N): the
        # task's max_cost counts them all.
        self.pricing = pricing_for(settings)
        self.cost_before = cost_before
        self.run_dir = run_dir_for(settings, task.task_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.result: AttemptResult | None = None
        # The task's first message as this attempt built it (before any account of earlier
        # attempts), once built; best-of-N sends the first one again to the later attempts.
        self.first_message = ""
        # The run's MCP servers (pullsmith.mcp.client.McpHub), while the agent may use them.
        self.mcp: McpHub | None = None

    def run(self) -> AttemptResult:
        started = time.monotonic()
        task, settings = self.task, self.settings
        check_budget(settings, self.pricing)
        repo = resolve_repo(task.repo, settings.data_dir / "clones")
        self.events.emit(
            TaskStarted(
                instruction=task.instruction,
                repo=str(repo),
                base=task.base or "HEAD",
                model=settings.model_name,
                protocol=self._protocol(),
                edit_forms=list(resolve_edit_forms(settings.edit_forms, settings.model_name)),
                sandbox=settings.sandbox,
                price=self.pricing.describe(),
                max_cost=settings.max_cost,
            )
        )
        workspace = self._workspace(repo)
        self.events.emit(
            WorkspaceCreated(
                path=str(workspace.path),
                branch=workspace.branch,
                base_commit=workspace.base_commit,
                user_tree_dirty=workspace.dirty,
            )
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
        policy = agent_policy(settings, task.hidden_paths)
        sandbox = make_sandbox(
            settings.sandbox,
            workspace.path,
            policy,
            image=settings.sandbox_image,
            cancel=self.cancel,
        )
        owns_model = self.model is None
        try:
            if settings.environment is not None:
                workspace, failure = self._setup(workspace, policy)
                if failure:
                    raise UserError(failure)
            self._attempt(workspace, sandbox, result)
        except UserError as exc:
            result.status, result.exit_reason, result.error = "error", "error", exc.message
            self.events.emit(ErrorEvent(message=exc.message))
            self._finish(workspace, result, started)
            raise
        finally:
            if self.mcp is not None:
                self.mcp.close()
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

    def _setup(self, workspace: Workspace, policy: SandboxPolicy) -> tuple[Workspace, str]:
        """Run the environment's setup command in its own sandbox: the agent's policy, plus the
        network when the environment allows it and its secrets, with the environment's timeout.

        Returns the workspace with setup's leftovers recorded (out of the diff from now on) and,
        when setup failed, the sentence that ends the attempt ("" when it succeeded).
        """
        env = self.settings.environment
        assert env is not None
        limits = dataclasses.replace(
            policy.limits,
            timeout_s=env.timeout_s,
            cpu_seconds=max(policy.limits.cpu_seconds, int(env.timeout_s)),
        )
        setup_policy = dataclasses.replace(
            policy,
            name=f"{policy.name} + setup",
            workspace_writable=True,
            network=policy.network or env.network,
            env_set={**policy.env_set, **dict(env.secrets)},
            limits=limits,
        )
        command = env.redact(env.setup)
        self.events.emit(
            SetupStarted(
                command=command,
                network=setup_policy.network,
                secrets=env.secret_names,
                timeout_s=env.timeout_s,
            )
        )
        sandbox = make_sandbox(
            self.settings.sandbox,
            workspace.path,
            setup_policy,
            image=self.settings.sandbox_image,
            cancel=self.cancel,
        )
        try:
            res = sandbox.run(env.setup, timeout_s=env.timeout_s)
        finally:
            sandbox.close()
        workspace = workspace.after_setup()
        output = env.redact(res.output)
        self.events.emit(
            SetupRan(
                command=command,
                exit_code=res.exit_code,
                seconds=round(res.duration_s, 3),
                output=output,
                timed_out=res.timed_out,
                left_out=[path for path, _ in workspace.left_out],
            )
        )
        if res.cancelled or self.cancel.is_set() or res.exit_code == 0:
            return workspace, ""
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
        what = (
            f"did not finish within {env.timeout_s:g} s"
            if res.timed_out
            else f"failed with exit code {res.exit_code}" + (f" ({one_line(last)})" if last else "")
        )
        return workspace, (
            f"the environment's setup command `{one_line(command)}` {what}; fix the setup of "
            "this repository's environment (its whole output is in the setup.ran event)."
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
        before = self._before(sandbox, test_command, workspace)
        result.tests_before = before
        if self.cancel.is_set():
            result.status = result.exit_reason = "cancelled"
            return
        findings = find_faults(workspace.path, before) if before and not before.passed else None
        context = task_context(
            workspace.path,
            self._instruction(),
            agents_md,
            test_command,
            before,
            hang_note(before.output, before.timed_out, self.limit_words("before"))
            if before
            else "",
            localize=self.settings.localize,
            findings=findings,
        )
        if self.model is None:
            self.model = open_model(self.settings, log_path=self.run_dir / "model-server.log")

        # The last check of a finish and the diff it ran on: the run after the agent is that
        # run when the worktree has not changed since (the finish ends the agent's turns).
        checked: list[tuple[TestRun, str]] = []

        def verify() -> str | None:
            run = self._run_tests(sandbox, test_command, "check")
            if run is not None:
                checked[:] = [(run, workspace.diff())]
            if run is None or run.passed:
                return None
            return tests_still_fail(
                run.command,
                run.exit_code,
                clip(run.output, TEST_OUTPUT_CHARS),
                hang_note(run.output, run.timed_out, self.limit_words("check")),
            )

        protocol = self._protocol()
        history = self._history()
        mcp = self._start_mcp(sandbox, workspace)
        mcp_tools = mcp.tools if mcp is not None else []
        edit_forms = resolve_edit_forms(self.settings.edit_forms, self.settings.model_name)
        system, first = prompts_for(protocol, context, edit_forms, mcp_tools)
        self.first_message = first
        if self.task.retry is not None and self.task.retry.first_message:
            first = self.task.retry.first_message
        repaired = None
        if history:
            first = continuation_message(context)
        elif protocol == "text":
            repaired = self._repair(workspace, sandbox, test_command, findings, system, first)
        if repaired is not None and repaired.tests is not None:
            # No finish summary: the model wrote a function, not words (the summary from the
            # diff says what changed; the repair.tried events, what was asked).
            outcome = Outcome(True, "repaired")
            checked[:] = [(repaired.tests, workspace.diff())]
        else:
            outcome = self._agent_run(
                workspace,
                sandbox,
                test_command,
                protocol,
                mcp,
                edit_forms,
                system,
                first,
                history,
                verify,
                result,
            )
        result.summary = outcome.summary
        result.exit_reason = outcome.exit_reason
        if self.cancel.is_set():
            result.status = "cancelled"
            return
        if outcome.finished and checked and checked[0][1] == workspace.diff():
            after = self._check_stands(checked[0][0])
        else:
            after = self._run_tests(sandbox, test_command, "after")
        result.tests_after = after
        if self.settings.shrink_diff and not self.cancel.is_set():
            self._shrink(workspace, sandbox, test_command, result)
        after = result.tests_after
        result.status = "cancelled" if self.cancel.is_set() else self._status(outcome, after)
        if result.status != "cancelled":
            self._summarize(workspace, result)

    def _agent_run(
        self,
        workspace: Workspace,
        sandbox: Sandbox,
        test_command: str | None,
        protocol: str,
        mcp: McpHub | None,
        edit_forms: tuple[str, ...],
        system: str,
        first: str,
        history: list[dict] | None,
        verify: Callable[[], str | None],
        result: AttemptResult,
    ) -> Outcome:
        """The agent's turns, from `first` (attempt 1's first message; a later attempt's
        account of the earlier ones follows it, a follow-up's next request replaces it)."""
        assert self.model is not None
        outside = (
            make_sandbox("none", workspace.path, agent_policy(self.settings), cancel=self.cancel)
            if self.approve is not None
            else None
        )
        agent = Agent(
            self.model,
            sandbox,
            self.events,
            limits=self._agent_limits(result),
            verify=verify,
            history_path=self.run_dir / "history.json",
            after_command=ChangeReporter(
                workspace,
                self.events,
                test_command,
                lambda: self._run_tests(sandbox, test_command, "edit"),
                protocol,
                test_limit=self.limit_words(),
            ),
            protocol=protocol_for(protocol, mcp.tools if mcp is not None else []),
            cancel=self.cancel,
            pricing=self.pricing,
            call_mcp=mcp.call if mcp is not None else None,
            approve=self.approve,
            outside_sandbox=outside,
            stream=self.settings.stream_replies,
            check_command=RewriteGuard(workspace.path, self.events, edit_forms),
        )
        if not history and self.task.retry is not None:
            # After the first message attempt 1 was sent, verbatim (the model server has it
            # cached), what the earlier attempts changed and that the tests still failed.
            first = retry_message(first, self.task.retry.earlier, closing_for(agent.protocol))
        try:
            return agent.run(system, first, history=history)
        finally:
            if outside is not None:
                outside.close()
            result.turns = agent.turns
            result.usage.add(agent.usage)
            result.model_seconds = round(result.model_seconds + agent.model_seconds, 3)

    def _repair(
        self,
        workspace: Workspace,
        sandbox: Sandbox,
        test_command: str | None,
        findings: Findings | None,
        system: str,
        first: str,
    ) -> RepairTry | None:
        """Direct repair (agent/repair.py) before the agent's turns, when it is on and the run
        before failed with failures pullsmith understood: the try whose change the tests pass
        (kept in the worktree), or None (the worktree as it was). Each try is a repair.tried
        event; its model use counts in the attempt's."""
        s = self.settings
        result = self.result
        assert result is not None and self.model is not None
        if not s.repair or not test_command or findings is None:
            return None
        candidates = repair_candidates(
            workspace.path,
            findings.report,
            s.repair_candidates,
            ranked=findings.ranked,
            lines_over=s.repair_lines_over,
        )
        if not candidates:
            return None
        # The agent keeps a turn's worth of the task's budget.
        deadline = self.deadline - MIN_ATTEMPT_S if self.deadline is not None else None

        def record(one: RepairTry) -> None:
            result.usage.add(one.usage)
            result.model_seconds = round(result.model_seconds + one.seconds, 3)
            c = one.candidate
            self.events.emit(
                RepairTried(
                    path=c.path,
                    function=c.name,
                    rank=c.rank,
                    outcome=one.outcome,
                    sample=one.sample,
                    form=c.form,
                    detail=one.detail,
                    seconds=one.seconds,
                    prompt_tokens=one.usage.prompt_tokens,
                    completion_tokens=one.usage.completion_tokens,
                    cached_tokens=one.usage.cached_tokens,
                    test_event=one.tests.event_id if one.tests is not None else None,
                    reply=clip(one.reply, REPAIR_REPLY_CHARS),
                )
            )

        repaired = direct_repair(
            self.model,
            [{"role": "system", "content": system}, {"role": "user", "content": first}],
            workspace.path,
            candidates,
            lambda: self._run_tests(sandbox, test_command, "repair"),
            budget_s=s.repair_max_s,
            samples=s.repair_samples,
            temperature=s.repair_temperature,
            seed=s.seed,
            deadline=deadline,
            on_text=self._repair_guard,
            on_try=record,
        )
        return repaired.passed

    def _repair_guard(self, _text: str) -> None:
        if self.cancel.is_set():
            raise InterruptedError("the attempt was cancelled during direct repair")

    def _summarize(self, workspace: Workspace, result: AttemptResult) -> None:
        """The summary of the commit and the PR: with `summary_from_diff`, the model's words
        once more, with the final diff and the test results in front of it (agent.summary);
        else, when that fails, or when the tests fail after the change (no change to merge,
        so not worth a model call), its finish summary. A summary.written event says which."""
        diff = workspace.diff()
        if not diff.strip():
            return
        finish = result.summary
        result.finish_summary = finish
        result.summary_source = "finish" if finish else ""
        settings = self.settings
        error: str | None = None
        if not settings.summary_from_diff:
            self.events.emit(SummaryWritten(source="finish", summary=finish, finish_summary=finish))
            return
        # Not asked: a change the tests fail is not one to merge (best-of-N picks another, or
        # the PR says the tests fail), and asking costs a fresh prompt (17-26 s here on the
        # bundled model, minutes on a slow day), which a used-up time budget has no room for.
        reason = None
        if result.status == "failed":
            reason = FAILED_REASON
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            reason = BUDGET_REASON
        if reason is not None:
            self.events.emit(
                SummaryWritten(
                    source="finish", summary=finish, finish_summary=finish, reason=reason
                )
            )
            return
        spent = (self.pricing.cost(result.usage) or 0.0) + self.cost_before
        if is_replay(settings.model):
            error = "a replayed run has no recorded reply to ask"
        elif settings.max_cost is not None and spent >= settings.max_cost:
            error = f"the cost limit (${settings.max_cost:g}) was reached"
        elif self.model is None:
            error = "no model"
        if error is None:
            assert self.model is not None
            messages = summary_request(
                self.task.instruction,
                diff,
                result.tests_before,
                result.tests_after,
                (result.shrink or {}).get("dropped"),
            )
            try:
                written = write_summary(self.model, messages, self._summary_deadline)
            except Exception as exc:  # any failure of the model: the finish summary stays
                error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            else:
                result.usage.add(written.usage)
                result.model_seconds = round(result.model_seconds + written.seconds, 3)
                result.summary, result.summary_source = written.text, "diff"
                usage = written.usage
                self.events.emit(
                    SummaryWritten(
                        source="diff",
                        summary=written.text,
                        finish_summary=finish,
                        seconds=round(written.seconds, 3),
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        cached_tokens=usage.cached_tokens,
                        cache_write_tokens=usage.cache_write_tokens,
                        cost_usd=self.pricing.cost(usage),
                    )
                )
                return
        self.events.emit(
            SummaryWritten(source="finish", summary=finish, finish_summary=finish, error=error)
        )

    def _summary_deadline(self, _text: str) -> None:
        """Given each piece of the summary as it streams: a cancel, or the task's time budget
        running out, ends it there (the finish summary stays)."""
        if self.cancel.is_set():
            raise InterruptedError("the attempt was cancelled while the summary was written")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(f"{BUDGET_REASON} while the summary was written")

    def _shrink(
        self,
        workspace: Workspace,
        sandbox: Sandbox,
        test_command: str | None,
        result: AttemptResult,
    ) -> None:
        """Drop the hunks the visible tests do not need (pullsmith.shrink); a diff.shrunk
        event says what was dropped, or why nothing was tried. When something was dropped, the
        last passing test run (which tested the tree as it is now) becomes `tests_after`."""
        if not workspace.changed_files():
            return
        reason = cannot_decide(test_command, result.tests_before, result.tests_after)
        if reason:
            outcome = ShrinkResult(status="skipped", reason=reason)
        else:
            outcome = shrink(
                workspace,
                lambda: self._run_tests(sandbox, test_command, "shrink"),
                max_runs=self.settings.shrink_max_runs,
                max_seconds=self.settings.shrink_max_s,
                should_stop=self.cancel.is_set,
            )
        if outcome.dropped and outcome.last_pass is not None:
            result.tests_after = outcome.last_pass
        result.shrink = outcome.to_event()
        self.events.emit(DiffShrunk(**result.shrink))

    def _history(self) -> list[dict] | None:
        """The earlier conversation a follow-up goes on with (FollowUp.history), if any."""
        follow_up = self.task.follow_up
        if follow_up is None or not follow_up.history:
            return None
        try:
            messages = json.loads(Path(follow_up.history).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"the conversation to continue, {follow_up.history}, can not be read ({exc}); "
                "start a new session."
            ) from None
        if not isinstance(messages, list) or not messages:
            return None
        return messages

    def _start_mcp(self, sandbox: Sandbox, workspace: Workspace) -> McpHub | None:
        """Start the configured MCP servers for the agent (None without any); those that do
        not start are `warning` events. `run` closes them at the end of the attempt."""
        if not self.settings.mcp_servers:
            return None
        # Imported here: the MCP SDK is loaded only by runs that use it.
        from pullsmith.mcp.client import McpHub, launcher_for

        self.mcp = McpHub(
            self.settings.mcp_servers,
            launcher_for(sandbox, workspace.path),
            self.events,
            log_dir=self.run_dir,
            cancel=self.cancel,
        )
        return self.mcp.start()

    def _protocol(self) -> str:
        """The action protocol: the setting, or the model's profile; a replay speaks the one
        its recording used."""
        settings = self.settings
        if settings.protocol == "auto" and is_replay(settings.model):
            spec = (settings.model or "")[len(REPLAY_PREFIX) :]
            recorded = load_recordings(spec, settings.runs_dir)
            if recorded and recorded[0].protocol:
                return recorded[0].protocol
        return resolve_protocol(settings.protocol, settings.model_name)

    def _agent_limits(self, result: AttemptResult) -> AgentLimits:
        """The agent's limits: what is left of the task's time, and of its money after the
        earlier attempts and what this one spent before the agent (direct repair)."""
        s = self.settings
        spent = self.pricing.cost(result.usage) or 0.0
        max_time_s = s.max_time_s
        if self.deadline is not None:
            max_time_s = max(1.0, min(max_time_s, round(self.deadline - time.monotonic())))
        return AgentLimits(
            max_turns=s.max_turns,
            max_time_s=max_time_s,
            max_tokens=s.max_tokens,
            context_tokens=s.n_ctx if s.uses_local_model else s.context_window,
            reply_tokens=s.max_reply_tokens,
            format_errors=s.format_error_limit,
            finish_retries=s.finish_retries,
            stuck_repeats=1 if self.task.stop_when_stuck else None,
            max_cost=s.max_cost,
            cost_before=self.cost_before + spent,
            compact=s.compact,
        )

    @staticmethod
    def _status(outcome: Outcome, after: TestRun | None) -> str:
        if after is None:
            return "untested"
        if after.passed:
            return "passed" if outcome.finished else "passed-unfinished"
        return "failed"

    @property
    def test_timeout_s(self) -> float:
        """The wall clock of one of the attempt's own test runs: `feedback_test_timeout_s`
        within `test_timeout_s` (the CPU time of its processes is capped apart, `test_cpu_s`)."""
        s = self.settings
        if s.feedback_test_timeout_s > 0:
            return min(s.test_timeout_s, s.feedback_test_timeout_s)
        return s.test_timeout_s

    @property
    def suite_cpu_s(self) -> float | None:
        """The CPU seconds the test run before the agent used (None: not run, or stopped)."""
        before = self.result.tests_before if self.result is not None else None
        return None if before is None or before.timed_out else before.cpu_seconds

    def cpu_cap(self, phase: str) -> float:
        """The CPU seconds a process of a test run in `phase` may use (0: no cap). The run
        before the agent may use `BEFORE_CPU_FACTOR` times `test_cpu_s`; once it finished, a
        later run may use twice what it used and 5 s more, never less than `test_cpu_s`: a
        suite that needs 30 s of CPU time is not taken for a hang, while a bug that loops
        forever in a suite of 2 s still costs about `test_cpu_s`."""
        base = self.settings.test_cpu_s
        if base <= 0:
            return 0.0
        if phase == "before":
            return BEFORE_CPU_FACTOR * base
        if self.suite_cpu_s is not None:
            return max(base, 2 * self.suite_cpu_s + 5)
        return base

    def limit_words(self, phase: str = "edit") -> str:
        """The limits of a test run in `phase` in words, for the note to the model when one
        hung."""
        cpu = self.cpu_cap(phase)
        wall = f"{self.test_timeout_s:g} s"
        return f"{cpu:g} s of CPU time a process or {wall} in all" if cpu > 0 else wall

    @property
    def verdict_timeout_s(self) -> float:
        """The wall clock of a run that decides something (the finish's "check", the status's
        "after"): three times `test_timeout_s` above, within `test_timeout_s`. A false timeout
        here would fail a change that passes; on a loaded machine (measured: 1 s of CPU time
        took 20 s) a wall clock says little, which is why loops are caught by `test_cpu_s`."""
        return min(self.settings.test_timeout_s, 3 * self.test_timeout_s)

    def _check_stands(self, check: TestRun) -> TestRun:
        """The run after the agent when the finish's check ran on the same worktree: that
        check's result, logged as the `after` run with `same_as` naming the check's event (no
        test ran again; the evidence is the check)."""
        return self._record(
            dataclasses.replace(check, phase="after", seconds=0.0, cpu_seconds=None),
            same_as=check.event_id,
        )

    def _before(
        self, sandbox: Sandbox, command: str | None, workspace: Workspace
    ) -> TestRun | None:
        """The test run before any change: an earlier attempt's (`Task.known_before`) when it
        ran the same command on the same commit, logged with `from_attempt` (the tests do not
        run again); else a run of its own."""
        known = self.task.known_before
        if (
            known is None
            or not command
            or self.cancel.is_set()
            or known.run.command != command
            or known.base_commit != workspace.base_commit
        ):
            return self._run_tests(sandbox, command, "before")
        return self._record(
            dataclasses.replace(known.run, phase="before", seconds=0.0),
            from_attempt=known.attempt,
        )

    def _run_tests(self, sandbox: Sandbox, command: str | None, phase: str) -> TestRun | None:
        if not command or self.cancel.is_set():
            return None
        self.events.emit(StartedTests(phase=phase, command=command))
        timeout = self.verdict_timeout_s if phase in ("check", "after") else self.test_timeout_s
        capped = cpu_capped(command, self.cpu_cap(phase))
        res = sandbox.run(capped, timeout_s=timeout)
        output, cpu_s = cpu_used(res.output)
        timed_out = res.timed_out or cpu_exceeded(res.exit_code, output)
        run = TestRun(
            phase=phase,
            command=command,
            exit_code=res.exit_code,
            output=output,
            seconds=round(res.duration_s, 3),
            timed_out=timed_out,
            event_id=-1,
            cpu_seconds=cpu_s,
        )
        return self._record(run)

    def _record(
        self, run: TestRun, same_as: int | None = None, from_attempt: int | None = None
    ) -> TestRun:
        """`run` as a tests.ran event; returns it with that event's id."""
        event = self.events.emit(
            RanTests(
                phase=run.phase,
                command=run.command,
                exit_code=run.exit_code,
                seconds=run.seconds,
                output=run.output,
                timed_out=run.timed_out,
                cpu_seconds=run.cpu_seconds,
                same_as=same_as,
                from_attempt=from_attempt,
            )
        )
        return dataclasses.replace(run, event_id=event.id)

    def _finish(self, workspace: Workspace, result: AttemptResult, started: float) -> None:
        result.diff = workspace.diff()
        result.diff_stat = workspace.diff_stat()
        cancelled = result.status == "cancelled"
        if result.diff.strip() and not cancelled:
            result.commit = workspace.commit(commit_message(result), trailer=TRAILER)
            if result.commit:
                self.events.emit(CommitCreated(commit=result.commit, branch=workspace.branch))
        if result.commit is None and result.status == "error" and result.turns == 0:
            # Nothing was done: leave no empty branch behind (a follow-up's holds earlier work).
            workspace.remove(delete_branch=self.task.follow_up is None)
            result.worktree = ""
        elif not self.task.keep_worktree and result.status not in ("error", "cancelled"):
            # The branch holds the work; the checkout can go. A cancelled attempt keeps its
            # checkout, uncommitted, for the user to look at or continue.
            workspace.remove()
            result.worktree = ""
        result.wall_seconds = round(time.monotonic() - started, 3)
        result.cost_usd = self.pricing.cost(result.usage)
        write_result(self.run_dir, result)
        self.events.emit(
            AttemptFinished(
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
                model_seconds=result.model_seconds,
                wall_seconds=result.wall_seconds,
                worktree=result.worktree,
                error=result.error,
                cache_write_tokens=result.usage.cache_write_tokens,
                cost_usd=result.cost_usd,
            )
        )


def continuation_message(ctx: TaskContext) -> str:
    """The next request of a conversation that goes on: the request, and the tests now."""
    parts = [f"Next request: {ctx.instruction.strip()}"]
    if ctx.test_command and ctx.test_exit_code not in (None, 0):
        if ctx.failures:
            parts.append(f"Failing tests (from `{ctx.test_command}`):\n{ctx.failures}")
        parts.append(
            f"`{ctx.test_command}` exits with code {ctx.test_exit_code} now:"
            f"\n```\n{ctx.test_output.rstrip()}\n```"
        )
    elif ctx.test_command:
        parts.append(f"`{ctx.test_command}` passes now.")
    return "\n\n".join(parts)


def write_result(run_dir: Path, result: AttemptResult) -> None:
    """Save `result` as the run's result.json (atomically: a reader never sees half of it)."""
    path = run_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def read_result(run_dir: Path) -> AttemptResult | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return AttemptResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError):
        return None


def commit_message(result: AttemptResult) -> str:
    said = (result.summary or result.instruction).strip().splitlines()
    title, rest = subject_line(said[0])
    lines = [title, ""]
    if rest:
        said = [said[0], rest, *said[1:]]
    if result.summary.strip():
        if len(said) > 1:
            lines += [*said[1:], ""]
        when = (
            "written from the final diff and the test results"
            if result.summary_source == "diff"
            else "from when it finished"
        )
        lines.append(f"Summary: the model's words, {when}; the tests below are pullsmith's.")
    lines.append(f"Task: {result.instruction.strip()}")
    if result.tests_after is not None:
        verdict = "pass" if result.tests_after.passed else "FAIL"
        lines.append(
            f"Tests: `{result.tests_after.command}` {verdict} (exit {result.tests_after.exit_code})"
        )
    dropped = (result.shrink or {}).get("dropped") or []
    if dropped:
        where = ", ".join(
            f"{d['path']}:{d['old_start'] or d['new_start']} ({d['kind']})" for d in dropped
        )
        lines.append(f"Left out (the tests pass without it): {where}")
    lines.append(f"Run: {result.task_id} ({result.exit_reason or result.status})")
    return "\n".join(lines)
