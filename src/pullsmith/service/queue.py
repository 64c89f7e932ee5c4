"""The service's task queue: tasks kept in the store, run by one Engine, oldest first.

`TaskService` owns the engine (a process pool of `workers` and the local publisher). Creating a
task only writes its row; a scheduler thread hands queued rows to the engine while fewer than
`workers` have their work in the executor, and a thread per run stores the result and the final
state when the RunHandle is done. A task's slot is freed the moment its work hands back a result
(`_SlotExecutor`), before the engine records its PR and the service stores its end: the next
task is claimed and sent to the worker meanwhile, so a worker does not wait for the closing of
the task before. A task is "running" from its claim until its end is stored, so for that short
overlap one more task than `workers` can be "running" while at most `workers` are at work. Each run's events are written to the `service_events` table by a listener on the
RunHandle (its own thread) before any client is sent them, and again from the run's
events.jsonl when the run ends, so the table holds every line of the log.

A stop drains: running tasks are cancelled and end "cancelled", queued ones stay queued. A
task the previous process left "running" (it was killed) is marked interrupted when the service
starts again; the first time it is queued again, its lost attempt's worktree removed and its
branch kept under another name; the second time it stays "interrupted".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from pullsmith.attempt import read_result, run_dir_for, write_result
from pullsmith.config import Settings
from pullsmith.engine import Engine, Publisher, RunHandle
from pullsmith.errors import UserError
from pullsmith.events import Event, EventLog, WarningEvent, read_events
from pullsmith.executors import Executor, Job, make_executor
from pullsmith.models.replay import REPLAY_PREFIX, is_replay, load_recordings
from pullsmith.pr.publish import LocalPublisher
from pullsmith.service.environments import Environments
from pullsmith.service.errors import Conflict, Invalid, NotFound
from pullsmith.service.tables import (
    CANCELLED,
    ERROR,
    FINISHED_STATES,
    INTERRUPTED,
    QUEUED,
    RESULT_STATES,
    RUNNING,
    STATES,
    ServiceEvent,
    ServiceTask,
)
from pullsmith.store import Store, StoreUnavailable, utcnow
from pullsmith.task import AttemptResult, Task, new_task_id
from pullsmith.workspace import BRANCH_PREFIX, GitError, git, is_url, resolve_repo

# A task interrupted this many times (the service stopped under it) is not run again.
MAX_TRIES = 2
MAX_ATTEMPTS = 20
# The longest pause between tries to store a run's end in a store that can't be written.
END_RETRY_MAX_S = 5.0
# The model settings a task keeps from the service's settings when it is queued.
MODEL_OPTIONS = ("model", "base_url", "protocol", "edit_forms")


@dataclass(frozen=True)
class NewTask:
    """What a client asks for; `TaskService.create` checks it."""

    repo: str
    instruction: str
    base: str | None = None
    attempts: int = 1
    until_pass: bool = False
    model: str | None = None


class Notifier:
    """Wakes the event streams of a task (asyncio waiters) from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextlib.contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        """An asyncio.Event set whenever `task_id` has news (call from the event loop)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(task_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[task_id]

    def notify(self, task_id: str | None = None) -> None:
        """Wake the streams of `task_id`, or of every task."""
        with self._lock:
            if task_id is None:
                entries = [entry for group in self._waiters.values() for entry in group]
            else:
                entries = list(self._waiters.get(task_id, ()))
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)


class _SlotJob:
    """A Job that calls `on_done` once, when its result (or its failure) is first handed back."""

    def __init__(self, job: Job, on_done: Callable[[], None]) -> None:
        self._job = job
        self._on_done = on_done
        self._lock = threading.Lock()
        self._fired = False

    def cancel(self) -> None:
        self._job.cancel()

    def result(self, timeout: float | None = None) -> AttemptResult:
        try:
            result = self._job.result(timeout)
        except TimeoutError:
            raise  # still running: its slot stays taken
        except BaseException:
            self._fire()  # the executor lost the work: over all the same
            raise
        self._fire()
        return result

    def _fire(self) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
        self._on_done()


class _SlotExecutor:
    """The service's view of its executor: tells the scheduler when a task's work is over
    (the engine asks for the result as soon as the executor has it), so that its slot is
    free while the engine and the service close the task."""

    def __init__(self, executor: Executor, on_done: Callable[[str], None]) -> None:
        self.inner = executor
        self._on_done = on_done

    def submit(self, task: Task, settings: Settings, on_event: Callable[[Event], None]) -> Job:
        job = self.inner.submit(task, settings, on_event)
        return _SlotJob(job, lambda: self._on_done(task.task_id))

    def shutdown(self, cancel: bool = False) -> None:
        self.inner.shutdown(cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _say(message: str) -> None:
    print(f"pullsmith serve: {message}", file=sys.stderr, flush=True)


class TaskService:
    """The queue, the engine and the store behind the API."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        workers: int = 2,
        executor: Executor | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        if workers < 1:
            raise UserError(f"--workers must be at least 1 (got {workers}).")
        self.settings = settings
        self.store = store
        self.workers = workers
        self.executor: Executor = executor or make_executor(
            settings, workers, log_path=settings.data_dir / "service-model-server.log"
        )
        self.engine = Engine(
            settings,
            _SlotExecutor(self.executor, self._work_done),
            publisher or LocalPublisher(settings),
        )
        self.environments = Environments(store)
        self.notifier = Notifier()
        self._lock = threading.RLock()
        # The tasks handed to the engine (None while being handed), and their closing threads.
        self._running: dict[str, RunHandle | None] = {}
        # The tasks of `_running` whose work is still in the executor: at most `workers`.
        self._busy: set[str] = set()
        self._cancel_asked: set[str] = set()
        self._pr_lock = threading.Lock()
        self._follow_up_lock = threading.Lock()
        self._closers: dict[str, threading.Thread] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._closed = False

    # --- life ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> dict[str, int]:
        """Recover what a previous process left running, then start taking queued tasks.

        Returns how many tasks were queued again, left interrupted, and are queued now.
        """
        requeued, interrupted = self.recover()
        self._scheduler = threading.Thread(
            target=self._schedule_loop, name="service-scheduler", daemon=True
        )
        self._scheduler.start()
        self._wake.set()
        return {"requeued": requeued, "interrupted": interrupted, "queued": self.count(QUEUED)}

    def begin_drain(self) -> None:
        """Stop taking tasks and cancel the running ones (returns at once)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        with self._lock:
            handles = [handle for handle in self._running.values() if handle is not None]
        for handle in handles:
            handle.cancel()
        self.notifier.notify()

    def close(self, timeout: float = 60.0) -> None:
        """Drain: cancel the running tasks, wait for them to end and record them; queued
        tasks stay queued. A run still going after `timeout` stays "running" in the store, and
        the next start marks it interrupted."""
        if self._closed:
            return
        self._closed = True
        self.begin_drain()
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
        with self._lock:
            closers = list(self._closers.values())
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._running)
        if left:
            _say(
                f"{len(left)} task(s) did not stop in time and are marked interrupted at the next start."
            )
        else:
            self.engine.close()
        self.notifier.notify()

    # --- creating and reading tasks -------------------------------------------------------

    def model_options(self, model: str | None = None) -> dict[str, Any]:
        values = {name: getattr(self.settings, name) for name in MODEL_OPTIONS}
        if model:
            values["model"] = model
        return {name: value for name, value in values.items() if value is not None}

    def _model_settings(self, row: ServiceTask) -> Settings:
        options = {k: v for k, v in (row.model_options or {}).items() if k in MODEL_OPTIONS}
        return dataclasses.replace(self.settings, **options)

    def settings_for(self, row: ServiceTask) -> Settings:
        """The settings `row` runs with: its model options, and its repository's environment
        (read when it starts, so that an environment changed meanwhile applies)."""
        environment = self.environments.for_repo(row.repo)
        return dataclasses.replace(self._model_settings(row), environment=environment)

    def model_name(self, row: ServiceTask) -> str:
        return self._model_settings(row).model_name

    def create(self, new: NewTask) -> ServiceTask:
        """Check `new` and queue it (Invalid says what is wrong with it)."""
        for name in ("repo", "instruction", "base", "model"):
            if "\x00" in (getattr(new, name) or ""):
                raise Invalid(f"{name} holds a NUL character; send it without one.")
        instruction = new.instruction.strip()
        if not instruction:
            raise Invalid('the instruction is empty; say what you want done, e.g. "fix X".')
        if not 1 <= new.attempts <= MAX_ATTEMPTS:
            raise Invalid(f"attempts must be between 1 and {MAX_ATTEMPTS} (got {new.attempts}).")
        repo = check_repo(new.repo, self.settings)
        try:
            self.environments.for_repo(repo)
        except UserError as exc:
            raise Invalid(exc.message) from None
        base = (new.base or "").strip() or None
        if base is not None and not is_url(repo):
            check_base(Path(repo), base)
        elif base is None and not is_url(repo):
            check_base(Path(repo), "HEAD")
        model = (new.model or "").strip() or None
        if model is not None and is_replay(model):
            try:
                load_recordings(model[len(REPLAY_PREFIX) :], self.settings.runs_dir)
            except UserError as exc:
                raise Invalid(exc.message) from None
        while True:
            row = ServiceTask(
                id=new_task_id(),
                repo=repo,
                base=base,
                instruction=new.instruction,
                attempts=new.attempts,
                until_pass=bool(new.until_pass),
                model_options=self.model_options(model),
                state=QUEUED,
                created_at=utcnow(),
                tries=0,
                interruptions=0,
            )
            if run_dir_for(self.settings, row.id).exists():
                continue  # an id `exec` used: its branch and log are taken
            try:
                with self.store.session() as session:
                    session.add(row)
            except IntegrityError:
                continue  # the same id, made in the same second
            break
        self._wake.set()
        return row

    def follow_up(self, task_id: str, instruction: str) -> ServiceTask:
        """Queue a follow-up of `task_id`: a new instruction on its pull request's branch,
        recorded as one more run of the same PR."""
        text = instruction.strip()
        if not text:
            raise Invalid('the instruction is empty; say what to do next, e.g. "add a test".')
        if "\x00" in text:
            raise Invalid("instruction holds a NUL character; send it without one.")
        with self._follow_up_lock:  # not while its PR merges (`merging`)
            return self._follow_up(task_id, text)

    def _follow_up(self, task_id: str, text: str) -> ServiceTask:
        earlier = self.require(task_id)
        if earlier.state not in FINISHED_STATES:
            raise Conflict(f"task {task_id} is {earlier.state}; follow it up once it has finished.")
        number = earlier.pr_number
        if number is None:
            raise Conflict(
                f"task {task_id} has no pull request to continue (it made no commit); queue a "
                "new task instead."
            )
        pr = self.store.pull_request(number)
        if pr.state != "open":
            raise Conflict(
                f"pull request #{number} of task {task_id} is {pr.state}; only an open pull "
                "request can be followed up (queue a new task instead)."
            )
        row = ServiceTask(
            id=new_task_id(),
            repo=earlier.repo,
            base=pr.head,
            instruction=text,
            attempts=1,
            until_pass=False,
            model_options=dict(earlier.model_options or {}),
            state=QUEUED,
            created_at=utcnow(),
            tries=0,
            interruptions=0,
            follows=earlier.id,
            pr_number=number,
        )
        with self.store.session() as session:
            session.add(row)
        self._wake.set()
        return row

    def _task_for(self, row: ServiceTask) -> Task:
        """The engine's Task for `row`; a follow-up checks its PR's branch out again."""
        if row.follows is None or row.pr_number is None:
            return task_of(row)
        from pullsmith.pr.followup import prepare_follow_up

        prepared = prepare_follow_up(
            self.store, self.settings_for(row), str(row.pr_number), row.instruction, task_id=row.id
        )
        return prepared.task

    def get(self, task_id: str) -> ServiceTask | None:
        with self.store.session() as session:
            return session.get(ServiceTask, task_id)

    def require(self, task_id: str) -> ServiceTask:
        row = self.get(task_id)
        if row is None:
            raise NotFound(
                f"there is no task {task_id!r}; GET /api/tasks lists the tasks there are."
            )
        return row

    def list(
        self,
        states: tuple[str, ...] = (),
        repo: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ServiceTask], int]:
        """Tasks newest first, optionally in some states and of one repository; and how many
        match in all."""
        unknown = [state for state in states if state not in STATES]
        if unknown:
            raise Invalid(f"unknown state {unknown[0]!r}; the states are: {', '.join(STATES)}.")
        query = select(ServiceTask)
        count = select(func.count()).select_from(ServiceTask)
        if states:
            query = query.where(ServiceTask.state.in_(states))
            count = count.where(ServiceTask.state.in_(states))
        if repo:
            wanted = _normal_repo(repo)
            query = query.where(ServiceTask.repo == wanted)
            count = count.where(ServiceTask.repo == wanted)
        query = query.order_by(ServiceTask.created_at.desc(), ServiceTask.id.desc())
        with self.store.session() as session:
            total = int(session.scalar(count) or 0)
            rows = list(session.scalars(query.limit(limit).offset(offset)))
        return rows, total

    def count(self, state: str) -> int:
        with self.store.session() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(ServiceTask).where(ServiceTask.state == state)
                )
                or 0
            )

    def is_running(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._running

    # --- cancelling -----------------------------------------------------------------------

    def cancel(self, task_id: str) -> tuple[ServiceTask, bool]:
        """Cancel a queued task at once, or ask a running one to stop.

        Returns the task and whether it is still running (it ends "cancelled" shortly).
        """
        with self._lock:
            row = self.require(task_id)
            if row.state == QUEUED and self._move(task_id, QUEUED, CANCELLED, finished_at=utcnow()):
                self.notifier.notify(task_id)
                return self.require(task_id), False
            row = self.require(task_id)  # the scheduler may have taken it meanwhile
            if row.state == RUNNING:
                handle = self._running.get(task_id)
                if handle is not None:
                    handle.cancel()
                else:  # being handed to the engine: cancelled as soon as it is
                    self._cancel_asked.add(task_id)
                return row, True
        raise Conflict(f"task {task_id} is already {row.state}; there is nothing to cancel.")

    # --- events ---------------------------------------------------------------------------

    def events_after(self, task_id: str, after: int = 0, limit: int = 500) -> list[Event]:
        query = (
            select(ServiceEvent)
            .where(ServiceEvent.task_id == task_id, ServiceEvent.id > after)
            .order_by(ServiceEvent.id)
            .limit(limit)
        )
        with self.store.session() as session:
            rows = list(session.scalars(query))
        return [
            Event(id=r.id, type=r.type, task_id=r.task_id, ts=r.ts, data=dict(r.data or {}), v=r.v)
            for r in rows
        ]

    def store_event(self, task_id: str, event: Event) -> None:
        """Write one event of `task_id` to the table (a repeat of a stored one is skipped)."""
        try:
            with self.store.session() as session:
                if session.get(ServiceEvent, (task_id, event.id)) is None:
                    session.add(_event_row(task_id, event))
        except IntegrityError:
            pass  # stored meanwhile (from the log file, say)
        self.notifier.notify(task_id)

    def _listener(self, task_id: str) -> Callable[[Event], None]:
        failed = [0]  # events of this run not stored: the first one is said, then a count

        def store_run_event(event: Event) -> None:
            try:
                self.store_event(task_id, event)
            except Exception as exc:  # the log file has it: the run's end copies it over
                failed[0] += 1
                if failed[0] == 1:
                    reason = exc.message if isinstance(exc, UserError) else repr(exc)
                    _say(
                        f"could not store event {event.id} of task {task_id} ({reason}); its "
                        "log keeps the events, and they are copied over when it ends."
                    )

        return store_run_event

    def sync_events(self, task_id: str) -> int:
        """Copy the lines of the run's events.jsonl that the table misses; how many."""
        path = run_dir_for(self.settings, task_id) / "events.jsonl"
        if not path.exists():
            return 0
        events = read_events(path)
        with self.store.session() as session:
            have = set(
                session.scalars(select(ServiceEvent.id).where(ServiceEvent.task_id == task_id))
            )
            missing = [event for event in events if event.id not in have]
            seen: set[int] = set()
            for event in missing:
                if event.id not in seen:
                    seen.add(event.id)
                    session.add(_event_row(task_id, event))
        if missing:
            self.notifier.notify(task_id)
        return len(seen)

    def _emit(self, task_id: str, payload: WarningEvent) -> None:
        """Add an event of the service's own to the task's log (file first, then the table)."""
        path = run_dir_for(self.settings, task_id) / "events.jsonl"
        _repair_log(path)
        log = EventLog(task_id, path, forward=lambda event: self.store_event(task_id, event))
        try:
            log.emit(payload)
        finally:
            log.close()

    # --- the scheduler --------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        said = ""  # what the last failure said: a store that stays unwritable is said once
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._fill()
            except UserError as exc:  # the store can't be written: the task stays queued
                if exc.message != said:
                    said = exc.message
                    _say(f"could not take the next task from the queue ({exc.message})")
                time.sleep(1.0)
                continue
            except Exception:  # keep scheduling; the next wake tries again
                said = ""
                _say("the scheduler failed:\n" + traceback.format_exc())
                time.sleep(1.0)
                continue
            if said:
                said = ""
                _say("the store can be written again; the queue moves on.")

    def _next_queued(self) -> ServiceTask | None:
        query = (
            select(ServiceTask)
            .where(ServiceTask.state == QUEUED)
            .order_by(ServiceTask.created_at, ServiceTask.id)
            .limit(1)
        )
        with self.store.session() as session:
            return session.scalars(query).first()

    def _fill(self) -> None:
        while True:
            with self._lock:
                if self._stopping.is_set() or len(self._busy) >= self.workers:
                    return
                row = self._next_queued()
                if row is None:
                    return
                claimed = self._move(
                    row.id, QUEUED, RUNNING, started_at=utcnow(), tries=row.tries + 1
                )
                if not claimed:
                    continue  # cancelled meanwhile
                self._running[row.id] = None
                self._busy.add(row.id)
            self._submit(row)

    def _submit(self, row: ServiceTask) -> None:
        """Hand `row`, claimed as running, to the engine. Not under the lock: the first task
        of the bundled model waits here for its server to start."""
        task = task_of(row)
        try:
            task = self._task_for(row)
            handle = self.engine.submit(task, [self._listener(row.id)], self.settings_for(row))
        except Exception as exc:
            with self._lock:
                self._running.pop(row.id, None)
                self._busy.discard(row.id)
                self._cancel_asked.discard(row.id)
            message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            result = AttemptResult.failed_to_start(
                task, message, str(run_dir_for(self.settings, row.id))
            )
            self._update(
                row.id,
                state=ERROR,
                finished_at=utcnow(),
                result=result.to_dict(),
                error=message,
            )
            self.notifier.notify(row.id)
            self._wake.set()
            return
        closer = threading.Thread(
            target=self._await, args=(handle,), name=f"service-{row.id}", daemon=True
        )
        with self._lock:
            self._running[row.id] = handle
            self._closers[row.id] = closer
            if row.id in self._cancel_asked or self._stopping.is_set():
                self._cancel_asked.discard(row.id)
                handle.cancel()
        closer.start()
        self.notifier.notify(row.id)

    def _await(self, handle: RunHandle) -> None:
        task_id = handle.task_id
        try:
            result = handle.result()
            self._record_end(task_id, result)
        except Exception:
            _say(f"could not record the end of task {task_id}:\n" + traceback.format_exc())
        finally:
            with self._lock:
                self._running.pop(task_id, None)
                self._busy.discard(task_id)
                self._closers.pop(task_id, None)
            self.notifier.notify(task_id)
            self._wake.set()

    def _record_end(self, task_id: str, result: AttemptResult) -> None:
        """Store the end of a run: the events its log has and the table misses, then its
        state and result in one write. A store that can't be written (read-only, disk full)
        is said once and retried until it can, or until the service stops: then the task
        stays "running" and the next start runs it again (its branch kept)."""
        state = result.status if result.status in RESULT_STATES else ERROR
        pause = 1.0
        said = False
        while True:
            try:
                # The events first: a stream that sees the final state has them all.
                try:
                    self.sync_events(task_id)
                except UserError:
                    raise
                except Exception as exc:  # the log itself is unreadable: the state still goes
                    _say(f"could not copy the events of task {task_id} from its log ({exc}).")
                self._update(
                    task_id,
                    state=state,
                    finished_at=utcnow(),
                    result=result.to_dict(),
                    pr_number=result.pull_request,
                    error=result.error,
                )
            except UserError as exc:
                if self._stopping.is_set():
                    _say(
                        f"could not record the end of task {task_id} ({exc.message}); it "
                        "stays running in the store, and the next start runs it again."
                    )
                    return
                if not said:
                    said = True
                    _say(
                        f"could not record the end of task {task_id} ({exc.message}); it "
                        f"ended {state}, which is stored as soon as the store can be written."
                    )
                self._stopping.wait(pause)
                pause = min(pause * 2, END_RETRY_MAX_S)
                continue
            if said:
                _say(f"recorded the end of task {task_id} ({state}) after all.")
            return

    def _work_done(self, task_id: str) -> None:
        """The work of `task_id` is over (its result is back): its slot takes the next task."""
        with self._lock:
            self._busy.discard(task_id)
        self._wake.set()

    def _update(self, task_id: str, **values: Any) -> None:
        with self.store.session() as session:
            session.execute(update(ServiceTask).where(ServiceTask.id == task_id).values(**values))

    def _move(self, task_id: str, old: str, new: str, **values: Any) -> bool:
        """Set the task's state from `old` to `new` (and `values`); False if it was not `old`."""
        with self.store.session() as session:
            done = session.execute(
                update(ServiceTask)
                .where(ServiceTask.id == task_id, ServiceTask.state == old)
                .values(state=new, **values)
            )
        return bool(getattr(done, "rowcount", 0))

    # --- after a crash --------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """Mark the tasks a previous process left running interrupted; queue each again
        once. Returns (queued again, left interrupted)."""
        with self.store.session() as session:
            rows = list(session.scalars(select(ServiceTask).where(ServiceTask.state == RUNNING)))
        requeued = interrupted = 0
        for row in rows:
            try:
                self.sync_events(row.id)
            except Exception as exc:
                _say(f"could not copy the events of task {row.id} from its log ({exc}).")
            self._update(row.id, state=INTERRUPTED, interruptions=row.interruptions + 1)
            if row.tries < MAX_TRIES:
                note = self._set_aside(row)
                self._emit(
                    row.id,
                    WarningEvent(
                        message=f"the service stopped while this task ran (try {row.tries}); "
                        f"it runs again from the start{note}."
                    ),
                )
                self._update(row.id, state=QUEUED)
                requeued += 1
            else:
                message = (
                    f"the service stopped while this task ran, for the {_nth(row.tries)} time; "
                    "it is not run again: queue it anew to retry."
                )
                self._emit(row.id, WarningEvent(message=message))
                self._update(row.id, finished_at=utcnow(), error=message)
                interrupted += 1
        return requeued, interrupted

    def _set_aside(self, row: ServiceTask) -> str:
        """Clear the way for a new run of `row`: remove the lost attempt's worktrees and
        rename its branches (nothing it committed is lost). A note for the log."""
        try:
            repo = resolve_repo(row.repo, self.settings.data_dir / "clones")
        except UserError as exc:
            return f" (its repository could not be opened: {exc.message})"
        names = [row.id] + [f"{row.id}-{n}" for n in range(1, row.attempts + 1)]
        root = self.settings.worktrees_dir.expanduser().resolve()
        kept: list[str] = []
        try:
            for name in names:
                path = root / name
                if path.exists():
                    git(
                        "worktree", "remove", "--force", "--force", str(path), cwd=repo, check=False
                    )
                    if path.exists():
                        shutil.rmtree(path, ignore_errors=True)
            git("worktree", "prune", cwd=repo, check=False)
            for name in names:
                branch = f"{BRANCH_PREFIX}{name}"
                if not git("branch", "--list", branch, cwd=repo).strip():
                    continue
                target = f"{branch}-lost-{row.tries}"
                suffix = 1
                while git("branch", "--list", target, cwd=repo).strip():
                    suffix += 1
                    target = f"{branch}-lost-{row.tries}.{suffix}"
                git("branch", "-m", branch, target, cwd=repo)
                kept.append(target)
        except (GitError, UserError) as exc:
            why = exc.last_line if isinstance(exc, GitError) else exc.message
            return f" (its old branch could not be set aside: {why})"
        return f"; the lost attempt's branch is kept as {', '.join(kept)}" if kept else ""

    # --- pull requests --------------------------------------------------------------------

    def record_pr(self, task_id: str) -> tuple[int, bool]:
        """Record the task's result as a pull request if its run did not; (number, new)."""
        with self._pr_lock:
            row = self.require(task_id)
            if row.state not in FINISHED_STATES:
                raise Conflict(
                    f"task {task_id} is {row.state}; record its pull request once it finished."
                )
            if row.result is None:
                raise Conflict(f"task {task_id} has no result, so there is nothing to record.")
            result = AttemptResult.from_dict(row.result)
            number = result.pull_request or row.pr_number
            if number is not None:
                return number, False
            if not result.commit:
                raise Conflict(
                    f"task {task_id} ended {row.state} without a commit, so there is no pull "
                    "request to record."
                )
            path = run_dir_for(self.settings, task_id) / "events.jsonl"
            _repair_log(path)
            log = EventLog(task_id, path, forward=lambda event: self.store_event(task_id, event))
            try:
                number = LocalPublisher(self.settings).publish(task_of(row), result, log)
            except StoreUnavailable:
                raise  # the service's trouble (503), not the request's
            except UserError as exc:
                raise Conflict(exc.message) from None
            finally:
                log.close()
            if number is None:
                raise Conflict(f"task {task_id} could not be recorded as a pull request.")
            result.pull_request = number
            if result.run_dir:
                with contextlib.suppress(OSError):
                    write_result(Path(result.run_dir), result)
            self._update(task_id, result=result.to_dict(), pr_number=number)
            return number, True

    def working_on(self, numbers: Iterable[int] | None = None) -> dict[int, list[ServiceTask]]:
        """The tasks queued or running on a pull request's branch (its follow-ups), oldest
        first, by PR number: of `numbers`, or of every PR."""
        query = (
            select(ServiceTask)
            .where(ServiceTask.pr_number.is_not(None), ServiceTask.state.in_((QUEUED, RUNNING)))
            .order_by(ServiceTask.created_at, ServiceTask.id)
        )
        if numbers is not None:
            query = query.where(ServiceTask.pr_number.in_(list(numbers)))
        found: dict[int, list[ServiceTask]] = {}
        with self.store.session() as session:
            for row in session.scalars(query):
                found.setdefault(int(row.pr_number or 0), []).append(row)
        return found

    @contextlib.contextmanager
    def merging(self, number: int) -> Iterator[None]:
        """Hold off new follow-ups of pull request `number` while it merges; Conflict while
        one is queued or running already (the merge would leave out the commits it is about
        to add to the branch)."""
        with self._follow_up_lock:
            working = self.working_on([number]).get(number)
            if working:
                row = working[0]
                more = f" (and {len(working) - 1} more)" if len(working) > 1 else ""
                raise Conflict(
                    f"follow-up task {row.id}{more} of pull request #{number} is {row.state}; "
                    f"wait for it to finish, or cancel it (POST /api/tasks/{row.id}/cancel), "
                    "then merge."
                )
            yield

    # --- diffs ------------------------------------------------------------------------------

    def diff(self, task_id: str, attempt: int | None = None) -> dict[str, Any]:
        """The diff of the chosen attempt, or of attempt `attempt`."""
        row = self.require(task_id)
        if row.result is None:
            raise Conflict(f"task {task_id} is {row.state}; it has a diff once it has run.")
        result = row.result
        chosen = int(result.get("attempt") or 1)
        if attempt is None or (attempt == chosen and not result.get("attempts")):
            return _diff_view(result, chosen, chosen)
        entries = [a for a in result.get("attempts") or [] if isinstance(a, dict)]
        entry = next((a for a in entries if a.get("attempt") == attempt), None)
        if entry is None:
            ran = len(entries) or 1
            raise NotFound(
                f"task {task_id} has no attempt {attempt}; it ran "
                + (f"attempts 1 to {ran}." if ran > 1 else "one attempt (attempt=1).")
            )
        if attempt == chosen:
            return _diff_view(result, attempt, chosen)
        found = read_result(Path(str(entry.get("run_dir") or "")))
        if found is None:
            raise NotFound(f"the result of attempt {attempt} of task {task_id} is gone.")
        return _diff_view(found.to_dict(), attempt, chosen)


