"""Attempts through `pullsmith serve` on the local executor and on Ray, at 1 and 2 workers.

    .venv/bin/python benchmarks/ray_scaling.py [--tasks 1000] [--workers 1,2] [--rounds 1]
        [--executors local,ray] [--keep]

The work: a one-file repository (calc.py, whose own assertion fails until add() adds; its test
command is `python calc.py`) and one real run of it, recorded once with a scripted model (a
whole-file rewrite of calc.py, then `finish`). Every task replays that run (`replay:<run>`):
one edit, four test runs of a few milliseconds, a commit and a local PR — pullsmith's own
machinery, no model.

For each executor and `--workers` N, `--rounds` times (each round reverses the order of the one
before): a fresh data directory; for Ray a fresh Ray instance of its own with N CPUs (a head
node started by a helper process on 127.0.0.1 only, no dashboard, no usage statistics, in a
temporary directory, shut down after), so Ray's scheduler runs N attempts at once as the local
executor's N worker processes do; then `pullsmith serve --workers N --executor E --model
replay:RUN`. After N untimed warm-up tasks (they start the workers), `--tasks` tasks are POSTed
to /api/tasks one after the other, and the client polls until none is queued or running. From
the service's own timestamps: attempts per second = tasks / (first created_at -> last
finished_at); p50/p95 of started_at -> finished_at (one attempt, from its claim by the
scheduler to its end stored: what an attempt costs on that executor) and of created_at ->
finished_at (queueing included: all tasks are submitted at once).

Printed: the table of runs; Ray's overhead per attempt against the local executor at the same N
(time per attempt, 1 / throughput, Ray over local, and the p50 attempt latency likewise);
scaling efficiency = throughput at 2 / (2 x throughput at 1) per executor; what crosses the
network per attempt, measured: the bundle of the repository sent (this one's, the example
repository's and pullsmith's own), the bundle of the branch that comes back, the events
streamed (bytes of events.jsonl) and the result. The output is Markdown, with the command.
"""

from __future__ import annotations

import os
import tempfile

if "PULLSMITH_BENCH_HOME" not in os.environ:
    os.environ["PULLSMITH_BENCH_HOME"] = tempfile.mkdtemp(prefix="pullsmith-ray-bench-")
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
        "PULLSMITH_EXECUTOR",
        "PULLSMITH_RAY_ADDRESS",
        "RAY_ADDRESS",
    ):
        os.environ.pop(_var, None)
    for _name, _value in (
        ("GIT_AUTHOR_NAME", "pullsmith bench"),
        ("GIT_AUTHOR_EMAIL", "bench@pullsmith.invalid"),
        ("GIT_COMMITTER_NAME", "pullsmith bench"),
        ("GIT_COMMITTER_EMAIL", "bench@pullsmith.invalid"),
        # Ray: no usage statistics, every address on the loopback, no token in the home.
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
        ("RAY_AUTH_MODE", "disabled"),
    ):
        os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_throughput import (  # noqa: E402
    INSTRUCTION,
    TEST_COMMAND,
    git,
    make_repo,
    record,
    say,
)

from pullsmith.config import load_settings  # noqa: E402
from pullsmith.ray_executor import branch_bundle, repo_bundle  # noqa: E402
from pullsmith.sandbox import bwrap_available  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = "bwrap" if bwrap_available() else "none"
HEAD_SCRIPT = """
import sys, tempfile, ray
ctx = ray.init(num_cpus=int(sys.argv[1]), _temp_dir=sys.argv[2], include_dashboard=False,
               _node_ip_address="127.0.0.1", configure_logging=False, log_to_driver=False)
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the benchmark closes it
ray.shutdown()
"""


class RayHead:
    """A Ray instance of N CPUs for one configuration, held by a helper process."""

    def __init__(self, cpus: int) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HEAD_SCRIPT, str(cpus), str(self.temp)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not re.match(r"127\.0\.0\.1:\d+$", self.address):
            raise SystemExit(f"the Ray head did not start on 127.0.0.1: {self.address!r}")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


