"""Executors: where the work of tasks runs. The engine sees only the Executor Protocol.

- `ThreadExecutor`: threads of this process. It can share one model object among its runs
  (tests, scripted and replay models); `exec` uses it with one thread.
- `ProcessExecutor`: a pool of N worker processes, each running one task at a time. A worker
  gets a Task and Settings as plain data and nothing else; its events come back over a queue
  as they happen (its own log file is written first), its result when it is done. A worker that
  dies fails only its task, and a new worker takes its place.

Both run at most N tasks at once, and when their tasks use the bundled model they share one
llama.cpp server with N slots, started on first use and stopped at shutdown. `make_executor`
picks the one the settings name; `executor = "ray"` is `pullsmith.ray_executor.RayExecutor`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pullsmith.agent.loop import Approve
from pullsmith.attempt import run_dir_for
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import Event, EventLog
from pullsmith.models import Model
from pullsmith.task import AttemptResult, Task
from pullsmith.work import execute


class Job(Protocol):
    """A task's work as an executor runs it."""

    def cancel(self) -> None: ...

    def result(self, timeout: float | None = None) -> AttemptResult: ...


class Executor(Protocol):
    """Runs the work of tasks (see `execute`), each with its events sent to `on_event`."""

    def submit(self, task: Task, settings: Settings, on_event: Callable[[Event], None]) -> Job: ...

    def shutdown(self, cancel: bool = False) -> None: ...


# How often a worker checks that the process that started it is still there.
PARENT_CHECK_S = 0.25
# How often the process pool's dispatcher looks for workers that died.
WATCH_INTERVAL_S = 0.5


def cancelled_before_start(task: Task, settings: Settings) -> AttemptResult:
    run_dir = str(run_dir_for(settings, task.task_id))
    return AttemptResult.failed_to_start(task, "cancelled before it started", run_dir, "cancelled")


def run_work(
    task: Task,
    settings: Settings,
    on_event: Callable[[Event], None],
    model: Model | None,
    cancel: threading.Event,
    approve: Approve | None = None,
) -> AttemptResult:
    """The work of one task where it runs: its log written here, each event passed on."""
    log = EventLog(
        task.task_id, run_dir_for(settings, task.task_id) / "events.jsonl", forward=on_event
    )
    try:
        return execute(task, settings, log, model, cancel, approve)
    finally:
        log.close()


class _SharedModelServer:
    """The bundled model's server for all of an executor's tasks, started on first need."""

    def __init__(self, slots: int, log_path: Path | None) -> None:
        self.slots = slots
        self.log_path = log_path
        self._lock = threading.Lock()
        self._server: Any = None

    def settings_for(self, settings: Settings) -> Settings:
        if not settings.uses_local_model or settings.local_server_url:
            return settings
        with self._lock:
            if self._server is None:
                from pullsmith.models.local import serve_shared

                self._server = serve_shared(settings, slots=self.slots, log_path=self.log_path)
        return dataclasses.replace(settings, local_server_url=self._server.base_url)

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None


class _ThreadJob:
    def __init__(self, task: Task, settings: Settings) -> None:
        self.task = task
        self.settings = settings
        self.cancel_event = threading.Event()
        self.future: Future[AttemptResult] | None = None

    def cancel(self) -> None:
        self.cancel_event.set()
        if self.future is not None:
            self.future.cancel()  # not started yet: it never will

    def result(self, timeout: float | None = None) -> AttemptResult:
        assert self.future is not None
        try:
            return self.future.result(timeout)
        except CancelledError:
            return cancelled_before_start(self.task, self.settings)


