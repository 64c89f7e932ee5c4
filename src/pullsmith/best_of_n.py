"""Best-of-N: independent attempts at one task, the one the tests like best is chosen."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pullsmith.agent.failures import failure_count, parse_test_output
from pullsmith.attempt import Attempt, run_dir_for, write_result
from pullsmith.config import MIN_ATTEMPT_S, Settings
from pullsmith.errors import UserError
from pullsmith.events import (
    AttemptScored,
    AttemptsSelected,
    AttemptsStarted,
    ErrorEvent,
    Event,
    EventLog,
    WarningEvent,
)
from pullsmith.models import Model, open_model
from pullsmith.models.openai_compat import ModelError
from pullsmith.models.prices import check_budget, pricing_for
from pullsmith.task import AttemptResult, EarlierAttempt, KnownBefore, Retry, Task
from pullsmith.workspace import changed_lines

# Attempt 1 samples at the configured temperature (the model's best guess); the others
# sample hotter so that they explore different fixes instead of repeating the first.
RETRY_TEMPERATURE = 0.7

Rank = tuple[int, int, int, int]

# The account of an earlier attempt (--until-pass): its changed hunks up to this many
# characters, this many of the tests still failing, an error line up to this long.
CHANGES_CHARS = 1000
FAILING_NAMES = 3
ERROR_LINE_CHARS = 200
_DIFF_NOISE = (
    "diff --git ",
    "index ",
    "new file mode",
    "deleted file mode",
    "old mode",
    "new mode",
    "similarity index",
    "\\ No newline",
)
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b")


class _Sampling:
    """The shared model, sampled at one attempt's temperature (and seed, when one is set)."""

    def __init__(self, model: Model, temperature: float | None, seed: int | None) -> None:
        self.model = model
        self.name = model.name
        self.temperature = temperature
        self.seed = seed

    def complete(self, messages: list[Any], *, temperature: float | None = None, **kw: Any) -> Any:
        if self.seed is not None:
            kw.setdefault("seed", self.seed)
        chosen = temperature if temperature is not None else self.temperature
        return self.model.complete(messages, temperature=chosen, **kw)

    def close(self) -> None:
        """The model belongs to the whole task; the attempts leave it open."""


def attempt_rank(result: AttemptResult, root: Path | None = None) -> Rank:
    """Sort key, best first: visible tests pass; then fewest failing tests; then an attempt
    that changed something; then the smallest diff."""
    after = result.tests_after
    if after is None:
        failing = 0 if result.status == "untested" and result.exit_reason == "finished" else 1
    else:
        failing = failure_count(root or Path(result.repo), after.output, after.exit_code)
    changed = changed_lines(result.diff)
    return (0 if result.tests_pass else 1, failing, 0 if changed else 1, changed)


def attempt_summary(result: AttemptResult, rank: Rank) -> dict[str, Any]:
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
        "cache_write_tokens": result.usage.cache_write_tokens,
        "cost_usd": result.cost_usd,
        "repeats_attempt": result.repeats_attempt,
    }


def attempt_task(
    task: Task, number: int, retry: Retry | None = None, known_before: KnownBefore | None = None
) -> Task:
    """Attempt `number` of a best-of-N task: one attempt, on its own branch and run directory;
    `retry` is what it is told of the earlier attempts (--until-pass), `known_before` the
    test run before any change an earlier attempt made (it stands for this one's own)."""
    return dataclasses.replace(
        task,
        task_id=f"{task.task_id}-{number}",
        attempts=1,
        until_pass=False,
        # A model stuck repeating itself gets a fresh start in the next attempt.
        stop_when_stuck=number < task.attempts,
        retry=retry,
        known_before=known_before,
    )


def compact_diff(diff: str, limit: int = CHANGES_CHARS) -> str:
    """The changed hunks of `diff`: each file's ---/+++ lines, each hunk's @@ line and its
    added and removed lines (the context left out), cut at `limit` characters."""
    kept: list[str] = []
    size = 0
    lines = [line for line in diff.splitlines() if _kept_in_account(line)]
    for index, line in enumerate(lines):
        if size + len(line) + 1 > limit and kept:
            kept.append(f"[... {len(lines) - index} more lines of the diff left out ...]")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


def _kept_in_account(line: str) -> bool:
    """Whether a diff line is part of a changed hunk: a file's ---/+++ line, an @@ line, an
    added or removed line (not git's headers, not context)."""
    if line.startswith("Binary files "):
        return True
    return line[:1] in ("+", "-", "@") and not line.startswith(_DIFF_NOISE)