class Serve:
    """`pullsmith serve` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(
        self, data_dir: Path, workers: int, executor: str, model: str, ray_address: str | None
    ) -> None:
        self.out = data_dir.parent / f"serve-{executor}-{workers}.out"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            PULLSMITH_DATA_DIR=str(data_dir),
            PULLSMITH_TEST_COMMAND=TEST_COMMAND,
            PULLSMITH_SANDBOX=SANDBOX,
        )
        if ray_address:
            env["PULLSMITH_RAY_ADDRESS"] = ray_address
        args = ["serve", "--port", "0", "--workers", str(workers), "--model", model]
        args += ["--executor", executor]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 120
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

    def submit(self, repo: Path) -> None:
        response = self.client.post(
            "/api/tasks", json={"repo": str(repo), "instruction": INSTRUCTION}
        )
        if response.status_code != 201:
            raise SystemExit(f"POST /api/tasks answered {response.status_code}: {response.text}")

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            page = self.client.get("/api/tasks", params={"state": "queued,running", "limit": 1})
            if page.json()["total"] == 0:
                return
            time.sleep(0.5)
        raise SystemExit(f"tasks still queued or running after {timeout:.0f} s")

    def tasks(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.client.get("/api/tasks", params={"limit": 500, "offset": len(found)}).json()
            found += page["tasks"]
            if len(found) >= page["total"] or not page["tasks"]:
                return found

    def cpu_seconds(self) -> float:
        """CPU time the serve process itself used so far (not its worker processes)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclasses.dataclass
class Run:
    executor: str
    workers: int
    tasks: int
    elapsed: float
    attempt_latencies: list[float]  # started_at -> finished_at
    queue_latencies: list[float]  # created_at -> finished_at
    states: Counter[str]
    errors: list[str]
    event_bytes: list[int]
    driver_cpu: float = 0.0  # CPU seconds of the serve process during the timed tasks

    @property
    def rate(self) -> float:
        return self.tasks / self.elapsed


def measure(executor: str, workers: int, count: int, replay: str, work: Path, label: str) -> Run:
    data_dir = work / label / "data"
    repo = make_repo(work / label / "repo")
    head = RayHead(workers) if executor == "ray" else None
    try:
        server = Serve(data_dir, workers, executor, replay, head.address if head else None)
        try:
            for _ in range(workers):
                server.submit(repo)
            server.wait_idle(300)
            warm = {t["id"] for t in server.tasks()}
            say(f"{label}: {count} tasks")
            cpu_before = server.cpu_seconds()
            for _ in range(count):
                server.submit(repo)
            server.wait_idle(max(600.0, count * 20.0))
            driver_cpu = server.cpu_seconds() - cpu_before
            rows = [t for t in server.tasks() if t["id"] not in warm]
        finally:
            server.stop()
    finally:
        if head is not None:
            head.stop()
    created = [parse_time(t["created_at"]) for t in rows]
    finished = [parse_time(t["finished_at"]) for t in rows]
    started = [parse_time(t["started_at"]) for t in rows]
    errors = [
        f"{t['state']}: {(t.get('error') or '').strip()[:300]}"
        for t in rows
        if t["state"] != "passed"
    ]
    event_bytes = []
    for t in rows[:50]:
        log = data_dir / "runs" / t["id"] / "events.jsonl"
        if log.is_file():
            event_bytes.append(log.stat().st_size)
    return Run(
        executor,
        workers,
        len(rows),
        max(finished) - min(created),
        [f - s for s, f in zip(started, finished, strict=True)],
        [f - c for c, f in zip(created, finished, strict=True)],
        Counter(t["state"] for t in rows),
        errors,
        event_bytes,
        driver_cpu,
    )


