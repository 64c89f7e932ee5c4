"""Running a suite: for each task a fresh repository, the engine as `exec` runs it, then the score.

Every finished task is one line of `<out>/records.jsonl`, written as soon as it is known, and
the reports are rewritten after each; `resume` skips the tasks already recorded there (tasks
that ended in an error that is not the agent's — the model or the sandbox failing, a broken
task — are run again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pullsmith import __version__
from pullsmith.attempt import run_dir_for
from pullsmith.config import Settings
from pullsmith.engine import Engine
from pullsmith.errors import UserError
from pullsmith.eval.report import build_report, write_reports
from pullsmith.eval.scoring import SETUP_TIMEOUT_S, Score, score_tree, scoring_sandbox
from pullsmith.eval.snapshot import export_commit, init_repo, materialize, remove_tree
from pullsmith.eval.tasks import EvalTask, Suite
from pullsmith.events import Event, read_events
from pullsmith.executors import Executor, ThreadExecutor, make_executor
from pullsmith.models import Model
from pullsmith.models.profiles import resolve_edit_forms, resolve_protocol
from pullsmith.task import AttemptResult, Task

RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"
# Errors that are not the agent's doing; such tasks run again on resume, and this many in a
# row stop the run (the model server is gone, the sandbox can not start, ...).
RETRIED_ERRORS = ("model", "run", "setup", "task", "internal", "worker")
MAX_ERRORS_IN_A_ROW = 3


@dataclass
class TaskRecord:
    """What happened to one task of a suite run."""

    task_id: str
    resolved: bool
    attempts: int = 1
    # Best-of-N: the attempt chosen by the visible tests, and every attempt's own outcome
    # (each scored with the hidden tests too, so single-attempt and oracle rates can be read).
    attempt: int = 1
    attempt_results: list[dict[str, Any]] = field(default_factory=list)
    format_errors: int = 0
    edits: dict[str, list[int]] = field(default_factory=dict)
    # Each compaction of a conversation (every attempt): its turn, the turns it dropped, the
    # seconds of its summary request and of the model's replies just before and just after it
    # (the prompt cache is lost once, from the summary on); and the attempts that still
    # stopped with "context window full".
    compactions: list[dict[str, Any]] = field(default_factory=list)
    context_full: int = 0
    turns: int = 0
    wall_seconds: float = 0.0
    model_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # What the task cost in US dollars (every attempt); None when the model's price is unknown.
    cost_usd: float | None = None
    status: str = ""
    exit_reason: str = ""
    error: str | None = None
    error_kind: str | None = None
    summary: str = ""
    diff: str = ""
    diff_stat: str = ""
    run_id: str = ""
    run_log: str = ""
    branch: str = ""
    commit: str | None = None
    base_commit: str = ""
    score: dict[str, Any] = field(default_factory=dict)
    score_seconds: float = 0.0
    total_seconds: float = 0.0
    model: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def retried_on_resume(self) -> bool:
        return self.error_kind in RETRIED_ERRORS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def load_records(path: Path) -> dict[str, TaskRecord]:
    """The records in `path`, the last one of each task winning; a torn last line is skipped."""
    records: dict[str, TaskRecord] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = TaskRecord.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        records[record.task_id] = record
    return records


class Listener:
    """What a progress display hears; every method may be called from a worker thread."""

    def task_started(self, task_id: str) -> None:
        pass

    def task_step(self, task_id: str, step: str) -> None:
        """Where a task in flight is: its attempt's turn, or its last direct-repair try."""

    def task_finished(self, record: TaskRecord) -> None:
        pass


class Steps:
    """An event listener telling `listener` where task `task_id` is: each turn of the agent,
    and each direct-repair try before it (which can take minutes on a small model)."""

    def __init__(self, listener: Listener, task_id: str) -> None:
        self.listener, self.task_id, self.repairs = listener, task_id, 0

    def __call__(self, event: Event) -> None:
        data = event.data
        attempt = f"attempt {data['attempt']}, " if int(data.get("attempt") or 1) > 1 else ""
        if event.type == "model.reply":
            self.listener.task_step(self.task_id, f"{attempt}turn {data.get('turn', 0)}")
        elif event.type == "repair.tried":
            self.repairs += 1
            function = str(data.get("function", "")).rpartition(".")[2]
            step = f"{attempt}repair {self.repairs}: {function} {data.get('outcome', '')}"
            self.listener.task_step(self.task_id, step)


@dataclass
class EvalOptions:
    out: Path
    workers: int = 1
    attempts: int = 1
    until_pass: bool = False
    resume: bool = False
    keep: bool = False
    test_timeout_s: float | None = None
    description: dict[str, Any] = field(default_factory=dict)
    # Kept out of the agent's sight: the suite's files (run_suite fills it in).
    hide: tuple[str, ...] = ()