class ThreadExecutor:
    """Runs tasks on `workers` threads of this process, sharing `model` when one is given.

    `approve` is the approval hook of an interactive front end (pullsmith.agent.loop.Approve),
    which only threads of the front end's own process can call."""

    def __init__(
        self,
        workers: int = 1,
        model: Model | None = None,
        log_path: Path | None = None,
        approve: Approve | None = None,
    ) -> None:
        if workers < 1:
            raise UserError(f"--workers must be at least 1 (got {workers}).")
        self.workers = workers
        self.model = model
        self.approve = approve
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")
        self._server = _SharedModelServer(workers, log_path)
        self._jobs: list[_ThreadJob] = []

    def submit(
        self, task: Task, settings: Settings, on_event: Callable[[Event], None]
    ) -> _ThreadJob:
        if self.model is None:
            settings = self._server.settings_for(settings)
        job = _ThreadJob(task, settings)
        job.future = self._pool.submit(
            run_work, task, settings, on_event, self.model, job.cancel_event, self.approve
        )
        self._jobs.append(job)
        return job

    def model_settings(self, settings: Settings) -> Settings:
        """`settings` pointed at the model this executor's tasks use: with the bundled model,
        its shared server (started now if it is not running yet)."""
        return settings if self.model is not None else self._server.settings_for(settings)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for job in self._jobs:
                job.cancel()
        self._pool.shutdown(wait=True)
        self._server.close()


# --- worker processes --------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Exit as soon as the process that started this worker is gone (killed, OOM): nobody
    would record what the worker does, and a restarted service would run its task again."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)  # the sandbox (bwrap --die-with-parent) takes the running command along


def _worker_main(inbox: Any, outbox: Any, parent: int | None = None) -> None:
    """A worker process: run the jobs sent on `inbox` one at a time; report on `outbox`."""
    # Ctrl-C at a terminal reaches the whole process group; cancelling is the parent's call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    cancels: dict[int, threading.Event] = {}
    running: threading.Thread | None = None

    def work(job_id: int, task_data: dict[str, Any], settings: Settings) -> None:
        task = Task.from_dict(task_data)
        try:
            result = run_work(
                task,
                settings,
                lambda event: outbox.put(("event", job_id, event.to_dict())),
                None,
                cancels[job_id],
            )
            outbox.put(("done", job_id, result.to_dict()))
        except BaseException as exc:  # reported to the parent, never lost
            outbox.put(("failed", job_id, f"{type(exc).__name__}: {exc}"))
        finally:
            cancels.pop(job_id, None)

    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            message = ("stop",)
        if message[0] == "run":
            _, job_id, task_data, settings = message
            cancels[job_id] = threading.Event()
            running = threading.Thread(target=work, args=(job_id, task_data, settings))
            running.start()
        elif message[0] == "cancel":
            event = cancels.get(message[1])
            if event is not None:
                event.set()
        elif message[0] == "stop":
            for event in list(cancels.values()):
                if len(message) > 1 and message[1]:
                    event.set()
            if running is not None:
                running.join()
            return


