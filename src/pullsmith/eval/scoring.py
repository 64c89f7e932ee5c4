"""Scoring: restore a task's hidden tests over a tree and run them in the sandbox.

The tree being scored is a fresh checkout (of the agent's branch, or of the snapshot with or
without the reference solution); nothing in it can keep the hidden tests from being restored.
`check_suite` scores every task's unchanged snapshot (which must fail) and its reference
solution (which must pass), through this same scorer: the proof that the scorer is right.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.eval.snapshot import apply_change, copy_tree, materialize
from pullsmith.eval.tasks import DEFAULT_TEST_TIMEOUT_S, EvalTask
from pullsmith.sandbox import agent_policy, make_sandbox
from pullsmith.sandbox.base import Sandbox

OUTPUT_TAIL_CHARS = 2000
SETUP_TIMEOUT_S = 600.0


@dataclass
class TestOutcome:
    """One hidden test command's run."""

    kind: str
    command: str
    exit_code: int
    seconds: float
    timed_out: bool = False
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class Score:
    resolved: bool
    tests: list[TestOutcome] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.error:
            return self.error
        failed = [t for t in self.tests if not t.passed]
        if not failed:
            return "all hidden tests pass"
        first = failed[0]
        why = "timed out" if first.timed_out else f"exit {first.exit_code}"
        return f"{len(failed)} of {len(self.tests)} failed; first: {first.kind} {why}"


def _tail(text: str, limit: int = OUTPUT_TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[…]\n" + text[-limit:]


def scoring_sandbox(settings: Settings, tree: Path, timeout_s: float) -> Sandbox:
    policy = agent_policy(settings)
    policy = dataclasses.replace(
        policy, limits=dataclasses.replace(policy.limits, timeout_s=timeout_s)
    )
    return make_sandbox(settings.sandbox, tree, policy)


def score_tree(
    task: EvalTask,
    tree: Path,
    base: Path,
    settings: Settings,
    timeout_s: float | None = None,
) -> Score:
    """Restore the hidden tests over `tree` (base: the snapshot it started from) and run them.

    Resolved means every fail-to-pass and pass-to-pass command exits 0 within its timeout.
    """
    started = time.monotonic()
    timeout = timeout_s or task.tests.timeout_s or DEFAULT_TEST_TIMEOUT_S
    try:
        apply_change(tree, task.tests.change, base)
    except UserError as exc:
        return Score(
            False,
            error=f"hidden tests could not be restored: {exc.message}",
            seconds=_since(started),
        )
    sandbox = scoring_sandbox(settings, tree, timeout)
    outcomes: list[TestOutcome] = []
    try:
        if task.setup:
            res = sandbox.run(task.setup, timeout_s=max(timeout, SETUP_TIMEOUT_S))
            if res.exit_code != 0 or res.timed_out:
                outcome = TestOutcome(
                    "setup",
                    task.setup,
                    res.exit_code,
                    round(res.duration_s, 3),
                    res.timed_out,
                    _tail(res.output),
                )
                return Score(
                    False, [outcome], error="the setup command failed", seconds=_since(started)
                )
        for kind, command in task.tests.commands:
            res = sandbox.run(command, timeout_s=timeout)
            outcomes.append(
                TestOutcome(
                    kind,
                    command,
                    res.exit_code,
                    round(res.duration_s, 3),
                    res.timed_out,
                    _tail(res.output),
                )
            )
    finally:
        sandbox.close()
    resolved = bool(outcomes) and all(o.passed for o in outcomes)
    return Score(resolved, outcomes, seconds=_since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


# --- checking a suite ---------------------------------------------------------------------


@dataclass
class CheckResult:
    """Whether the scorer fails a task's snapshot and passes its reference solution."""

    task_id: str
    base: Score
    reference: Score | None

    @property
    def ok(self) -> bool:
        return not self.base.resolved and self.reference is not None and self.reference.resolved

    @property
    def problem(self) -> str | None:
        if self.base.resolved:
            return "the unchanged snapshot already passes the hidden tests"
        if self.reference is None:
            return "the task has no reference solution"
        if not self.reference.resolved:
            return f"the reference solution fails: {self.reference.summary}"
        return None


def check_task(
    task: EvalTask, settings: Settings, workdir: Path, timeout_s: float | None = None
) -> CheckResult:
    """Score the unchanged snapshot and the reference solution of `task` in `workdir`."""
    base = workdir / "base"
    materialize(task, base, settings.data_dir / "clones")
    if task.setup:
        # The agent's repository is made after setup ran in it; so is this base.
        sandbox = scoring_sandbox(settings, base, SETUP_TIMEOUT_S)
        try:
            sandbox.run(task.setup)
        finally:
            sandbox.close()
    original = workdir / "original"
    copy_tree(base, original)
    base_score = score_tree(task, original, base, settings, timeout_s)
    reference_score = None
    if task.reference is not None:
        solved = workdir / "reference"
        copy_tree(base, solved)
        try:
            apply_change(solved, task.reference, base)
        except UserError as exc:
            reference_score = Score(False, error=f"reference solution: {exc.message}")
        else:
            reference_score = score_tree(task, solved, base, settings, timeout_s)
    return CheckResult(task.id, base_score, reference_score)


def check_suite(
    tasks: list[EvalTask],
    settings: Settings,
    jobs: int = 1,
    timeout_s: float | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """`check_task` for every task, `jobs` at a time; results in task order."""
    lock = threading.Lock()

    def one(task: EvalTask) -> CheckResult:
        with tempfile.TemporaryDirectory(prefix=f"pullsmith-check-{task.safe_id}-") as tmp:
            result = check_task(task, settings, Path(tmp), timeout_s)
        if on_result is not None:
            with lock:
                on_result(result)
        return result

    if jobs <= 1:
        return [one(task) for task in tasks]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, tasks))