@dataclass
class EvalRun:
    out: Path
    records: list[TaskRecord]
    report: dict[str, Any]
    skipped: int = 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _run_meta(suite: Suite, tasks: list[EvalTask], settings: Settings, opts: EvalOptions) -> dict:
    return {
        "suite": suite.name,
        "suite_path": str(suite.path),
        "selection": [task.id for task in tasks],
        "model": settings.model_name,
        "base_url": settings.base_url,
        "sandbox": settings.sandbox,
        "protocol": resolve_protocol(settings.protocol, settings.model_name),
        "edit_forms": list(resolve_edit_forms(settings.edit_forms, settings.model_name)),
        "max_turns": settings.max_turns,
        "temperature": settings.temperature,
        "seed": settings.seed,
        "attempts": opts.attempts,
        "until_pass": opts.until_pass,
        "workers": opts.workers,
        "pullsmith_version": __version__,
        "started_at": _now(),
        **opts.description,
    }


def _check_resume(out: Path, meta: dict, existing: dict[str, TaskRecord], resume: bool) -> dict:
    previous_path = out / RUN_FILE
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    if not resume:
        if existing or previous:
            raise UserError(
                f"{out} already holds an evaluation run; pass --resume to continue it, or --out "
                "with a new directory."
            )
        return meta
    if previous is None:
        return meta
    for key in ("suite", "model"):
        if previous.get(key) != meta.get(key):
            raise UserError(
                f"{out} holds a run with {key} '{previous.get(key)}', not '{meta.get(key)}'; "
                f"resume it with the same {key}, or pass --out with a new directory."
            )
    merged = dict(meta)
    for key in ("started_at", "command", "subset", "limit"):
        if previous.get(key) is not None:
            merged[key] = previous[key]
    if meta.get("command") and meta.get("command") != previous.get("command"):
        merged["resumed_with"] = meta["command"]
    seen = set(meta["selection"])
    merged["selection"] = meta["selection"] + [
        i for i in previous.get("selection", []) if i not in seen
    ]
    merged["resumed_at"] = _now()
    return merged


