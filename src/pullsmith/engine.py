"""The engine: the one way a task runs, whichever front end asked for it.

`Engine.submit(task)` hands the task's work (`work.execute`: its attempts) to an executor —
threads of this process, or worker processes — and returns a `RunHandle` at once. When the
work is done the engine records the pull request through its publisher, emits
`task.finished`, and the handle's `result()` returns the AttemptResult. Failures are results
too (status "error" with the reason), never exceptions left for the caller to dig out of
result.json; a cancel on the handle ends the run as "cancelled" with its worktree and log kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from pullsmith.attempt import read_result, run_dir_for, write_result
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import EventLog, Listener, TaskFinished, WarningEvent
from pullsmith.executors import Executor, Job, ThreadExecutor
from pullsmith.models import Model
from pullsmith.task import AttemptResult, Task
from pullsmith.work import check_task


class Publisher(Protocol):
    """Records a finished run as a pull request (the local store, GitHub, ...)."""

    def publish(self, task: Task, result: AttemptResult, events: EventLog) -> int | None:
        """Record `result`; the number of the pull request it opened or updated, if any.

        Emits its pr.* events into `events`. A UserError means it could not; the run stands.
        """
        ...


class RunHandle:
    """A submitted task: its id and log, `cancel()`, and `result()` once it is done."""

    def __init__(self, task: Task, run_dir: Path, job: Job, finished: threading.Event) -> None:
        self.task = task
        self.task_id = task.task_id
        self.run_dir = run_dir
        self._job = job
        self._finished = finished
        self._result: AttemptResult | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def cancel(self) -> None:
        """Stop the run between turns and kill a running command; the result says cancelled."""
        self._job.cancel()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> AttemptResult:
        if not self._finished.wait(timeout):
            raise TimeoutError(f"task {self.task_id} is still running")
        assert self._result is not None
        return self._result


class Engine:
    """Submits tasks to an executor and closes each run: PR, task.finished, listeners."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.executor: Executor = executor or ThreadExecutor(1)
        self.publisher = publisher

    def submit(
        self,
        task: Task,
        listeners: Iterable[Listener] = (),
        settings: Settings | None = None,
    ) -> RunHandle:
        check_task(task)
        settings = settings or self.settings
        run_dir = run_dir_for(settings, task.task_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        view = EventLog(task.task_id)  # no file: the worker writes it; this one fans out
        for listener in listeners:
            # With streamed replies the listeners see the transient `model.delta` events too.
            view.subscribe(listener, transient=settings.stream_replies)
        finished = threading.Event()
        job = self.executor.submit(task, settings, view.relay)
        handle = RunHandle(task, run_dir, job, finished)

        def close_run() -> None:
            try:
                result = job.result()
            except Exception as exc:  # the executor lost the work (a worker died, ...)
                result = read_result(run_dir) or AttemptResult.failed_to_start(
                    task, str(exc), str(run_dir)
                )
                result.status, result.error = "error", str(exc)
                result.error_kind = result.error_kind or "internal"
            log = EventLog(task.task_id, run_dir / "events.jsonl", forward=view.relay)
            try:
                self._publish(task, result, log)
                for failure in view.failures:
                    log.emit(failure)
                log.emit(finished_event(result))
            finally:
                log.close()
                view.close()
                handle._result = result
                finished.set()

        threading.Thread(target=close_run, name=f"engine-{task.task_id}", daemon=True).start()
        return handle

    def _publish(self, task: Task, result: AttemptResult, log: EventLog) -> None:
        if self.publisher is None or result.status == "cancelled":
            return
        continues_pr = task.follow_up is not None and task.follow_up.pr_number is not None
        if result.status == "error" and result.commit is None and not continues_pr:
            return  # nothing to show for it: the error is the whole story
        try:
            result.pull_request = self.publisher.publish(task, result, log)
        except UserError as exc:
            log.emit(WarningEvent(message=f"the run was not recorded as a pull request: {exc}"))
        except Exception as exc:  # a bug of ours must not lose the finished run
            log.emit(
                WarningEvent(
                    message="the run was not recorded as a pull request (pullsmith failed: "
                    f"{type(exc).__name__}: {exc}); its branch holds the work — please report it."
                )
            )
        write_result(Path(result.run_dir or run_dir_for(self.settings, task.task_id)), result)

    def run(self, task: Task, listeners: Iterable[Listener] = ()) -> AttemptResult:
        """Submit `task` and wait for its result."""
        return self.submit(task, listeners).result()

    def close(self) -> None:
        self.executor.shutdown()


def finished_event(result: AttemptResult) -> TaskFinished:
    after = result.tests_after
    totals = result.totals()
    return TaskFinished(
        status=result.status,
        exit_reason=result.exit_reason,
        summary=result.summary,
        error=result.error,
        branch=result.branch,
        commit=result.commit,
        diff_stat=result.diff_stat,
        worktree=result.worktree,
        run_dir=result.run_dir,
        test_command=result.test_command,
        tests_command=after.command if after else None,
        tests_exit_code=after.exit_code if after else None,
        turns=totals["turns"],
        prompt_tokens=totals["prompt_tokens"],
        completion_tokens=totals["completion_tokens"],
        cached_tokens=totals["cached_tokens"],
        wall_seconds=totals["wall_seconds"],
        chosen_attempt=result.attempt,
        attempts=result.attempts,
        pull_request=result.pull_request,
        cache_write_tokens=totals["cache_write_tokens"],
        cost_usd=totals["cost_usd"],
    )


def run_task(
    task: Task,
    settings: Settings,
    model: Model | None = None,
    listeners: Iterable[Listener] = (),
    publisher: Publisher | None = None,
) -> AttemptResult:
    """Run one task in this process and wait for it (the engine with one in-process worker)."""
    engine = Engine(settings, ThreadExecutor(1, model=model), publisher)
    try:
        return engine.run(task, listeners)
    finally:
        engine.close()