def _diff_view(result: dict[str, Any], attempt: int, chosen: int) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "chosen": attempt == chosen,
        "branch": result.get("branch") or "",
        "base_commit": result.get("base_commit") or "",
        "commit": result.get("commit"),
        "diff_stat": result.get("diff_stat") or "",
        "diff": result.get("diff") or "",
    }


def task_of(row: ServiceTask) -> Task:
    return Task(
        instruction=row.instruction,
        repo=row.repo,
        base=row.base,
        task_id=row.id,
        attempts=row.attempts,
        until_pass=bool(row.until_pass),
    )


def _event_row(task_id: str, event: Event) -> ServiceEvent:
    return ServiceEvent(
        task_id=task_id, id=event.id, type=event.type, ts=event.ts, data=event.data, v=event.v
    )


def _repair_log(path: Path) -> None:
    """Cut a torn last line (a process killed mid-write) so the next line starts clean."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _nth(n: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(n, f"{n}th")


def _normal_repo(repo: str) -> str:
    path = Path(repo).expanduser()
    if path.is_absolute() and path.exists():
        with contextlib.suppress(UserError):
            return str(resolve_repo(path, Path("/nonexistent")))
        return str(path.resolve())
    return repo


def check_repo(repo: str, settings: Settings) -> str:
    """The repository a task names: the top level of a local one, or a URL as it is."""
    text = (repo or "").strip()
    if not text:
        raise Invalid("repo is empty; send the absolute path of a git repository or its URL.")
    path = Path(text).expanduser()
    if is_url(text) and not path.exists():
        return text
    if not path.is_absolute():
        raise Invalid(
            f"repo {text!r} is a relative path; send the absolute path of a git repository "
            "(the service does not know your working directory)."
        )
    if not path.exists():
        raise Invalid(f"repo {text} does not exist; send the path of a git repository or its URL.")
    try:
        return str(resolve_repo(path, settings.data_dir / "clones"))
    except UserError as exc:
        if "another user owns it" in exc.message:
            raise Invalid(exc.message) from None
        raise Invalid(
            f"repo {text} is not a git repository; send the path of one (or run `git init` there)."
        ) from None


def check_base(repo: Path, base: str) -> None:
    if base.startswith("-"):
        raise Invalid(f"base {base!r} is not a branch, tag or commit name; send one that exists.")
    candidates = [base]
    if base != "HEAD" and not base.startswith("refs/"):
        candidates.append(f"refs/remotes/origin/{base}")
    for candidate in candidates:
        found = git(
            "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=repo, check=False
        )
        if found.strip():
            return
    if base == "HEAD":
        raise Invalid(
            f"repo {repo} has no commits yet; commit something first, since a task branches "
            "from a commit."
        )
    raise Invalid(
        f"base {base!r} is not a branch, tag or commit in {repo}; send one that exists, or leave "
        "base out to start from HEAD."
    )
