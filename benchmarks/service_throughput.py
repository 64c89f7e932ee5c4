"""What `pullsmith serve` costs per task over the engine alone, and how fast its events go.

    .venv/bin/python benchmarks/service_throughput.py [--tasks 200] [--workers 1,2] [--rounds 2]
        [--insert-events 3000] [--stream-events 20000] [--readers 4] [--no-postgres] [--keep]

The work: a one-file repository (calc.py, whose own assertion fails until add() adds; its test
command is `python calc.py`) and one real run of it, recorded once with a scripted model (a
whole-file rewrite of calc.py, then `finish`). Every task below replays that run
(`replay:<its run dir>`): one edit, four test runs of a few milliseconds, a commit and a local
PR, so what is measured is pullsmith's own machinery and not a model.

1. Throughput. For each store and each `--workers` count, `--rounds` times (each round
   reverses the order of the worker counts and of the two front ends of the one before):
   - serve: a real `pullsmith serve --workers N --model replay:RUN` process on 127.0.0.1 (a fresh
     data directory and database each time). After N untimed warm-up tasks (they start the
     worker processes), `--tasks` tasks are POSTed to /api/tasks one after the other, as fast
     as the API takes them, and the client polls until none is queued or running. From the
     service's own timestamps: tasks per second = tasks / (first created_at -> last
     finished_at), and p50/p95 of created_at -> finished_at (submit to done, queueing
     included, since all tasks are submitted at once).
   - engine alone: the same tasks through `pullsmith.engine.Engine` with a `ProcessExecutor` of
     N workers and the same LocalPublisher (so the same PR records in the same kind of store),
     in this process: no HTTP, no scheduler, no service tables. Same warm-up; submit to done is
     `Engine.submit` -> the RunHandle being done.
   The service's overhead is the ratio of their times per task (engine tasks/s over serve
   tasks/s, medians over the rounds). Goal: <= 1.10x. Also printed, from each task's
   events.jsonl: how busy the workers were (a task's task.started -> its worker's last event,
   summed, over workers x elapsed), the workers' idle time per task, and the closing of a
   task (its worker's last event -> done); tasks that did not pass, with their error.
2. Events. The insert rate of the service_events table: `TaskService.store_event` (what the
   service does with every event: one transaction each) for `--insert-events` events copied
   from a real task's log, from one thread and from two at once (two running tasks). Compared
   with what the throughput runs needed (events per task x tasks per second).
3. Server-Sent Events. On the last serve process (largest worker count, still running): one
   finished task with a long stream (`--stream-events` events, copies of a real task's events,
   written to its database), read whole three times (median); and every timed task's stream,
   read by `--readers` clients at once. Printed: events per second received.

Stores: SQLite (the default file in the data directory) always; PostgreSQL as well when
/usr/lib/postgresql/*/bin/postgres and the psycopg driver are there (unless `--no-postgres`): a
throwaway cluster made with initdb in a temporary directory (as the `postgres` user when run as
root), listening on a free port of 127.0.0.1 only, durable (fsync on) like a real one, removed
at the end. Each configuration gets a database of its own.

Everything lives in a temporary XDG_DATA_HOME / XDG_CONFIG_HOME (removed at the end unless
`--keep`). The sandbox is bwrap where it works here, else none; the output says which. The
output is Markdown, with the exact command.
"""

from __future__ import annotations

import os
import tempfile