def run_suite(
    suite: Suite,
    tasks: list[EvalTask],
    settings: Settings,
    opts: EvalOptions,
    model: Model | None = None,
    listener: Listener | None = None,
    executor: Executor | None = None,
) -> EvalRun:
    """Run `tasks` of `suite` and score them, `opts.workers` at a time.

    The tasks run on `executor`, by default the one the settings name (a pool of worker
    processes sharing one bundled model server, or the Ray cluster); a `model` object given
    instead is shared by threads of this process.
    """
    listener = listener or Listener()
    if opts.attempts < 1:
        raise UserError("--attempts must be at least 1.")
    if opts.workers < 1:
        raise UserError("--workers must be at least 1.")
    out = opts.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / RECORDS_FILE
    existing = load_records(records_path)
    if not opts.hide and suite.path is not None:
        opts = dataclasses.replace(opts, hide=(str(suite.path),))
    meta = _check_resume(out, _run_meta(suite, tasks, settings, opts), existing, opts.resume)
    (out / RUN_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    done = {i for i, r in existing.items() if not r.retried_on_resume}
    todo = [task for task in tasks if task.id not in done]
    skipped = len(tasks) - len(todo)
    records = dict(existing)

    def report() -> dict[str, Any]:
        data = build_report(meta, list(records.values()))
        write_reports(out, data)
        return data

    if not todo:
        return EvalRun(out, list(records.values()), report(), skipped)
    if executor is None and model is not None:
        executor = ThreadExecutor(opts.workers, model=model)
    elif executor is None:
        executor = make_executor(settings, opts.workers, log_path=out / "model-server.log")
    engine = Engine(settings, executor)
    try:
        with records_path.open("a+", encoding="utf-8") as sink:
            if sink.tell() > 0:
                sink.seek(sink.tell() - 1)
                if sink.read(1) != "\n":
                    # A run killed mid-write left a torn line; the next record starts afresh.
                    sink.write("\n")

            def record_done(record: TaskRecord) -> None:
                records[record.task_id] = record
                sink.write(json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                report()
                listener.task_finished(record)

            _run_pool(todo, settings, opts, out, engine, listener, record_done)
    finally:
        engine.executor.shutdown(cancel=True)
    return EvalRun(out, list(records.values()), report(), skipped)


def _run_pool(
    todo: list[EvalTask],
    settings: Settings,
    opts: EvalOptions,
    out: Path,
    engine: Engine,
    listener: Listener,
    record_done: Callable[[TaskRecord], None],
) -> None:
    """Run `todo`, `opts.workers` at a time (one thread each waits for its task's run and
    scores it); records are handled on this thread."""
    pending: queue.Queue[EvalTask] = queue.Queue()
    for task in todo:
        pending.put(task)
    finished: queue.Queue[TaskRecord | None] = queue.Queue()
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []  # the current streak of errors that are not the agent's
    stopped_by: list[str] = []

    def count(record: TaskRecord) -> None:
        # Counted on the worker, before it takes another task, so a streak stops it at once.
        with lock:
            if record.retried_on_resume:
                errors.append((record.error or "").strip().splitlines()[0] if record.error else "")
            else:
                errors.clear()
            if len(errors) >= MAX_ERRORS_IN_A_ROW and not stop.is_set():
                stopped_by.append(errors[-1])
                stop.set()

    def worker() -> None:
        try:
            while not stop.is_set():
                try:
                    task = pending.get_nowait()
                except queue.Empty:
                    return
                listener.task_started(task.id)
                try:
                    record = run_one(task, settings, opts, out, engine, listener)
                except Exception as exc:  # one broken task must not end the whole run
                    record = TaskRecord(
                        task_id=task.id,
                        resolved=False,
                        error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                        error_kind="internal",
                        metadata=task.metadata,
                        finished_at=_now(),
                    )
                count(record)
                finished.put(record)
        finally:
            finished.put(None)

    # Daemon threads: an interrupt ends the run without waiting for tasks in flight (their
    # sandboxes die with this process; resume runs them again).
    workers = [
        threading.Thread(target=worker, name=f"eval-{n}", daemon=True)
        for n in range(min(opts.workers, len(todo)))
    ]
    for thread in workers:
        thread.start()
    alive = len(workers)
    while alive:
        try:
            record = finished.get(timeout=0.5)
        except queue.Empty:
            continue
        if record is None:
            alive -= 1
            continue
        record_done(record)
    if stop.is_set():
        raise UserError(
            f"{MAX_ERRORS_IN_A_ROW} tasks in a row failed outside the agent's control (last: "
            f"{stopped_by[0]}); fix that and rerun with --resume --out {out}."
        )


def _setup_snapshot(task: EvalTask, repo: Path, settings: Settings) -> str | None:
    """Run the task's setup in its snapshot; None when it worked, else what went wrong."""
    if not task.setup:
        return None
    sandbox = scoring_sandbox(settings, repo, SETUP_TIMEOUT_S)
    try:
        res = sandbox.run(task.setup)
    finally:
        sandbox.close()
    if res.exit_code == 0 and not res.timed_out:
        return None
    tail = res.output.strip().splitlines()[-1:] or ["no output"]
    return f"the setup command failed (exit {res.exit_code}): {tail[0]}"


def run_one(
    task: EvalTask,
    settings: Settings,
    opts: EvalOptions,
    out: Path,
    engine: Engine,
    listener: Listener | None = None,
) -> TaskRecord:
    """One task: fresh repository, the engine's run as a user's, then the hidden tests."""
    started = time.monotonic()
    listener = listener or Listener()
    record = TaskRecord(task_id=task.id, resolved=False, model=settings.model_name)
    record.metadata = dict(task.metadata)
    work = out / "work" / task.safe_id
    remove_tree(work)
    repo = work / "repo"
    try:
        materialize(task, repo, settings.data_dir / "clones")
        setup_error = _setup_snapshot(task, repo, settings)
        record.base_commit = init_repo(repo)
    except UserError as exc:
        record.error, record.error_kind = exc.message, "task"
        return _finish(record, work, None, opts, started)
    if setup_error:
        record.error, record.error_kind = setup_error, "setup"
        return _finish(record, work, None, opts, started)

    task_settings = _replayed(settings, task.id)
    if task.test_command:
        task_settings = dataclasses.replace(task_settings, test_command=task.test_command)
    if task.tests.timeout_s:
        # The suite says how long its tests may take; a bug that loops forever should cost
        # about that, not the default 20 s, of CPU time on every test run of the agent's (the
        # wall clock stays generous: on a loaded machine it says little).
        limit = max(10.0, 3 * task.tests.timeout_s)
        if task_settings.test_cpu_s > 0:
            task_settings = dataclasses.replace(
                task_settings, test_cpu_s=min(task_settings.test_cpu_s, limit)
            )
    run_id = f"eval-{task.safe_id}-{secrets.token_hex(3)}"
    user_task = Task(
        instruction=task.statement,
        repo=str(repo),
        task_id=run_id,
        attempts=opts.attempts,
        until_pass=opts.until_pass,
        hidden_paths=_hidden_from_agent(opts.hide, repo),
    )
    run_dir = run_dir_for(task_settings, run_id)
    record.run_id = run_id
    record.run_log = str(run_dir / "events.jsonl")

    result = engine.submit(user_task, [Steps(listener, task.id)], settings=task_settings).result()
    _copy_result(record, result)

    def hidden_score(commit: str | None) -> Score:
        tree = work / "score"
        remove_tree(tree)
        export_commit(repo, commit or record.base_commit, tree)
        return score_tree(task, tree, repo, settings, opts.test_timeout_s)

    score = hidden_score(record.commit)
    record.resolved = score.resolved
    record.score = score.to_dict()
    record.score_seconds = score.seconds
    _score_attempts(record, result, hidden_score)
    return _finish(record, work, result.worktree or None, opts, started)


def _replayed(settings: Settings, task_id: str) -> Settings:
    """With `--model replay:EVAL_OUT` (the directory of an earlier eval run), each task
    replays its own recorded run."""
    spec = settings.model or ""
    if not spec.startswith("replay:"):
        return settings
    records = load_records(Path(spec[len("replay:") :]).expanduser() / RECORDS_FILE)
    if not records:
        return settings
    recorded = records.get(task_id)
    if recorded is None or not recorded.run_log:
        raise UserError(
            f"the eval run in {spec[len('replay:') :]} has no recorded run of task {task_id}; "
            "replay a run that covered it, or leave the task out."
        )
    return dataclasses.replace(settings, model=f"replay:{Path(recorded.run_log).parent}")


def _score_attempts(
    record: TaskRecord, result: AttemptResult, hidden_score: Callable[[str | None], Score]
) -> None:
    """Each attempt's own outcome, its hidden-test verdict, and what its log says about edits."""
    attempts = result.attempts
    run_dirs = [a.get("run_dir") for a in attempts] or [result.run_dir]
    for run_dir in run_dirs:
        if run_dir:
            _count_events(record, Path(run_dir) / "events.jsonl")
    for entry in attempts:
        chosen = entry.get("attempt") == record.attempt
        resolved = record.resolved if chosen else hidden_score(entry.get("commit")).resolved
        record.attempt_results.append({**_attempt_fields(entry), "resolved": resolved})


def _attempt_fields(entry: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "attempt",
        "status",
        "exit_reason",
        "tests_pass",
        "turns",
        "tokens",
        "wall_seconds",
        "repeats_attempt",
    )
    return {k: entry.get(k) for k in keys}


def _count_events(record: TaskRecord, log: Path) -> None:
    """The format errors, edits, compactions and context-window stops of one attempt's log."""
    if not log.is_file():
        return
    last_reply: float | None = None
    waiting: dict[str, Any] | None = None  # a compaction whose next reply is not seen yet
    for event in read_events(log):
        if event.type == "model.reply":
            seconds = float(event.data.get("seconds") or 0)
            if waiting is not None:
                waiting["after_s"] = seconds
                waiting = None
            last_reply = seconds
        elif event.type == "context.compacted":
            waiting = {
                "turn": event.data.get("turn"),
                "dropped_turns": event.data.get("dropped_turns"),
                "tokens_before": event.data.get("tokens_before"),
                "tokens_after": event.data.get("tokens_after"),
                "summary_s": event.data.get("seconds"),
                "before_s": last_reply,
                "after_s": None,
            }
            record.compactions.append(waiting)
        elif event.type == "limit.reached":
            if str(event.data.get("reason", "")).startswith("context window full"):
                record.context_full += 1
        elif event.type == "format.error":
            record.format_errors += 1
        elif event.type == "edit":
            counts = record.edits.setdefault(str(event.data.get("form")), [0, 0])
            counts[0] += 1
            counts[1] += 0 if event.data.get("ok") else 1


def _hidden_from_agent(paths: tuple[str, ...], repo: Path) -> tuple[str, ...]:
    """The suite (its hidden tests and reference solutions), except a path holding the task's
    own repository (hiding it would hide the workspace too)."""
    return tuple(p for p in paths if not repo.resolve().is_relative_to(Path(p).resolve()))


def _copy_result(record: TaskRecord, result: AttemptResult) -> None:
    record.attempts = len(result.attempts) or 1
    record.attempt = result.attempt
    # What the task cost: with best-of-N, every attempt that ran, not only the chosen one.
    for key, value in result.totals().items():
        setattr(record, key, value)
    for key in ("status", "exit_reason", "summary", "diff", "diff_stat", "branch", "commit"):
        setattr(record, key, getattr(result, key))
    record.model = result.model or record.model
    if result.status == "error":
        record.error = result.error
        record.error_kind = result.error_kind or "run"


def _finish(
    record: TaskRecord,
    work: Path,
    worktree: str | None,
    opts: EvalOptions,
    started: float,
) -> TaskRecord:
    if not record.score:
        record.score = Score(False, error=record.error).to_dict()
    if not opts.keep:
        remove_tree(work)
        if worktree:
            # Kept by the runner after an error; its repository is gone with `work`.
            remove_tree(Path(worktree))
    record.total_seconds = round(time.monotonic() - started, 3)
    record.finished_at = _now()
    return record