def earlier_attempt(result: AttemptResult, root: Path | None = None) -> EarlierAttempt | None:
    """What the next attempt is told of `result`, an attempt whose tests failed: its changed
    hunks and pullsmith's own run of the tests after it (the failing tests and the first error
    line). None when its tests did not run after it (nothing to say it failed)."""
    after = result.tests_after
    if after is None or after.passed:
        return None
    report = parse_test_output(root or Path(result.repo), after.output)
    failures = [f for f in report.failures if f.test != "(traceback)"]
    messages = [f.message for f in report.failures if f.message.strip()]
    if messages:
        error = messages[0].strip().splitlines()[0]
    else:
        lines = [line.strip() for line in after.output.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if _ERROR_LINE.search(line)), "")
    if len(error) > ERROR_LINE_CHARS:
        error = error[: ERROR_LINE_CHARS - 1] + "…"
    if after.timed_out:
        error = error or "the tests timed out"
    return EarlierAttempt(
        number=result.attempt,
        changes=compact_diff(result.diff),
        test_command=after.command,
        failing=tuple(f.test for f in failures[:FAILING_NAMES]),
        error_line=error,
        exit_reason=result.exit_reason,
    )


def repeated_diff(result: AttemptResult, earlier: Sequence[AttemptResult]) -> int | None:
    """The attempt among `earlier` whose final diff `result`'s is identical to (the first
    one); None when none is, or when `result` changed nothing."""
    if not result.diff.strip():
        return None
    return next((e.attempt for e in earlier if e.diff == result.diff), None)


def attempt_sampling(settings: Settings, number: int) -> tuple[float | None, int | None]:
    """(temperature, seed) of attempt `number`; a None temperature means the configured one."""
    temperature = None if number == 1 else max(settings.temperature, RETRY_TEMPERATURE)
    seed = None if settings.seed is None else settings.seed + number - 1
    return temperature, seed


def score_attempt(
    result: AttemptResult, events: EventLog, earlier: Sequence[AttemptResult] = ()
) -> Rank:
    """Rank one finished attempt and record its score (attempt.scored), with the attempt
    among `earlier` (those finished before it) whose diff it repeated, if any."""
    result.repeats_attempt = repeated_diff(result, earlier)
    rank = attempt_rank(result)
    events.emit(AttemptScored(**attempt_summary(result, rank)))
    return rank


def select_attempt(
    task: Task,
    results: list[tuple[Rank, AttemptResult]],
    events: EventLog,
    cancelled: bool = False,
    stopped: UserError | None = None,
) -> AttemptResult:
    """The attempt the visible tests like best (the last one when the user cancelled), with
    every attempt's summary; emits attempts.selected (and the error that stopped the rest)."""
    if not results:
        raise stopped or UserError("no attempt ran; see the run log.")
    ranked = sorted(results, key=lambda pair: (pair[0], pair[1].attempt))
    chosen = ranked[0][1]
    if cancelled:
        # What the user stopped is the last attempt; the result says so, whatever ran before.
        chosen = results[-1][1]
    chosen.attempts = [attempt_summary(r, k) for k, r in results]
    if stopped is not None:
        events.emit(ErrorEvent(message=stopped.message))
    events.emit(
        AttemptsSelected(
            attempt=chosen.attempt,
            of=len(results),
            branch=chosen.branch,
            status=chosen.status,
            reason=_selection_reason(chosen, [r for _, r in results], task.attempts),
        )
    )
    return chosen


