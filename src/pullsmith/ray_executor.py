"""The Ray executor: the work of tasks on a Ray cluster, one attempt per Ray task.

`RayExecutor` is one more `Executor` (see executors.py); nothing above it knows where the work
runs. For each task it

- ships the repository: a URL as it is (the worker clones it), a local repository as a
  `git bundle --all` put once into Ray's object store and shared by the task's attempts. No
  filesystem is shared with the workers: a worker works in a scratch directory of its own;
- runs each attempt as one Ray task (`num_cpus` / `memory` from the settings, so Ray's
  scheduler caps how many run on a node; `max_retries` for a worker that dies). Best-of-N
  attempts run at once across the cluster and are ranked here with best_of_n's ranking;
- streams the attempt's events back while it runs (the worker sends them in batches to a
  relay actor that this driver drains), writing `runs/<task-id>/events.jsonl` here before
  anyone sees them. A worker that dies loses nothing it had sent: its events stay in the log,
  a warning marks the lost try, and Ray's retry runs the attempt again from the start;
- brings the attempt's branch back as a bundle and fetches it into the user's repository (a
  kept worktree is made again here, with the attempt's uncommitted changes), so the pull
  request and the merge work as with the local executor; the run's other files (history.json,
  traceback.txt) come back with the result, and `result.json` is written here.

Cancelling calls `ray.cancel`: a running attempt gets a KeyboardInterrupt on its worker, which
stops the agent the way a local cancel does (the result says "cancelled"); one not started
never starts. With the bundled model, each node runs one model server, started by the first
attempt there (a detached actor named after the node) and shared by the node's attempts.

`ray` is optional (`pip install 'pullsmith[ray]'`); usage statistics are off unless the
environment turns them on (RAY_USAGE_STATS_ENABLED).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pullsmith.attempt import run_dir_for, write_result
from pullsmith.best_of_n import attempt_sampling, attempt_task, score_attempt, select_attempt
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import (
    AttemptsStarted,
    ErrorEvent,
    Event,
    EventLog,
    Payload,
    WarningEvent,
    read_events,
)
from pullsmith.models.replay import REPLAY_PREFIX, is_replay, load_recordings
from pullsmith.task import AttemptResult, Task
from pullsmith.work import execute
from pullsmith.workspace import GitError, git, is_url, resolve_repo, worktree_lock

INSTALL_COMMAND = "pip install 'pullsmith[ray]'"
NAMESPACE = "pullsmith"
# Files of a worker's run directory sent back with its result (the log streams separately).
RETURNED_FILES = ("history.json", "traceback.txt", "model-server.log")
RETURNED_FILE_LIMIT = 8 * 1024 * 1024
# How long the driver waits for a relay message, and a worker between batches of events.
TAKE_TIMEOUT_S = 0.5
# After Ray says an attempt's task ended, how long its last messages may take to arrive.
END_GRACE_S = 30.0
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    """The ray module, or a UserError saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise UserError(
            f"the Ray executor needs the ray package, which is not installed; install it with "
            f"`{INSTALL_COMMAND}` (or use --executor local)."
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """The host and port an explicit address names ("host:port", "ray://host:port")."""
    text = address.removeprefix("ray://").strip().rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(settings: Settings) -> bool:
    """Connect this process to the Ray cluster of `settings.ray_address` (unless it already is);
    whether this call connected it. An address nothing answers on is one UserError."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = (settings.ray_address or "auto").strip()
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "configure_logging": False,
    }
    if address == "local":
        options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        options["address"] = address
        target = _host_port(address)
        if target is not None:
            try:
                socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
            except OSError as exc:
                raise UserError(
                    f"can not reach the Ray cluster at {address} ({exc.strerror or exc}); start "
                    "it (`ray start --head`) or set ray_address to one that runs."
                ) from None
    try:
        ray.init(**options)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all say "not there"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"can not connect to the Ray cluster at {address} ({first.rstrip('.')}); start it "
            "(`ray start --head`) or set ray_address to one that runs."
        ) from None
    return True


# --- bundles ----------------------------------------------------------------------------


def repo_bundle(repo: Path) -> bytes:
    """Every ref of `repo` as one git bundle."""
    with tempfile.TemporaryDirectory(prefix="pullsmith-bundle-") as tmp:
        path = Path(tmp) / "repo.bundle"
        try:
            git("bundle", "create", "--quiet", str(path), "--all", cwd=repo)
        except GitError as exc:
            raise UserError(
                f"the repository {repo} could not be bundled for the Ray workers "
                f"({exc.last_line}); commit something first."
            ) from None
        return path.read_bytes()


def branch_bundle(repo: Path, branch: str, base: str) -> bytes | None:
    """`branch` of `repo` without what `base` already holds; None when it adds nothing."""
    ref = f"refs/heads/{branch}"
    tip = git("rev-parse", "--verify", "--quiet", ref, cwd=repo, check=False).strip()
    if not tip or tip == base:
        return None
    with tempfile.TemporaryDirectory(prefix="pullsmith-bundle-") as tmp:
        path = Path(tmp) / "branch.bundle"
        git("bundle", "create", "--quiet", str(path), ref, f"^{base}", cwd=repo)
        return path.read_bytes()


def _source_of(task: Task, repo: Path, ray: Any) -> dict[str, Any]:
    """How the task's repository reaches a worker: its URL, or a bundle in the object store."""
    if is_url(task.repo) and task.follow_up is None:
        return {"url": task.repo}
    data = repo_bundle(repo)
    head_ref = git("symbolic-ref", "--quiet", "HEAD", cwd=repo, check=False).strip()
    identity = {
        key: git("config", "--get", f"user.{key}", cwd=repo, check=False).strip()
        for key in ("name", "email")
    }
    return {
        "bundle": ray.put(data),
        "bytes": len(data),
        "head_ref": head_ref,
        "head": git("rev-parse", "HEAD", cwd=repo).strip(),
        "identity": identity,
    }


def _checkout(source: dict[str, Any], scratch: Path, ray: Any) -> str:
    """The repository on this worker: the URL itself, or a clone of the shipped bundle with
    every ref the user's repository has, checked out where its HEAD is."""
    if "url" in source:
        return str(source["url"])
    bundle = scratch / "source.bundle"
    bundle.write_bytes(ray.get(source["bundle"]))
    repo = scratch / "repo"
    repo.mkdir()
    git("init", "--quiet", cwd=repo)
    git("fetch", "--quiet", "--update-head-ok", str(bundle), "+refs/*:refs/*", cwd=repo)
    if source.get("head_ref"):
        git("symbolic-ref", "HEAD", source["head_ref"], cwd=repo)
    else:
        git("update-ref", "--no-deref", "HEAD", source["head"], cwd=repo)
    git("reset", "--quiet", "--hard", "HEAD", cwd=repo)
    for key, value in (source.get("identity") or {}).items():
        if value:
            git("config", f"user.{key}", value, cwd=repo)
    bundle.unlink()
    return str(repo)


# --- the worker side --------------------------------------------------------------------


class _Sender:
    """Sends a worker's events to the relay in batches, off the agent's thread; each batch is
    acknowledged before the next, so a worker that dies loses only what it had not sent."""

    def __init__(self, relay: Any, key: str, try_no: int, ray: Any) -> None:
        self.relay, self.key, self.try_no, self.ray = relay, key, try_no, ray
        self._lock = threading.Condition()
        self._pending: list[dict[str, Any]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pullsmith-events", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._pending.append(event.to_dict())
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                batch, self._pending = self._pending, []
                closed = self._closed
            if batch:
                self.ray.get(self.relay.events.remote(self.key, self.try_no, batch))
            if closed and not batch:
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()


def _worker_settings(
    settings: Settings, scratch: Path, recording: dict[str, Any] | None, ray: Any
) -> Settings:
    """The settings on the worker: its own data directory, the shipped recording to replay,
    its node's bundled-model server."""
    settings = dataclasses.replace(settings, data_dir=scratch / "data", executor="local")
    if recording is not None:
        path = scratch / "replay" / "history.json"
        path.parent.mkdir(parents=True)
        path.write_text(recording["history"], encoding="utf-8")
        settings = dataclasses.replace(settings, model=f"{REPLAY_PREFIX}{path}")
        if settings.protocol == "auto" and recording.get("protocol"):
            settings = dataclasses.replace(settings, protocol=recording["protocol"])
    elif settings.uses_local_model and not settings.local_server_url:
        settings = dataclasses.replace(settings, local_server_url=node_model_url(settings, ray))
    return settings


def _attempt_work(
    task: Task,
    settings: Settings,
    source: dict[str, Any],
    recording: dict[str, Any] | None,
    scratch: Path,
    send: Callable[[Event], None],
    cancel: threading.Event,
    ray: Any,
) -> dict[str, Any]:
    """One attempt in a worker's scratch directory; what goes back to the driver."""
    settings = _worker_settings(settings, scratch, recording, ray)
    task = dataclasses.replace(task, repo=_checkout(source, scratch, ray))
    if task.follow_up is not None:
        # The branch came in the bundle; its checkout is made here again.
        worktree = settings.worktrees_dir / task.task_id
        worktree.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--quiet", str(worktree), task.follow_up.branch, cwd=Path(task.repo))
        follow_up = dataclasses.replace(task.follow_up, worktree=str(worktree))
        task = dataclasses.replace(task, follow_up=follow_up)
    run_dir = run_dir_for(settings, task.task_id)
    log = EventLog(task.task_id, run_dir / "events.jsonl", forward=send)
    try:
        result = execute(task, settings, log, None, cancel)
    finally:
        log.close()
    payload: dict[str, Any] = {"result": result.to_dict(), "bundle": None, "tip": None}
    if result.branch and result.repo and Path(result.repo).is_dir():
        repo = Path(result.repo)
        ref = f"refs/heads/{result.branch}"
        tip = git("rev-parse", "--verify", "--quiet", ref, cwd=repo, check=False).strip()
        payload["tip"] = tip or None
        if tip and result.base_commit:
            payload["bundle"] = branch_bundle(repo, result.branch, result.base_commit)
    files = {}
    for name in RETURNED_FILES:
        path = run_dir / name
        if path.is_file() and path.stat().st_size <= RETURNED_FILE_LIMIT:
            files[name] = path.read_bytes()
    payload["files"] = files
    return payload


def _attempt_main(
    key: str,
    task_data: dict[str, Any],
    settings: Settings,
    source: dict[str, Any],
    recording: dict[str, Any] | None,
    relay: Any,
) -> None:
    """A Ray task: one attempt. Its outcome goes to the relay (a cancelled task's return value
    never reaches the driver); the work runs on a thread so that ray.cancel's
    KeyboardInterrupt, which lands on this one, becomes the attempt's cancel."""
    import ray

    try_no = ray.get(relay.begin.remote(key, os.getpid()))
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"pullsmith-ray-{key}-*"):  # an earlier try's, its worker dead
        shutil.rmtree(old, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"pullsmith-ray-{key}-{try_no}-", dir=root))
    send = _Sender(relay, key, try_no, ray)
    cancel = threading.Event()
    box: dict[str, Any] = {}
    finished = threading.Event()

    def work() -> None:
        try:
            task = Task.from_dict(task_data)
            box["payload"] = _attempt_work(
                task, settings, source, recording, scratch, send, cancel, ray
            )
        except BaseException as exc:  # reported to the driver, never lost
            box["payload"] = {"failed": f"{type(exc).__name__}: {exc}", "trace": _trace()}
        finally:
            finished.set()

    thread = threading.Thread(target=work, name="pullsmith-attempt", daemon=True)
    thread.start()
    context = ray.get_runtime_context()
    interrupted = False
    # Waiting on an Event, not in Thread.join: a KeyboardInterrupt inside join can leave the
    # thread looking finished while it runs on.
    while not finished.is_set():
        try:
            finished.wait(0.2)
            if not cancel.is_set() and context.is_canceled():
                interrupted = True
                cancel.set()
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()
    while True:
        try:
            send.close()
            ray.get(relay.done.remote(key, try_no, box.get("payload") or {"failed": "no result"}))
            break
        except KeyboardInterrupt:  # a cancel that came late: the result is on its way
            interrupted = True
    shutil.rmtree(scratch, ignore_errors=True)
    if interrupted:
        raise KeyboardInterrupt  # Ray records the task as cancelled