# Before pullsmith is imported: its settings read these. Worker processes (spawned) inherit
# them, and re-import this file without making a second home.
if "PULLSMITH_BENCH_HOME" not in os.environ:
    os.environ["PULLSMITH_BENCH_HOME"] = tempfile.mkdtemp(prefix="pullsmith-service-bench-")
    _home = os.environ["PULLSMITH_BENCH_HOME"]
    os.environ["XDG_DATA_HOME"] = os.path.join(_home, "data")
    os.environ["XDG_CONFIG_HOME"] = os.path.join(_home, "config")
    for _var in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "PULLSMITH_MODEL",
        "PULLSMITH_SANDBOX",
        "PULLSMITH_DATA_DIR",
        "PULLSMITH_DATABASE_URL",
        "PULLSMITH_TOKEN",
        "PULLSMITH_TEST_COMMAND",
        "PULLSMITH_PROTOCOL",
        "PULLSMITH_EDIT_FORMS",
        "PULLSMITH_LOCAL_SERVER_URL",
        "GITHUB_TOKEN",
        "GH_TOKEN",
    ):
        os.environ.pop(_var, None)
    for _name, _value in (
        ("GIT_AUTHOR_NAME", "pullsmith bench"),
        ("GIT_AUTHOR_EMAIL", "bench@pullsmith.invalid"),
        ("GIT_COMMITTER_NAME", "pullsmith bench"),
        ("GIT_COMMITTER_EMAIL", "bench@pullsmith.invalid"),
    ):
        os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from pullsmith.config import Settings, load_settings  # noqa: E402
from pullsmith.engine import Engine, RunHandle, run_task  # noqa: E402
from pullsmith.events import Event, read_events  # noqa: E402
from pullsmith.executors import ProcessExecutor  # noqa: E402
from pullsmith.models.base import Message, Reply, Usage  # noqa: E402
from pullsmith.pr.publish import LocalPublisher  # noqa: E402
from pullsmith.sandbox import bwrap_available  # noqa: E402
from pullsmith.service.queue import TaskService  # noqa: E402
from pullsmith.service.tables import ServiceEvent, ServiceTask  # noqa: E402
from pullsmith.store import Store, utcnow  # noqa: E402
from pullsmith.task import Task, new_task_id  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.10
INSTRUCTION = "add() in calc.py subtracts; make it add."
TEST_COMMAND = "python calc.py"
BUGGY = (
    "def add(a, b):\n"
    "    return a - b\n"
    "\n"
    "\n"
    'if __name__ == "__main__":\n'
    '    assert add(2, 3) == 5, f"add(2, 3) is {add(2, 3)}, not 5"\n'
)
# A different size from the bug: a same-size edit within a second of the worktree's creation
# can be missed (see tests/eval/eval_helpers.py).
FIXED = BUGGY.replace("    return a - b\n", "    return a + b  # fixed\n")
REPLIES = [
    f"add() subtracts.\n```bash\ncat > calc.py <<'EOF'\n{FIXED}EOF\n```",
    '```bash\nfinish "add() adds"\n```',
]
FINISHED = {"passed", "failed", "passed-unfinished", "untested", "error", "cancelled"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def say(message: str) -> None:
    """Progress, on stderr (the report is stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ScriptedModel:
    """Answers with `replies` in order (for the one recorded run)."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)

    def complete(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Reply:
        if not self.replies:
            raise RuntimeError("the scripted model ran out of replies")
        return Reply(
            text=self.replies.pop(0),
            usage=Usage(prompt_tokens=100, completion_tokens=10),
            finish_reason="stop",
        )

    def close(self) -> None:
        pass


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "calc.py").write_text(BUGGY, encoding="utf-8")
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "initial", cwd=path)
    return path