class BestOfN:
    """N independent attempts at one task, each in its own worktree and on its own branch
    (`pullsmith/<task-id>-<n>`), scored by the repository's visible tests; the best is chosen.

    Every attempt keeps its branch and its run log, so the ones not chosen stay inspectable.
    Attempts share one model (and its prompt cache: they all start from the same prompt).
    With --until-pass each attempt after the first is sent attempt 1's first message again,
    verbatim, followed by what the earlier attempts changed and which tests still failed after
    them, so that it tries something else; `repeats_attempt` marks an attempt that ended with
    an earlier one's diff all the same.
    """

    def __init__(
        self,
        task: Task,
        settings: Settings,
        events: EventLog,
        model: Model | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.task = task
        self.settings = settings
        self.events = events
        self.model = model
        self.cancel = cancel or threading.Event()
        self.run_dir = run_dir_for(settings, task.task_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The first message the first attempt that got so far was sent (--until-pass: the
        # later attempts are sent it again, verbatim, with the account of the earlier ones).
        self.first_message = ""
        # The first test run before any change (the later attempts take it as theirs).
        self.known_before: KnownBefore | None = None

    def run(self) -> AttemptResult:
        task, settings = self.task, self.settings
        self.events.emit(AttemptsStarted(attempts=task.attempts, until_pass=task.until_pass))
        owns_model = self.model is None
        results: list[tuple[Rank, AttemptResult]] = []
        stopped: UserError | None = None
        check_budget(settings, pricing_for(settings))
        spent = 0.0  # what the attempts so far cost: max_cost is the whole task's budget
        started = time.monotonic()  # task_time_s is the whole task's time budget
        try:
            if self.model is None:
                self.model = open_model(settings, log_path=self.run_dir / "model-server.log")
            for number in range(1, task.attempts + 1):
                if self.cancel.is_set():
                    break
                if settings.max_cost is not None and spent >= settings.max_cost:
                    self.events.emit(
                        WarningEvent(
                            message=f"the cost limit (${settings.max_cost:g}) was reached after "
                            f"{number - 1} of {task.attempts} attempts (${spent:.4f}); the "
                            "others were not started."
                        )
                    )
                    break
                left = settings.task_time_s - (time.monotonic() - started)
                if settings.task_time_s > 0 and left < MIN_ATTEMPT_S:
                    self.events.emit(
                        WarningEvent(
                            message=f"the task's time budget ({settings.task_time_s:g} s) was "
                            f"used up after {number - 1} of {task.attempts} attempts; the "
                            "others were not started."
                        )
                    )
                    break
                try:
                    result = self._attempt(
                        number,
                        spent,
                        self._retry([r for _, r in results]),
                        left if settings.task_time_s > 0 else None,
                    )
                except ModelError as exc:
                    # The model is gone: the attempts already made still count.
                    stopped = exc
                    break
                spent += result.cost_usd or 0.0
                rank = score_attempt(result, self.events, [r for _, r in results])
                results.append((rank, result))
                if result.status == "cancelled" or (task.until_pass and result.tests_pass):
                    break
        finally:
            if owns_model and self.model is not None:
                self.model.close()
        chosen = select_attempt(task, results, self.events, self.cancel.is_set(), stopped)
        write_result(self.run_dir, chosen)
        return chosen

    def _retry(self, earlier: list[AttemptResult]) -> Retry | None:
        """What the next attempt is told of the earlier ones: with --until-pass, each that
        failed its tests, after the first message; None for the first attempt or without
        --until-pass (independent attempts, ranked against each other) or with the
        `retry_account` setting off."""
        if not self.task.until_pass or not self.settings.retry_account:
            return None
        accounts = [a for a in (earlier_attempt(r) for r in earlier) if a is not None]
        return Retry(self.first_message, tuple(accounts)) if accounts else None

    def _relay(self, event: Event, number: int) -> None:
        """An attempt's event into the task's log, marked with its number (a transient one
        passed on unwritten)."""
        data = {**event.data, "attempt": number}
        if event.transient:
            self.events.transient(event.type, **data)
        else:
            self.events.emit(event.type, **data)

    def _attempt(
        self,
        number: int,
        cost_before: float = 0.0,
        retry: Retry | None = None,
        time_left_s: float | None = None,
    ) -> AttemptResult:
        task, settings = self.task, self.settings
        sub = attempt_task(task, number, retry, self.known_before)
        log = EventLog(
            sub.task_id,
            run_dir_for(settings, sub.task_id) / "events.jsonl",
            forward=lambda event: self._relay(event, number),
        )
        temperature, seed = attempt_sampling(settings, number)
        assert self.model is not None
        attempt = Attempt(
            sub,
            settings,
            log,
            _Sampling(self.model, temperature, seed),
            self.cancel,
            cost_before=cost_before,
            time_left_s=time_left_s,
        )
        try:
            result = attempt.run()
        except ModelError:
            raise
        except UserError as exc:
            if attempt.result is None:
                raise
            result = attempt.result
            result.error = result.error or exc.message
        finally:
            log.close()
            self.first_message = self.first_message or attempt.first_message
        result.attempt = number
        before = result.tests_before
        if self.known_before is None and before is not None and not self.cancel.is_set():
            self.known_before = KnownBefore(number, result.base_commit, before)
        return result


def _selection_reason(chosen: AttemptResult, results: list[AttemptResult], asked: int) -> str:
    if chosen.status == "cancelled":
        return f"attempt {chosen.attempt} was cancelled"
    if len(results) < asked and chosen.tests_pass:
        return f"its tests pass, so --until-pass stopped after {len(results)} of {asked}"
    if len(results) == 1:
        return "the only attempt that ran"
    if chosen.tests_pass:
        passing = sum(1 for r in results if r.tests_pass)
        return f"its tests pass ({passing} of {len(results)} attempts pass)"
    return "no attempt passes the tests; it has the fewest failing tests, then the smallest diff"
