"""What a task is and what it produced: plain data, serialisable, importing none of the engine.

A Task and Settings fully determine a run; an AttemptResult is what one attempt (or the chosen
one of best-of-N) left behind. Both cross process boundaries as dicts (`to_dict`/`from_dict`),
and `result.json` is an AttemptResult's dict.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pullsmith.models.base import Usage


def new_task_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class FollowUp:
    """Continue earlier work: the same branch, checked out at `worktree`, from its tip.

    `briefing` is the earlier work compacted (the task, the model's summary, the diff so far,
    the last test result); the model reads it after the new instruction. `pr_number` is the
    pull request the follow-up continues, when there is one. `history` is the path of an
    earlier conversation (a history.json) that the model goes on with, as an interactive
    session's next request does: its messages come first, then the new instruction.
    """

    branch: str
    start_commit: str
    worktree: str
    briefing: str
    base_ref: str | None = None
    pr_number: int | None = None
    history: str | None = None


@dataclass(frozen=True)
class EarlierAttempt:
    """An attempt of a best-of-N task with --until-pass that did not pass, as the attempts
    after it are told of it: the hunks it changed (compacted and capped; "" when it changed
    nothing), the tests that still failed in pullsmith's own run after it, the first error line
    of that run, and how the agent stopped."""

    number: int
    changes: str = ""
    test_command: str | None = None
    failing: tuple[str, ...] = ()
    error_line: str = ""
    exit_reason: str = ""


@dataclass(frozen=True)
class Retry:
    """What an attempt after the first of a best-of-N task with --until-pass is told of the
    earlier ones: `first_message` is the first message attempt 1 was sent, verbatim (the
    prompt's prefix the model server has cached; "" when none was sent), and `earlier` are
    the attempts that did not pass, oldest first. Their account goes after that message."""

    first_message: str
    earlier: tuple[EarlierAttempt, ...]


@dataclass(frozen=True)
class KnownBefore:
    """The test run before any change that an earlier attempt of a best-of-N task made
    (`attempt`), on `base_commit`: a later attempt from the same commit with the same test
    command takes it as its own instead of running the same tests on the same code again (a
    suite that hangs on the bug costs its CPU cap each time)."""

    attempt: int
    base_commit: str
    run: TestRun


@dataclass
class Task:
    """What to do and where. `repo` is an absolute path or a URL once a front end made it."""

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
    # Best-of-N with --until-pass, attempts after the first: what the earlier ones did.
    retry: Retry | None = None
    # Best-of-N, attempts after the first: the test run before any change, once one ran.
    known_before: KnownBefore | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        data = _known(cls, data)
        if isinstance(data.get("follow_up"), dict):
            data["follow_up"] = FollowUp(**_known(FollowUp, data["follow_up"]))
        data["hidden_paths"] = tuple(data.get("hidden_paths") or ())
        if isinstance(data.get("retry"), dict):
            retry = data["retry"]
            earlier = tuple(
                EarlierAttempt(
                    **{**_known(EarlierAttempt, e), "failing": tuple(e.get("failing") or ())}
                )
                for e in retry.get("earlier") or ()
            )
            data["retry"] = Retry(str(retry.get("first_message") or ""), earlier)
        known = data.get("known_before")
        if isinstance(known, dict) and isinstance(known.get("run"), dict):
            run = TestRun(**_known(TestRun, known["run"]))
            data["known_before"] = KnownBefore(int(known["attempt"]), known["base_commit"], run)
        return cls(**data)


@dataclass
class TestRun:
    """One run of the repository's tests by pullsmith itself."""

    __test__ = False  # not a pytest test class

    phase: str
    command: str
    exit_code: int
    output: str
    seconds: float
    timed_out: bool
    event_id: int
    # The CPU time of its processes (None: not measured, or killed at its wall clock).
    cpu_seconds: float | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


# The statuses of a result: the tests decide passed/failed; the others say why they could not.
STATUSES = ("passed", "passed-unfinished", "failed", "untested", "error", "cancelled")


@dataclass
class AttemptResult:
    task_id: str
    status: str
    exit_reason: str
    instruction: str
    repo: str
    branch: str = ""
    base_commit: str = ""
    worktree: str = ""
    run_dir: str = ""
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
    # Whose error it was: "model" (the model failed), "run" (a user error such as a bad
    # repository), "internal" (a bug of pullsmith's), "worker" (the process running it died).
    error_kind: str | None = None
    # Best-of-N: which attempt this is (1-based), and every attempt's scores when it was chosen.
    attempt: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # The pull request recorded for this run, once a publisher recorded one.
    pull_request: int | None = None
    # What this attempt's model calls cost in US dollars; None when the price is unknown.
    cost_usd: float | None = None
    # The diff shrink before the commit (pullsmith.shrink): its diff.shrunk event's data.
    shrink: dict[str, Any] | None = None
    # Where `summary` comes from: "diff" (the model wrote it once more with the final diff and
    # the tests in front of it), "finish" (its finish summary) or "" (it gave none).
    summary_source: str = ""
    # The model's finish summary, kept when `summary` was written from the diff.
    finish_summary: str = ""
    # Best-of-N: the attempt (finished before this one) whose diff this one's final diff is
    # identical to, when it repeated one; None otherwise (and for an empty diff).
    repeats_attempt: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "passed"

    @property
    def tests_pass(self) -> bool:
        """Whether pullsmith's own run of the visible tests passed after the agent stopped."""
        return self.tests_after is not None and self.tests_after.passed

    def totals(self) -> dict[str, Any]:
        """What the task cost in all: with best-of-N, every attempt that ran, not only this one."""
        spent = self.attempts or [
            {
                "turns": self.turns,
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "cached_tokens": self.usage.cached_tokens,
                "cache_write_tokens": self.usage.cache_write_tokens,
                "model_seconds": self.model_seconds,
                "wall_seconds": self.wall_seconds,
                "cost_usd": self.cost_usd,
            }
        ]
        counts = (
            "turns",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
        )
        seconds = ("model_seconds", "wall_seconds")
        totals: dict[str, Any] = {k: sum(int(a.get(k) or 0) for a in spent) for k in counts}
        for key in seconds:
            totals[key] = round(sum(float(a.get(key) or 0.0) for a in spent), 3)
        # One attempt of unknown cost makes the total unknown: never a partial sum.
        costs = [a.get("cost_usd") for a in spent]
        totals["cost_usd"] = (
            None if any(c is None for c in costs) else round(sum(float(c) for c in costs), 6)
        )
        return totals

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptResult:
        data = _known(cls, data)
        for key in ("tests_before", "tests_after"):
            if isinstance(data.get(key), dict):
                data[key] = TestRun(**_known(TestRun, data[key]))
        if isinstance(data.get("usage"), dict):
            data["usage"] = Usage(**_known(Usage, data["usage"]))
        return cls(**data)

    @classmethod
    def failed_to_start(
        cls, task: Task, message: str, run_dir: str = "", status: str = "error"
    ) -> AttemptResult:
        """The result of a task that stopped (or was cancelled) before an attempt was made."""
        return cls(
            task_id=task.task_id,
            status=status,
            exit_reason=status,
            instruction=task.instruction,
            repo=task.repo,
            run_dir=run_dir,
            error=message,
        )