def record(settings: Settings, work: Path) -> tuple[str, list[Event]]:
    """One real run of the repository with the scripted model: its replay spec and events."""
    repo = make_repo(work / "recorded-repo")
    result = run_task(
        Task(instruction=INSTRUCTION, repo=str(repo)), settings, model=ScriptedModel(REPLIES)
    )
    if result.status != "passed" or not result.commit:
        raise SystemExit(f"the recorded run did not pass: {result.status} {result.error}")
    return f"replay:{result.run_dir}", read_events(Path(result.run_dir) / "events.jsonl")


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    for postgres in reversed(versions):
        if (postgres.parent / "initdb").is_file():
            return postgres.parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Postgres:
    """A throwaway cluster in a temporary directory, on 127.0.0.1 only."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.version = bindir.parent.name
        self.root = Path(tempfile.mkdtemp(prefix="pullsmith-bench-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root
            entry = pwd.getpwnam("postgres")
            self.user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> Postgres:
        done = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres"]
            + ["--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True,
            text=True,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            **self.user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        self.port = free_port()
        log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 (the server keeps it)
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            + ["-h", "127.0.0.1", "-k", str(self.sockets)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            **self.user,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self.connect():
                    return self
            except Exception:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError(
            "PostgreSQL did not start:\n" + (self.root / "postgres.log").read_text()[-2000:]
        )

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def database(self, name: str) -> str:
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclasses.dataclass
class Backend:
    name: str
    postgres: Postgres | None = None

    def url(self, label: str) -> str | None:
        """A fresh database for `label` (None: the SQLite file of the data directory)."""
        if self.postgres is None:
            return None
        return self.postgres.database(re.sub(r"\W", "_", label.lower()))


# --- one measured run ---------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    front: str  # "serve" or "engine"
    workers: int
    tasks: int
    elapsed: float  # first submit -> last done
    latencies: list[float]  # submit -> done, per task
    states: Counter[str]
    events: int  # events of the timed tasks (the service's table; the engine's logs)
    # Per task: the worker's part (task.started -> its last event) and the closing (that last
    # event -> done: the PR, task.finished, and for serve storing the events and the state).
    spans: list[float] = dataclasses.field(default_factory=list)
    closings: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)  # of the tasks that did not pass

    @property
    def busy(self) -> float:
        """How much of the time the workers were running a task's work."""
        return sum(self.spans) / (self.workers * self.elapsed)

    @property
    def idle(self) -> float:
        """Seconds per task that a worker had no task's work to do."""
        return (1 - self.busy) * self.workers * self.elapsed / self.tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.elapsed

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# Events the engine writes in the front end's process once the worker is done.
CLOSING = ("task.finished", "warning", "listener.failed")


def worker_times(log: Path, done: float) -> tuple[float, float] | None:
    """(the worker's span, the closing) of one task, from its events.jsonl and when it was done."""
    try:
        events = read_events(log)
    except OSError:
        return None
    inside = [e.ts for e in events if e.type not in CLOSING and not e.type.startswith("pr.")]
    if not inside:
        return None
    return max(inside) - min(inside), done - max(inside)


def parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Serve:
    """`pullsmith serve` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, data_dir: Path, workers: int, model: str, url: str | None) -> None:
        self.out = data_dir.parent / f"serve-{workers}.out"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(PULLSMITH_DATA_DIR=str(data_dir), PULLSMITH_TEST_COMMAND=TEST_COMMAND)
        env["PULLSMITH_SANDBOX"] = SANDBOX
        args = ["serve", "--port", "0", "--workers", str(workers), "--model", model]
        if url:
            args += ["--database-url", url]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"open +(http://\S+)/\?token=(\S+)", self.out.read_text())
            if found:
                self.base, self.token = found.group(1), found.group(2)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pullsmith serve did not start:\n{self.out.read_text()}")
            time.sleep(0.05)
        self.client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def submit(self, repo: Path) -> dict[str, Any]:
        response = self.client.post(
            "/api/tasks", json={"repo": str(repo), "instruction": INSTRUCTION}
        )
        if response.status_code != 201:
            raise SystemExit(f"POST /api/tasks answered {response.status_code}: {response.text}")
        return response.json()

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = self.client.get("/api/tasks", params={"state": "queued,running", "limit": 1})
            if page.json()["total"] == 0:
                return
            time.sleep(0.25)
        raise SystemExit(f"tasks still queued or running after {timeout:.0f} s")

    def tasks(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.client.get("/api/tasks", params={"limit": 500, "offset": len(found)}).json()
            found += page["tasks"]
            if len(found) >= page["total"] or not page["tasks"]:
                return found

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def count_events(url: str | None, data_dir: Path, ids: set[str]) -> int:
    with Store(url or f"sqlite:///{data_dir / 'pullsmith.db'}") as store, store.session() as s:
        rows = s.execute(
            select(ServiceEvent.task_id, func.count()).group_by(ServiceEvent.task_id)
        ).all()
    return sum(n for task_id, n in rows if task_id in ids)


def measure_serve(
    backend: Backend,
    workers: int,
    count: int,
    template: Path,
    replay: str,
    work: Path,
    streams: dict[str, Any] | None,
) -> Run:
    label = f"serve-{backend.name}-w{workers}-{work.name}"
    url = backend.url(label)
    repo = work / "repo"
    shutil.copytree(template, repo)
    data_dir = work / "data"
    server = Serve(data_dir, workers, replay, url)
    try:
        for _ in range(workers):  # warm-up: the worker processes start
            server.submit(repo)
        server.wait_idle(120)
        warm = {t["id"] for t in server.tasks()}
        for _ in range(count):
            server.submit(repo)
        server.wait_idle(max(300.0, count * 10.0))
        rows = [t for t in server.tasks() if t["id"] not in warm]
        created = [parse_time(t["created_at"]) for t in rows]
        finished = [parse_time(t["finished_at"]) for t in rows]
        ids = {t["id"] for t in rows}
        events = count_events(url, data_dir, ids)
        if streams is not None:
            streams.update(measure_streams(server, url, data_dir, sorted(ids), repo, streams))
    finally:
        server.stop()
    times = [
        worker_times(data_dir / "runs" / t["id"] / "events.jsonl", f)
        for t, f in zip(rows, finished, strict=True)
    ]
    return Run(
        front="serve",
        workers=workers,
        tasks=len(rows),
        elapsed=max(finished) - min(created),
        latencies=[f - c for c, f in zip(created, finished, strict=True)],
        states=Counter(t["state"] for t in rows),
        events=events,
        spans=[t[0] for t in times if t],
        closings=[t[1] for t in times if t],
        errors=[f"{t['state']}: {t['error']}" for t in rows if t["state"] != "passed"],
    )


def measure_engine(
    backend: Backend,
    workers: int,
    count: int,
    template: Path,
    replay: str,
    work: Path,
    settings: Settings,
) -> Run:
    label = f"engine-{backend.name}-w{workers}-{work.name}"
    settings = dataclasses.replace(
        settings, data_dir=work / "data", database_url=backend.url(label), model=replay
    )
    repo = work / "repo"
    shutil.copytree(template, repo)
    engine = Engine(
        settings,
        ProcessExecutor(workers, log_path=settings.data_dir / "model-server.log"),
        LocalPublisher(settings),
    )
    used: set[str] = set()

    def task() -> Task:
        task_id = new_task_id()
        while task_id in used:
            task_id = new_task_id()
        used.add(task_id)
        return Task(instruction=INSTRUCTION, repo=str(repo), task_id=task_id)

    try:
        for handle in [engine.submit(task()) for _ in range(workers)]:  # warm-up
            handle.result(timeout=120)
        submitted: dict[str, float] = {}
        done: dict[str, float] = {}
        handles: list[RunHandle] = []
        for _ in range(count):
            submitted_at = time.time()
            handle = engine.submit(task())
            submitted[handle.task_id] = submitted_at
            handles.append(handle)
        pending = list(handles)
        deadline = time.monotonic() + max(300.0, count * 10.0)
        while pending:
            for handle in list(pending):
                if handle.done():
                    done[handle.task_id] = time.time()
                    pending.remove(handle)
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} engine tasks still running")
            time.sleep(0.005)
        results = [h.result() for h in handles]
        states = Counter(r.status for r in results)
        errors = [f"{r.status}: {r.error}" for r in results if r.status != "passed"]
        events = sum(len(read_events(h.log_path)) for h in handles)
        times = [worker_times(h.log_path, done[h.task_id]) for h in handles]
    finally:
        engine.close()
    return Run(
        front="engine",
        workers=workers,
        tasks=count,
        elapsed=max(done.values()) - min(submitted.values()),
        latencies=[done[i] - submitted[i] for i in submitted],
        states=states,
        events=events,
        spans=[t[0] for t in times if t],
        closings=[t[1] for t in times if t],
        errors=errors,
    )


# --- events: the table's insert rate and the streams -------------------------------------


def copies(template: list[Event], count: int) -> list[Event]:
    """`count` events made of the template's, numbered 1..count, ending with task.finished."""
    body = [e for e in template if e.type != "task.finished"]
    last = next(e for e in template if e.type == "task.finished")
    made = [
        Event(id=n + 1, type=e.type, task_id=e.task_id, ts=e.ts, data=e.data, v=e.v)
        for n, e in enumerate(body[i % len(body)] for i in range(count - 1))
    ]
    made.append(
        Event(id=count, type=last.type, task_id=last.task_id, ts=last.ts, data=last.data, v=last.v)
    )
    return made