def _trace() -> str:
    return traceback.format_exc()


class _Relay:
    """The actor between the workers and the driver: workers put messages (begin, events,
    done), the driver adds "end" once Ray says the task is over, and takes them in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.tries: dict[str, int] = {}
        self.ready = asyncio.Event()

    def _add(self, message: tuple[Any, ...]) -> None:
        self.messages.append(message)
        self.ready.set()

    async def begin(self, key: str, pid: int) -> int:
        self.tries[key] = self.tries.get(key, 0) + 1
        self._add(("begin", key, self.tries[key], pid))
        return self.tries[key]

    async def events(self, key: str, try_no: int, batch: list[dict[str, Any]]) -> None:
        self._add(("events", key, try_no, batch))

    async def done(self, key: str, try_no: int, payload: dict[str, Any]) -> None:
        self._add(("done", key, try_no, payload))

    async def end(self, key: str, outcome: str) -> None:
        self.tries.pop(key, None)
        self._add(("end", key, outcome))

    async def take(self, timeout: float) -> list[tuple[Any, ...]]:
        if not self.messages:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
        taken, self.messages = self.messages, []
        self.ready.clear()
        return taken


# --- the bundled model, one server per node ---------------------------------------------


class NodeModelServer:
    """The bundled model's llama.cpp server of one node, started by its first attempt and
    shared by all of them (a detached actor named after the node)."""

    def __init__(self) -> None:
        self.server: Any = None

    def url(self, settings: Settings, slots: int) -> str:
        if self.server is None:
            from pullsmith.models.local import serve_shared

            log = Path(tempfile.gettempdir()) / "pullsmith-ray-model-server.log"
            self.server = serve_shared(settings, slots=slots, log_path=log, progress=False)
        return str(self.server.base_url)

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def node_model_url(settings: Settings, ray: Any) -> str:
    """The base URL of this node's bundled-model server (started by the first caller)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cpus = next(
        (n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n.get("NodeID") == node), 1.0
    )
    slots = max(1, int(cpus // max(settings.ray_num_cpus, 0.01)))
    actor = (
        ray.remote(NodeModelServer)
        .options(
            name=f"model-server-{node}",
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote()
    )
    return str(ray.get(actor.url.remote(settings, slots)))


# --- the driver side --------------------------------------------------------------------


class _RunLog:
    """The driver's copy of one attempt's log: the worker's events renumbered to follow the
    file (a retry starts again at 1), written and flushed, then passed on."""

    def __init__(self, task_id: str, path: Path, forward: Callable[[Event], None]) -> None:
        self.task_id = task_id
        self.path = path
        self.forward = forward
        path.parent.mkdir(parents=True, exist_ok=True)
        self._next = len(read_events(path)) + 1 if path.exists() else 1
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self.ids: dict[tuple[int, int], int] = {}  # (try, the worker's id) -> the id here

    @property
    def last_id(self) -> int:
        return self._next - 1

    def add(self, try_no: int, data: dict[str, Any]) -> None:
        with self._lock:
            event = Event(
                id=self._next,
                type=str(data["type"]),
                task_id=self.task_id,
                ts=float(data["ts"]),
                data=dict(data.get("data") or {}),
                v=int(data.get("v") or 1),
            )
            self.ids[(try_no, int(data["id"]))] = event.id
            self._write(event)

    def note(self, payload: Payload) -> None:
        """An event of the driver's own (a lost try, an error before any attempt)."""
        body = payload.model_dump(mode="json", exclude_none=False)
        if body.get("attempt") is None:
            body.pop("attempt", None)
        with self._lock:
            self._write(Event(self._next, payload.type, self.task_id, time.time(), body))

    def _write(self, event: Event) -> None:
        self._next += 1
        self._file.write(event.to_json() + "\n")
        self._file.flush()
        with contextlib.suppress(Exception):  # the file has it; a broken listener is theirs
            self.forward(event)

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclasses.dataclass
class _Run:
    """One attempt on the cluster, as the driver follows it."""

    key: str
    task: Task
    log: _RunLog
    ref: Any = None
    tries: int = 0
    pids: list[int] = dataclasses.field(default_factory=list)
    payload: dict[str, Any] | None = None
    payload_try: int = 0
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)


class RayJob:
    """A task's work on the cluster: `cancel()` (ray.cancel of its attempts), `result()`."""

    def __init__(self, task: Task, settings: Settings, on_event: Callable[[Event], None]) -> None:
        self.task = task
        self.settings = settings
        self.on_event = on_event
        self.future: Future[AttemptResult] = Future()
        self.cancelled = threading.Event()
        self.runs: list[_Run] = []
        self._lock = threading.Lock()
        self._ray: Any = None

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            refs = [run.ref for run in self.runs if run.ref is not None]
        for ref in refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)

    def result(self, timeout: float | None = None) -> AttemptResult:
        return self.future.result(timeout)

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes that ran (or run) this task's attempts, every try."""
        with self._lock:
            return [pid for run in self.runs for pid in run.pids]


class RayExecutor:
    """Runs tasks on the Ray cluster of `settings.ray_address`; `workers` only describes how
    many tasks the front end hands over at once (Ray's resources decide where they run)."""

    def __init__(self, settings: Settings, workers: int = 1) -> None:
        if workers < 1:
            raise UserError(f"--workers must be at least 1 (got {workers}).")
        self.workers = workers
        self.ray = import_ray()
        self._owns_connection = connect(settings)
        ray = self.ray
        self._remote = ray.remote(_attempt_main)
        # The relay lives on this node: the events it holds are on their way here anyway.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._relay = (
            ray.remote(_Relay)
            .options(num_cpus=0, max_concurrency=64, scheduling_strategy=here)
            .remote()
        )
        self._runs: dict[str, _Run] = {}
        self._jobs: list[RayJob] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="ray-relay", daemon=True
        )
        self._dispatcher.start()

    def describe(self) -> str:
        """One line: the cluster and what an attempt asks of it."""
        resources = self.ray.cluster_resources()
        nodes = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        cpus = resources.get("CPU", 0)
        return (
            f"Ray, {nodes} node{'s' if nodes != 1 else ''} with {cpus:g} CPUs in all; "
            f"up to {self.workers} task{'s' if self.workers != 1 else ''} handed over at once"
        )

    def submit(self, task: Task, settings: Settings, on_event: Callable[[Event], None]) -> RayJob:
        if self._closed.is_set():
            raise UserError("the executor was shut down; start a new one.")
        job = RayJob(task, settings, on_event)
        job._ray = self.ray
        with self._lock:
            self._jobs.append(job)
        threading.Thread(
            target=self._run_job, args=(job,), name=f"ray-{task.task_id}", daemon=True
        ).start()
        return job

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            if cancel:
                job.cancel()
        for job in jobs:
            with contextlib.suppress(Exception):
                job.future.result()
        self._closed.set()
        self._dispatcher.join(timeout=5)
        with contextlib.suppress(Exception):
            self.ray.kill(self._relay)
        if self._owns_connection:
            with contextlib.suppress(Exception):
                self.ray.shutdown()

    # --- one task -----------------------------------------------------------------------

    def _run_job(self, job: RayJob) -> None:
        task, settings = job.task, job.settings
        run_dir = run_dir_for(settings, task.task_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = self._work(job, run_dir)
        except UserError as exc:
            result = AttemptResult.failed_to_start(task, exc.message, str(run_dir))
            result.error_kind = "run"
            self._note(job, run_dir, ErrorEvent(message=exc.message))
        except Exception as exc:  # a bug of ours: the run's record says so
            (run_dir / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
            message = (
                f"pullsmith failed driving the run on Ray ({type(exc).__name__}: {exc}); the "
                f"traceback is in {run_dir / 'traceback.txt'} — please report it."
            )
            result = AttemptResult.failed_to_start(task, message, str(run_dir))
            result.error_kind = "internal"
            self._note(job, run_dir, ErrorEvent(message=message))
        with contextlib.suppress(OSError):
            write_result(run_dir, result)
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
        job.future.set_result(result)

    def _note(self, job: RayJob, run_dir: Path, payload: Payload) -> None:
        log = _RunLog(job.task.task_id, run_dir / "events.jsonl", job.on_event)
        try:
            log.note(payload)
        finally:
            log.close()

    def _work(self, job: RayJob, run_dir: Path) -> AttemptResult:
        task, settings = job.task, job.settings
        if job.cancelled.is_set():
            return AttemptResult.failed_to_start(
                task, "cancelled before it started", str(run_dir), "cancelled"
            )
        repo = resolve_repo(task.repo, settings.data_dir / "clones")
        source = _source_of(task, repo, self.ray)
        if task.attempts == 1:
            return self._attempt(job, task, settings, source, repo, 1, job.on_event)
        parent = EventLog(task.task_id, run_dir / "events.jsonl", forward=job.on_event)
        try:
            return self._best_of_n(job, parent, source, repo)
        finally:
            parent.close()

    def _best_of_n(
        self, job: RayJob, parent: EventLog, source: dict[str, Any], repo: Path
    ) -> AttemptResult:
        """The task's attempts at once on the cluster, ranked here as BestOfN ranks them."""
        task, settings = job.task, job.settings
        parent.emit(AttemptsStarted(attempts=task.attempts, until_pass=task.until_pass))
        finished: list[tuple[Any, AttemptResult]] = []
        lock = threading.Lock()
        passed = threading.Event()

        def one(number: int) -> None:
            temperature, seed = attempt_sampling(settings, number)
            sub_settings = dataclasses.replace(
                settings,
                temperature=settings.temperature if temperature is None else temperature,
                seed=seed,
            )

            def relay(event: Event, number: int = number) -> None:
                parent.emit(event.type, **{**event.data, "attempt": number})

            sub = attempt_task(task, number)
            try:
                result = self._attempt(job, sub, sub_settings, source, repo, number, relay)
            except UserError as exc:
                run_dir = str(run_dir_for(settings, sub.task_id))
                result = AttemptResult.failed_to_start(sub, exc.message, run_dir)
                result.error_kind = "run"
                parent.emit(ErrorEvent(message=exc.message, attempt=number))
            result.attempt = number
            with lock:
                if passed.is_set() and result.status == "cancelled" and not job.cancelled.is_set():
                    return  # stopped by --until-pass: it did not run to its end
                earlier = [r for _, r in finished]
                finished.append((score_attempt(result, parent, earlier), result))
                if task.until_pass and result.tests_pass and not passed.is_set():
                    passed.set()
                    stop = [r for r in job.runs if not r.ended.is_set()]
                else:
                    stop = []
            for run in stop:
                with contextlib.suppress(Exception):
                    self.ray.cancel(run.ref)

        threads = [
            threading.Thread(target=one, args=(n,), name=f"ray-{task.task_id}-{n}", daemon=True)
            for n in range(1, task.attempts + 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results = sorted(finished, key=lambda pair: pair[1].attempt)
        chosen = select_attempt(task, results, parent, cancelled=job.cancelled.is_set())
        chosen_dir = run_dir_for(settings, task.task_id)
        write_result(chosen_dir, chosen)
        return chosen

    def _attempt(
        self,
        job: RayJob,
        task: Task,
        settings: Settings,
        source: dict[str, Any],
        repo: Path,
        number: int,
        forward: Callable[[Event], None],
    ) -> AttemptResult:
        """One attempt as one Ray task, followed to its end; its result, landed here."""
        run_dir = run_dir_for(settings, task.task_id)
        run = _Run(
            uuid.uuid4().hex[:16], task, _RunLog(task.task_id, run_dir / "events.jsonl", forward)
        )
        options: dict[str, Any] = {
            "num_cpus": settings.ray_num_cpus,
            "max_retries": max(0, settings.ray_max_retries),
            "retry_exceptions": False,
            "name": f"pullsmith-{task.task_id}",
        }
        if settings.ray_memory_mb > 0:
            options["memory"] = settings.ray_memory_mb * 1024 * 1024
        with self._lock:
            self._runs[run.key] = run
        try:
            with job._lock:
                job.runs.append(run)
                run.ref = self._remote.options(**options).remote(
                    run.key,
                    task.to_dict(),
                    settings,
                    source,
                    _recording(settings, number),
                    self._relay,
                )
            if job.cancelled.is_set():
                self.ray.cancel(run.ref)
            outcome = self._wait(run)
            return self._land(run, outcome, settings, repo)
        finally:
            run.log.close()
            with self._lock:
                self._runs.pop(run.key, None)

    def _wait(self, run: _Run) -> str:
        """Wait for Ray to end the attempt's task, then for its last messages; the outcome."""
        exceptions = self.ray.exceptions
        try:
            self.ray.get(run.ref)
            outcome = "finished"
        except exceptions.TaskCancelledError:
            outcome = "cancelled"
        except exceptions.RayTaskError as exc:
            outcome = f"failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
        except exceptions.RayError as exc:
            outcome = f"lost: {type(exc).__name__}"
        with contextlib.suppress(Exception):
            self._relay.end.remote(run.key, outcome)
        run.ended.wait(END_GRACE_S)
        return outcome

    def _land(self, run: _Run, outcome: str, settings: Settings, repo: Path) -> AttemptResult:
        """The attempt's result on this machine: its branch fetched into `repo`, a kept
        worktree made again, its files and paths those of this machine."""
        task = run.task
        run_dir = run_dir_for(settings, task.task_id)
        payload = run.payload or {}
        if "result" in payload:
            result = AttemptResult.from_dict(payload["result"])
            for test_run in (result.tests_before, result.tests_after):
                if test_run is not None:
                    test_run.event_id = run.log.ids.get(
                        (run.payload_try, test_run.event_id), test_run.event_id
                    )
            for name, data in (payload.get("files") or {}).items():
                if name in RETURNED_FILES:
                    (run_dir / name).write_bytes(data)
            result.repo, result.run_dir = str(repo), str(run_dir)
            result.model = settings.model_name
            _land_branch(repo, payload, result, settings, task)
        elif "failed" in payload:
            message = (
                f"pullsmith failed inside the Ray worker ({payload['failed']}); the traceback is "
                f"in {run_dir / 'traceback.txt'} — please report it."
            )
            (run_dir / "traceback.txt").write_text(str(payload.get("trace") or ""), "utf-8")
            result = AttemptResult.failed_to_start(task, message, str(run_dir))
            result.error_kind = "internal"
            run.log.note(ErrorEvent(message=message))
        elif outcome == "cancelled":
            why = "cancelled before it started" if not run.tries else "cancelled"
            result = AttemptResult.failed_to_start(task, why, str(run_dir), "cancelled")
        else:
            tries = max(run.tries, 1)
            why = (
                f"the Ray worker running it was lost ({outcome.partition(': ')[2] or outcome}) "
                f"after {tries} tr{'ies' if tries != 1 else 'y'}; run it again."
            )
            result = AttemptResult.failed_to_start(task, why, str(run_dir))
            result.error_kind = "worker"
            run.log.note(ErrorEvent(message=why))
        write_result(run_dir, result)
        return result

    # --- the relay ----------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._closed.is_set():
            try:
                messages = self.ray.get(self._relay.take.remote(TAKE_TIMEOUT_S))
            except Exception:
                if self._closed.is_set():
                    return
                time.sleep(TAKE_TIMEOUT_S)
                continue
            for message in messages:
                with contextlib.suppress(Exception):
                    self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        with self._lock:
            run = self._runs.get(key)
        if run is None:
            return
        if kind == "begin":
            _, _, try_no, pid = message
            run.tries = try_no
            run.pids.append(pid)
            if try_no > 1:
                run.log.note(
                    WarningEvent(
                        message=f"the Ray worker running this attempt died after event "
                        f"{run.log.last_id} (try {try_no - 1}); Ray runs it again from the start "
                        f"(try {try_no}); the events above are the lost try's."
                    )
                )
        elif kind == "events":
            _, _, try_no, batch = message
            for data in batch:
                run.log.add(try_no, data)
        elif kind == "done":
            _, _, try_no, payload = message
            run.payload, run.payload_try = payload, try_no
        elif kind == "end":
            run.ended.set()


def _recording(settings: Settings, number: int) -> dict[str, Any] | None:
    """The recorded conversation attempt `number` replays, shipped as text (a worker does not
    see this machine's files); None when the model is not a replay."""
    if not is_replay(settings.model):
        return None
    spec = str(settings.model)[len(REPLAY_PREFIX) :]
    recordings = load_recordings(spec, settings.runs_dir)
    if number > len(recordings):
        raise UserError(
            f"the replay of {spec} has no recording for attempt {number} (it holds "
            f"{len(recordings)}); the run made more attempts than the recording did."
        )
    recording = recordings[number - 1]
    return {"history": recording.path.read_text(encoding="utf-8"), "protocol": recording.protocol}


def _worktree_of(repo: Path, branch: str) -> Path | None:
    """The worktree of `repo` that has `branch` checked out, if one does."""
    listing = git("worktree", "list", "--porcelain", cwd=repo)
    path: Path | None = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = Path(line[len("worktree ") :])
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return path
    return None


def _land_branch(
    repo: Path, payload: dict[str, Any], result: AttemptResult, settings: Settings, task: Task
) -> None:
    """Put the attempt's branch (and a kept worktree) into the user's repository `repo`."""
    tip = payload.get("tip")
    branch = result.branch
    if not branch or not tip:
        result.worktree = ""
        return
    ref = f"refs/heads/{branch}"
    if payload.get("bundle"):
        with tempfile.TemporaryDirectory(prefix="pullsmith-bundle-") as tmp:
            bundle = Path(tmp) / "branch.bundle"
            bundle.write_bytes(payload["bundle"])
            scratch_ref = f"refs/pullsmith-ray/{uuid.uuid4().hex[:12]}"
            try:
                git("fetch", "--quiet", str(bundle), f"+{ref}:{scratch_ref}", cwd=repo)
            except GitError:
                if not is_url(task.repo):
                    raise
                resolve_repo(task.repo, settings.data_dir / "clones")  # fetch what it builds on
                git("fetch", "--quiet", str(bundle), f"+{ref}:{scratch_ref}", cwd=repo)
            git("update-ref", "-d", scratch_ref, cwd=repo)
    checked_out = _worktree_of(repo, branch)
    if checked_out is not None:
        git("reset", "--quiet", "--hard", tip, cwd=checked_out)
    else:
        git("update-ref", ref, tip, cwd=repo)
    if not result.worktree:
        if checked_out is not None:
            with worktree_lock(repo):
                git("worktree", "remove", "--force", str(checked_out), cwd=repo, check=False)
        return
    path = checked_out
    if path is None:
        path = settings.worktrees_dir.expanduser().resolve() / task.task_id
        path.parent.mkdir(parents=True, exist_ok=True)
        with worktree_lock(repo):
            git("worktree", "add", "--quiet", str(path), branch, cwd=repo)
    if result.commit is None and result.diff.strip():
        # The attempt's uncommitted work (a cancelled one keeps it for the user).
        git("apply", "--binary", "--whitespace=nowarn", "-", cwd=path, input=result.diff)
    result.worktree = str(path)