class _ProcessJob:
    def __init__(
        self, job_id: int, task: Task, settings: Settings, on_event: Callable[[Event], None]
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.settings = settings
        self.on_event = on_event
        self.future: Future[AttemptResult] = Future()
        self.worker: _Worker | None = None
        self.cancelled = False
        self._pool: ProcessExecutor | None = None

    def cancel(self) -> None:
        assert self._pool is not None
        self._pool._cancel(self)

    def result(self, timeout: float | None = None) -> AttemptResult:
        return self.future.result(timeout)


@dataclasses.dataclass
class _Worker:
    process: Any
    inbox: Any
    job: _ProcessJob | None = None


class ProcessExecutor:
    """A pool of `workers` processes; each runs one task at a time."""

    def __init__(self, workers: int = 1, log_path: Path | None = None) -> None:
        if workers < 1:
            raise UserError(f"--workers must be at least 1 (got {workers}).")
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._outbox: Any = self._ctx.Queue()
        self._lock = threading.Lock()
        self._pool: list[_Worker] = []
        self._pending: list[_ProcessJob] = []
        self._jobs: dict[int, _ProcessJob] = {}
        self._ids = itertools.count(1)
        self._server = _SharedModelServer(workers, log_path)
        self._closed = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, daemon=True)
        self._dispatcher.start()

    def submit(
        self, task: Task, settings: Settings, on_event: Callable[[Event], None]
    ) -> _ProcessJob:
        if self._closed.is_set():
            raise UserError("the executor was shut down; start a new one.")
        settings = self._server.settings_for(settings)
        job = _ProcessJob(next(self._ids), task, settings, on_event)
        job._pool = self
        with self._lock:
            self._jobs[job.job_id] = job
            self._pending.append(job)
            self._assign()
        return job

    def _spawn(self) -> _Worker:
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(receive, self._outbox, os.getpid()),
            name="pullsmith-worker",
            daemon=True,
        )
        process.start()
        receive.close()
        return _Worker(process=process, inbox=send)

    def _assign(self) -> None:
        """Give pending jobs to idle workers (called with the lock held)."""
        while self._pending:
            idle = next((w for w in self._pool if w.job is None), None)
            if idle is None and len(self._pool) < self.workers:
                idle = self._spawn()
                self._pool.append(idle)
            if idle is None:
                return
            job = self._pending.pop(0)
            idle.job, job.worker = job, idle
            idle.inbox.send(("run", job.job_id, job.task.to_dict(), job.settings))

    def _cancel(self, job: _ProcessJob) -> None:
        with self._lock:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, cancelled_before_start(job.task, job.settings))
                return
            if job.worker is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    job.worker.inbox.send(("cancel", job.job_id))

    def _finish(self, job: _ProcessJob, result: AttemptResult) -> None:
        """Called with the lock held."""
        self._jobs.pop(job.job_id, None)
        if job.worker is not None and job.worker.job is job:
            job.worker.job = None
        if not job.future.done():
            job.future.set_result(result)

    def _dispatch_loop(self) -> None:
        while not (self._closed.is_set() and not self._jobs):
            try:
                kind, job_id, body = self._outbox.get(timeout=WATCH_INTERVAL_S)
            except queue.Empty:
                self._watch()
                continue
            except (EOFError, OSError):
                return
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if kind == "event":
                with contextlib.suppress(Exception):
                    job.on_event(Event.from_dict(body))
                continue
            if kind == "done":
                result = AttemptResult.from_dict(body)
            else:
                result = self._lost(job, f"the worker running it failed: {body}")
            with self._lock:
                self._finish(job, result)
                self._assign()

    def _watch(self) -> None:
        """Fail the task of a worker that died, and put a new worker in its place."""
        with self._lock:
            for worker in list(self._pool):
                if worker.process.is_alive():
                    continue
                self._pool.remove(worker)
                if worker.job is not None:
                    code = worker.process.exitcode
                    self._finish(
                        worker.job,
                        self._lost(
                            worker.job, f"the worker process running it died (exit code {code})"
                        ),
                    )
            self._assign()

    @staticmethod
    def _lost(job: _ProcessJob, why: str) -> AttemptResult:
        from pullsmith.attempt import read_result

        run_dir = run_dir_for(job.settings, job.task.task_id)
        result = read_result(run_dir) or AttemptResult.failed_to_start(job.task, why, str(run_dir))
        result.status, result.error, result.error_kind = "error", f"{why}; run it again.", "worker"
        return result

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the workers: after their tasks end, or cancelling them with `cancel`."""
        if not cancel:
            for job in list(self._jobs.values()):
                with contextlib.suppress(Exception):
                    job.future.result()
        with self._lock:
            if cancel:
                for job in list(self._pending):
                    self._pending.remove(job)
                    self._finish(job, cancelled_before_start(job.task, job.settings))
            workers = list(self._pool)
        for worker in workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                worker.inbox.send(("stop", cancel))
        for worker in workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._closed.set()
        self._dispatcher.join(timeout=5)
        with self._lock:
            for job in list(self._jobs.values()):
                self._finish(job, self._lost(job, "the executor shut down before it finished"))
        self._server.close()


def make_executor(settings: Settings, workers: int = 1, log_path: Path | None = None) -> Executor:
    """The executor the settings ask for: `workers` worker processes of this machine, or the
    Ray cluster of `settings.ray_address` (`executor = "ray"`; UserError when it can not be
    reached or ray is not installed)."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers}).")
    if settings.executor == "ray":
        from pullsmith.ray_executor import RayExecutor

        return RayExecutor(settings, workers)
    return ProcessExecutor(workers, log_path=log_path)