def task_row(task_id: str, repo: Path, state: str) -> ServiceTask:
    now = utcnow()
    return ServiceTask(
        id=task_id,
        repo=str(repo),
        instruction=INSTRUCTION,
        attempts=1,
        until_pass=False,
        model_options={},
        state=state,
        created_at=now,
        started_at=now,
        finished_at=now if state != "running" else None,
        tries=1,
        interruptions=0,
    )


def measure_inserts(
    backend: Backend, settings: Settings, template: list[Event], count: int, work: Path
) -> dict[int, float]:
    """Events per second through TaskService.store_event, by number of writing threads."""
    rates: dict[int, float] = {}
    for threads in (1, 2):
        label = f"inserts-{backend.name}-{threads}"
        url = backend.url(label)
        data_dir = work / label
        data_dir.mkdir(parents=True)
        local = dataclasses.replace(settings, data_dir=data_dir, database_url=url)
        store = Store.open(local)
        service = TaskService(local, store, workers=1)
        try:
            ids = [new_task_id() + f"-{n}" for n in range(threads)]
            with store.session() as session:
                session.add_all([task_row(i, work, "running") for i in ids])
            events = copies(template, count // threads)
            barrier = threading.Barrier(threads + 1)

            def write(
                task_id: str,
                events: list[Event] = events,
                barrier: Any = barrier,
                service: TaskService = service,
            ) -> None:
                barrier.wait()
                for event in events:
                    service.store_event(task_id, event)

            writers = [threading.Thread(target=write, args=(i,)) for i in ids]
            for writer in writers:
                writer.start()
            barrier.wait()
            started = time.perf_counter()
            for writer in writers:
                writer.join()
            elapsed = time.perf_counter() - started
            with store.session() as session:
                stored = session.scalar(select(func.count()).select_from(ServiceEvent)) or 0
            if stored != len(events) * threads:
                raise SystemExit(f"stored {stored} events, not {len(events) * threads}")
            rates[threads] = stored / elapsed
        finally:
            service.engine.close()
            store.close()
    return rates


def read_stream(base: str, token: str, task_id: str) -> int:
    frames = 0
    with httpx.stream(
        "GET",
        f"{base}/api/tasks/{task_id}/events",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("id: "):
                frames += 1
    return frames


def measure_streams(
    server: Serve,
    url: str | None,
    data_dir: Path,
    ids: list[str],
    repo: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    template = server_events(url, data_dir, ids[0])
    long_id = f"{new_task_id()}-long"
    events = copies(template, options["stream_events"])
    with Store(url or f"sqlite:///{data_dir / 'pullsmith.db'}") as store:
        with store.session() as session:
            session.add(task_row(long_id, repo, "passed"))
        with store.session() as session:
            session.add_all(
                ServiceEvent(task_id=long_id, id=e.id, type=e.type, ts=e.ts, data=e.data, v=e.v)
                for e in events
            )
    times = []
    for _ in range(3):
        started = time.perf_counter()
        got = read_stream(server.base, server.token, long_id)
        times.append(time.perf_counter() - started)
        if got != len(events):
            raise SystemExit(f"the long stream sent {got} events, not {len(events)}")
    size = sum(len(json.dumps(e.to_dict(), ensure_ascii=False, default=str)) for e in events)
    todo = list(ids)
    lock = threading.Lock()
    received = [0]

    def reader() -> None:
        while True:
            with lock:
                if not todo:
                    return
                task_id = todo.pop()
            n = read_stream(server.base, server.token, task_id)
            with lock:
                received[0] += n

    readers = [threading.Thread(target=reader) for _ in range(options["readers"])]
    started = time.perf_counter()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    many = time.perf_counter() - started
    return {
        "long_rate": len(events) / statistics.median(times),
        "long_mb_s": size / statistics.median(times) / 1e6,
        "long_seconds": statistics.median(times),
        "many_rate": received[0] / many,
        "many_events": received[0],
        "many_streams": len(ids),
        "many_streams_s": len(ids) / many,
    }


def server_events(url: str | None, data_dir: Path, task_id: str) -> list[Event]:
    with Store(url or f"sqlite:///{data_dir / 'pullsmith.db'}") as store, store.session() as s:
        rows = list(
            s.scalars(
                select(ServiceEvent)
                .where(ServiceEvent.task_id == task_id)
                .order_by(ServiceEvent.id)
            )
        )
    return [
        Event(id=r.id, type=r.type, task_id=r.task_id, ts=r.ts, data=r.data, v=r.v) for r in rows
    ]


# --- main and the report ------------------------------------------------------------------


SANDBOX = "bwrap"


def commit() -> str:
    try:
        return git("rev-parse", "--short", "HEAD", cwd=ROOT).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    global SANDBOX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="timed tasks per run")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration")
    parser.add_argument("--insert-events", type=int, default=3000, help="events to insert")
    parser.add_argument("--stream-events", type=int, default=20000, help="the long stream")
    parser.add_argument("--readers", type=int, default=4, help="clients reading many streams")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.tasks < 1 or args.rounds < 1 or not workers or min(workers) < 1:
        parser.error("--tasks, --rounds and every --workers count must be >= 1")
    if args.stream_events < 2 or args.insert_events < 2 or args.readers < 1:
        parser.error("--stream-events and --insert-events must be >= 2, --readers >= 1")
    home = Path(os.environ["PULLSMITH_BENCH_HOME"])
    why_not = bwrap_available()
    SANDBOX = "bwrap" if why_not is None else "none"
    os.environ["PULLSMITH_SANDBOX"] = SANDBOX
    settings = load_settings({"sandbox": SANDBOX, "test_command": TEST_COMMAND}, cwd=home)
    postgres_note = ""
    backends = [Backend("SQLite")]
    bindir = postgres_bin()
    if args.no_postgres:
        postgres_note = "PostgreSQL skipped (--no-postgres)"
    elif bindir is None:
        postgres_note = "PostgreSQL not installed (no /usr/lib/postgresql/*/bin/postgres)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            postgres_note = "PostgreSQL skipped: the psycopg driver is not installed"
        else:
            backends.append(Backend("PostgreSQL", Postgres(bindir)))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results: dict[str, Any] = {"runs": {}, "inserts": {}, "streams": {}, "versions": {}}
    try:
        say(f"recording the run (sandbox {SANDBOX})")
        replay, template = record(
            dataclasses.replace(settings, data_dir=home / "recording"), home / "recording"
        )
        repo = make_repo(home / "template")
        for backend in backends:
            if backend.postgres is not None:
                say(f"starting PostgreSQL {backend.postgres.version}")
                backend.postgres.start()
                results["versions"][backend.name] = backend.postgres.version
            for r in range(args.rounds):
                order = workers if r % 2 == 0 else list(reversed(workers))
                for n in order:
                    last = n == max(workers) and r == args.rounds - 1
                    for front in ("serve", "engine") if r % 2 == 0 else ("engine", "serve"):
                        work = home / "runs" / f"{backend.name}-{front}-w{n}-r{r}"
                        work.mkdir(parents=True)
                        say(
                            f"{backend.name}: {front}, {n} worker(s), round {r + 1}: {args.tasks} tasks"
                        )
                        if front == "serve":
                            streams = (
                                {"stream_events": args.stream_events, "readers": args.readers}
                                if last
                                else None
                            )
                            run = measure_serve(backend, n, args.tasks, repo, replay, work, streams)
                            if streams is not None:
                                results["streams"][backend.name] = streams
                        else:
                            run = measure_engine(
                                backend, n, args.tasks, repo, replay, work, settings
                            )
                        say(
                            f"  {run.rate:.2f} tasks/s, p50 {run.pct(0.5):.2f} s, {dict(run.states)}"
                        )
                        results["runs"].setdefault((backend.name, n, front), []).append(run)
            say(f"{backend.name}: inserting {args.insert_events} events")
            results["inserts"][backend.name] = measure_inserts(
                backend, settings, template, args.insert_events, home / "inserts"
            )
    finally:
        for backend in backends:
            if backend.postgres is not None:
                backend.postgres.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    report(args, workers, backends, results, postgres_note, why_not, load_before, started)
    if args.keep:
        print(f"\nKept: {home}.")


def report(
    args: argparse.Namespace,
    workers: list[int],
    backends: list[Backend],
    results: dict[str, Any],
    postgres_note: str,
    why_not: str | None,
    load_before: float,
    started: float,
) -> None:
    command = shlex.join([".venv/bin/python", "benchmarks/service_throughput.py", *sys.argv[1:]])
    stores = ", ".join(
        b.name + (f" {results['versions'][b.name]}" if b.name in results["versions"] else "")
        for b in backends
    )
    print("# `pullsmith serve` throughput: the service over the engine alone, events and streams\n")
    print(f"    {command}\n")
    print(
        f"Commit {commit()}, {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; Python "
        f"{platform.python_version()}; sandbox **{SANDBOX}**"
        + (f" (bwrap unavailable: {why_not})" if why_not else "")
        + f"; stores: {stores}"
        + (f" ({postgres_note})" if postgres_note else "")
        + f"; {time.monotonic() - started:.0f} s in all."
    )
    runs = results["runs"]
    print(
        f"\n## 1. Throughput: {args.tasks} tasks, submitted at once, replaying one recorded run\n\n"
        "Each task: a worktree of the one-file repository, one whole-file edit, four test runs "
        f"(`{TEST_COMMAND}`), a commit and a local PR. serve = a `pullsmith serve` process, "
        "tasks POSTed to /api/tasks (times from its created_at / finished_at); engine = "
        "`Engine` + `ProcessExecutor` + LocalPublisher in one process (submit → RunHandle "
        f"done). {args.rounds} round(s) per row; tasks/s is the median over rounds, the "
        "latencies are over every task of every round.\n"
    )
    print(
        "| store | workers | front end | tasks / s | p50 submit → done | p95 submit → done | "
        "workers busy | worker idle / task | p50 closing | events / task | states |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    failures: list[str] = []
    for backend in backends:
        for n in workers:
            for front, label in (("serve", "serve (HTTP, queue)"), ("engine", "engine alone")):
                done = runs.get((backend.name, n, front), [])
                if not done:
                    continue
                merged = Run(
                    front,
                    n,
                    sum(r.tasks for r in done),
                    1.0,
                    [x for r in done for x in r.latencies],
                    sum((r.states for r in done), Counter()),
                    sum(r.events for r in done),
                    closings=[x for r in done for x in r.closings],
                )
                states = ", ".join(f"{k} {v}" for k, v in sorted(merged.states.items()))
                closing = f"{med(merged.closings) * 1000:.0f} ms" if merged.closings else "?"
                print(
                    f"| {backend.name} | {n} | {label} | {med([r.rate for r in done]):.2f} | "
                    f"{merged.pct(0.5):.2f} s | {merged.pct(0.95):.2f} s | "
                    f"{med([r.busy for r in done]):.0%} | "
                    f"{med([r.idle for r in done]) * 1000:.0f} ms | {closing} | "
                    f"{merged.events / merged.tasks:.1f} | {states} |"
                )
                failures += [
                    f"{backend.name}, {label}, {n} worker(s): {e}" for r in done for e in r.errors
                ]
    print(
        "\nworkers busy = the workers' time in a task's work (its task.started → its last "
        "event from the worker) over workers × the elapsed time; worker idle / task = the rest "
        "of the workers' time, per task; closing = that last event → done (the PR record and "
        "task.finished, and for serve the events copied from the log and the state stored) "
        "per task.\n"
    )
    if failures:
        print("Tasks that did not pass:\n")
        for line in failures[:10]:
            print(f"- {line}")
        if len(failures) > 10:
            print(f"- … and {len(failures) - 10} more")
        print()
    print(
        "The service's overhead per task: its time per task over the engine's (engine "
        f"tasks/s ÷ serve tasks/s). Goal: ≤ {GOAL_RATIO:.2f}x.\n"
    )
    print("| store | workers | serve s / task | engine s / task | ratio | goal |")
    print("|---|---:|---:|---:|---:|:---:|")
    for backend in backends:
        for n in workers:
            serve = runs.get((backend.name, n, "serve"))
            engine = runs.get((backend.name, n, "engine"))
            if not serve or not engine:
                continue
            s_rate, e_rate = med([r.rate for r in serve]), med([r.rate for r in engine])
            ratio = e_rate / s_rate
            verdict = "met" if ratio <= GOAL_RATIO else "**not met**"
            print(
                f"| {backend.name} | {n} | {1 / s_rate:.3f} | {1 / e_rate:.3f} | "
                f"**{ratio:.2f}x** | {verdict} |"
            )
    print(
        f"\n## 2. Events: the service_events table's insert rate\n\n"
        f"`TaskService.store_event` (one transaction per event, as the service stores each "
        f"event of a run), {args.insert_events} events copied from a real task's log; one "
        "writer thread, then two at once (two tasks running). Needed: the events per second "
        "the serve runs above wrote (events / task × tasks / s).\n"
    )
    print(
        "| store | events / s, 1 writer | events / s, 2 writers | needed at the fastest serve run |"
    )
    print("|---|---:|---:|---:|")
    for backend in backends:
        rates = results["inserts"].get(backend.name)
        if not rates:
            continue
        needed = max(
            (
                (r.events / r.tasks) * r.rate
                for n in workers
                for r in runs.get((backend.name, n, "serve"), [])
            ),
            default=0.0,
        )
        print(f"| {backend.name} | {rates[1]:.0f} | {rates[2]:.0f} | {needed:.0f} |")
    print(
        f"\n## 3. Server-Sent Events\n\n"
        f"On the last serve process ({max(workers)} workers, after its timed run): one finished "
        f"task whose stream has {args.stream_events} events (copies of a real task's, written "
        "to its database), read whole three times (median); then the stream of every timed "
        f"task, read by {args.readers} clients at once.\n"
    )
    print(
        "| store | one long stream: events / s | MB / s | s | many streams: events / s | "
        "streams / s | streams |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend in backends:
        s = results["streams"].get(backend.name)
        if not s:
            continue
        print(
            f"| {backend.name} | {s['long_rate']:.0f} | {s['long_mb_s']:.1f} | "
            f"{s['long_seconds']:.2f} | {s['many_rate']:.0f} | {s['many_streams_s']:.1f} | "
            f"{s['many_streams']} |"
        )


if __name__ == "__main__":
    main()