def wire_sizes(work: Path) -> dict[str, Any]:
    """The bytes an attempt sends across the network, measured on real bundles."""
    settings = load_settings({"sandbox": "none", "test_command": TEST_COMMAND})
    _, events = record(settings, work / "sizes")
    calc = make_repo(work / "sizes-calc")
    inventory = work / "sizes-inventory"
    shutil.copytree(ROOT / "examples" / "inventory", inventory)
    git("init", "-q", "-b", "main", cwd=inventory)
    git("add", "-A", cwd=inventory)
    git("commit", "-q", "-m", "initial", cwd=inventory)
    sizes: dict[str, Any] = {
        "calc.py repository": len(repo_bundle(calc)),
        "examples/inventory": len(repo_bundle(inventory)),
    }
    own = work / "sizes-pullsmith"
    git("clone", "-q", "--no-local", str(ROOT), str(own), cwd=work)
    sizes[f"pullsmith itself ({git('rev-list', '--count', 'HEAD', cwd=own).strip()} commits)"] = (
        len(repo_bundle(own))
    )
    base = git("rev-parse", "HEAD", cwd=calc).strip()
    git("checkout", "-q", "-b", "pullsmith/x", cwd=calc)
    fixed = (calc / "calc.py").read_text().replace("a - b", "a + b  # fixed")
    (calc / "calc.py").write_text(fixed)
    git("commit", "-q", "-am", "fix", cwd=calc)
    branch = branch_bundle(calc, "pullsmith/x", base) or b""
    result = json.loads((Path(settings.runs_dir) / events[0].task_id / "result.json").read_text())
    return {
        "repos": sizes,
        "branch": len(branch),
        "events": sum(len(e.to_json()) + 1 for e in events),
        "event_count": len(events),
        "result": len(json.dumps(result)),
    }


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    workers = [int(n) for n in args.workers.split(",")]
    executors = [e.strip() for e in args.executors.split(",")]
    home = Path(os.environ["PULLSMITH_BENCH_HOME"])
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    settings = load_settings({"sandbox": SANDBOX, "test_command": TEST_COMMAND})
    replay, _ = record(settings, work / "recorded")
    say(f"recorded {replay}")
    runs: dict[tuple[str, int], list[Run]] = {}
    configs = [(e, n) for n in workers for e in executors]
    for round_no in range(args.rounds):
        order = configs if round_no % 2 == 0 else list(reversed(configs))
        for executor, n in order:
            label = f"{executor}-w{n}-r{round_no}"
            say(f"{label}: starting")
            run = measure(executor, n, args.tasks, replay, work, label)
            say(f"{label}: {run.rate:.2f} attempts/s, states {dict(run.states)}")
            runs.setdefault((executor, n), []).append(run)
    sizes = wire_sizes(work)
    elapsed = time.monotonic() - started
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    import ray

    command = "benchmarks/ray_scaling.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    print("# Ray scaling: attempts through `pullsmith serve`, local executor vs Ray\n")
    print(f"    .venv/bin/python {command}\n")
    print(
        f"Commit {commit}, {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; Python "
        f"{platform.python_version()}, Ray {ray.__version__}; sandbox **{SANDBOX}**; SQLite "
        f"store; {elapsed:.0f} s in all.\n"
    )
    print(
        f"## Runs: {args.tasks} attempts per row, submitted at once, replaying one recorded run\n"
    )
    print(
        "Each attempt: the one-file repository, one whole-file edit, four test runs, a commit "
        "and a local PR. local = `serve --executor local --workers N` (N worker processes); "
        "ray = `serve --executor ray --workers N` on a Ray instance of N CPUs (one attempt = "
        "one Ray task of 1 CPU; the repository shipped as a bundle, the branch fetched back, "
        f"the events streamed through the relay actor). {args.rounds} round(s); attempts/s "
        "is the median over rounds, the latencies are over every attempt.\n"
    )
    print(
        "| executor | workers | attempts / s | p50 attempt | p95 attempt | p50 submit → done | "
        "p95 submit → done | serve CPU / attempt | states |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for n in workers:
        for executor in executors:
            done = runs.get((executor, n), [])
            if not done:
                continue
            attempt = [x for r in done for x in r.attempt_latencies]
            queued = [x for r in done for x in r.queue_latencies]
            states = sum((r.states for r in done), Counter())
            print(
                f"| {executor} | {n} | {med([r.rate for r in done]):.2f} | "
                f"{pct(attempt, 0.5):.2f} s | {pct(attempt, 0.95):.2f} s | "
                f"{pct(queued, 0.5):.1f} s | {pct(queued, 0.95):.1f} s | "
                f"{sum(r.driver_cpu for r in done) / sum(r.tasks for r in done) * 1000:.0f} ms | "
                + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                + " |"
            )
    print(
        "\np50/p95 attempt = started_at → finished_at of a task in the service (claimed by the "
        "scheduler → its end stored); submit → done = created_at → finished_at (queueing "
        "included); serve CPU / attempt = the CPU time of the serve process itself (API, "
        "queue, engine, executor driver; not its worker processes nor Ray's) over the attempts.\n"
    )
    failures = [f"{e} w{n}: {m}" for (e, n), rs in runs.items() for r in rs for m in r.errors]
    if failures:
        print("Attempts that did not pass:\n")
        for line in failures[:10]:
            print(f"- {line}")
        if len(failures) > 10:
            print(f"- … and {len(failures) - 10} more")
        print()
    if "ray" in executors and "local" in executors:
        print("## Ray's overhead per attempt against the local executor\n")
        print(
            "| workers | local s / attempt | ray s / attempt | ratio | local p50 attempt | "
            "ray p50 attempt | ratio | ray − local per attempt |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in workers:
            local, remote = runs.get(("local", n)), runs.get(("ray", n))
            if not local or not remote:
                continue
            lt, rt = 1 / med([r.rate for r in local]), 1 / med([r.rate for r in remote])
            lp = pct([x for r in local for x in r.attempt_latencies], 0.5)
            rp = pct([x for r in remote for x in r.attempt_latencies], 0.5)
            print(
                f"| {n} | {lt:.3f} | {rt:.3f} | **{rt / lt:.2f}x** | {lp:.2f} s | {rp:.2f} s | "
                f"**{rp / lp:.2f}x** | {rp - lp:+.2f} s |"
            )
        print()
    if 1 in workers and 2 in workers:
        print("## Scaling efficiency: throughput at 2 workers / (2 × throughput at 1)\n")
        print("| executor | attempts / s at 1 | at 2 | efficiency |")
        print("|---|---:|---:|---:|")
        for executor in executors:
            one, two = runs.get((executor, 1)), runs.get((executor, 2))
            if not one or not two:
                continue
            r1, r2 = med([r.rate for r in one]), med([r.rate for r in two])
            print(f"| {executor} | {r1:.2f} | {r2:.2f} | **{r2 / (2 * r1):.0%}** |")
        print()
    print("## What crosses the network per attempt (bytes, measured)\n")
    print("| what | bytes |")
    print("|---|---:|")
    for name, size in sizes["repos"].items():
        print(f"| repository bundle, driver → worker: {name} | {size:,} |")
    print(
        f"| branch bundle, worker → driver: the one-commit fix of calc.py | {sizes['branch']:,} |"
    )
    print(
        f"| events, worker → relay → driver: one attempt's log ({sizes['event_count']} "
        f"events, JSON) | {sizes['events']:,} |"
    )
    print(f"| result, worker → driver (AttemptResult as JSON) | {sizes['result']:,} |")
    logs = [b for rs in runs.values() for r in rs for b in r.event_bytes]
    if logs:
        print(f"| events.jsonl of a served attempt (median of {len(logs)}) | {med(logs):,.0f} |")
    print(
        "\nThe repository bundle is made once per task and shared by its attempts through the "
        "object store (a URL is sent instead when the task names one); the workers pull it "
        "from the driver's node."
    )
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
