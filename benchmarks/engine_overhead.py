"""What the engine itself costs per task, and eval throughput with one and two worker processes.

    .venv/bin/python benchmarks/engine_overhead.py [--runs 30] [--rounds 3] [--tasks 6]
        [--bundled-wall SECONDS]

1. Overhead per task. One real run of the example repository (examples/inventory) is recorded
   with a scripted model (a whole-file rewrite that fixes inventory/export.py, then `finish`).
   That run is then replayed `--runs` times (`Settings.model = "replay:<its run dir>"`) through
   `run_task`, each time on a fresh copy of the repository, after one untimed warm-up replay.
   From each replay's events.jsonl: wall = task.started -> task.finished, model = the sum of
   model.reply `seconds`, sandbox = the sum of command.finished and tests.ran `seconds`, and
   overhead = wall - model - sandbox. The same is computed with the wall time the caller sees
   (around the `run_task` call: engine and executor start-up and shut-down, repository lookup,
   loading the replay). Printed: medians in milliseconds, the overhead's share of the replay's
   own wall time, and its share of a typical task on the bundled model, whose wall time comes
   from `--bundled-wall` (default: the median wall per single-attempt task in
   benchmarks/results/dev40-issue6.md, the smallest figure there, so the strictest). Goal:
   <= 3%. Also printed: the largest gaps between consecutive events outside commands and test
   runs, i.e. where the overhead goes.
2. Eval throughput. A suite of `--tasks` one-file tasks (the pattern of
   tests/eval/eval_helpers.py) is made in a temporary directory and evaluated once with a
   scripted model object (threads of this process). Then the same suite is run with
   `settings.model = "replay:<that eval's out dir>"`, so each task replays its own recording,
   through `run_suite` with `EvalOptions(workers=1)` and `workers=2` (the ProcessExecutor: real
   worker processes, whose start-up is counted), `--rounds` times each, alternating which goes
   first. Printed: median tasks per second for each, the ratio workers 2 / workers 1 (also
   counted from the first task's start, past the workers' start-up), and whether every
   replayed eval resolved the same tasks as the recording.

Everything lives in a temporary XDG_DATA_HOME / XDG_CONFIG_HOME (removed at the end unless
`--keep`), so the user's runs, worktrees and configuration are untouched. The sandbox is bwrap
where it works here, else none; the output says which. The output is Markdown.
"""

from __future__ import annotations

import os
import tempfile

# Before pullsmith is imported: its settings read these. Worker processes (spawned) inherit
# them, and re-import this file without making a second home.
if "PULLSMITH_BENCH_HOME" not in os.environ:
    os.environ["PULLSMITH_BENCH_HOME"] = tempfile.mkdtemp(prefix="pullsmith-overhead-")
    _home = os.environ["PULLSMITH_BENCH_HOME"]
    os.environ["XDG_DATA_HOME"] = os.path.join(_home, "data")
    os.environ["XDG_CONFIG_HOME"] = os.path.join(_home, "config")
    for _var in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "PULLSMITH_MODEL",
        "PULLSMITH_SANDBOX",
        "PULLSMITH_DATA_DIR",
        "PULLSMITH_TEST_COMMAND",
        "PULLSMITH_PROTOCOL",
        "PULLSMITH_EDIT_FORMS",
        "PULLSMITH_LOCAL_SERVER_URL",
    ):
        os.environ.pop(_var, None)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from pullsmith.config import Settings, load_settings  # noqa: E402
from pullsmith.engine import run_task  # noqa: E402
from pullsmith.eval.harness import EvalOptions, run_suite  # noqa: E402
from pullsmith.eval.tasks import load_suite  # noqa: E402
from pullsmith.events import read_events  # noqa: E402
from pullsmith.models.base import Message, Reply, Usage  # noqa: E402
from pullsmith.sandbox import bwrap_available  # noqa: E402
from pullsmith.task import Task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "inventory"
DEV40 = ROOT / "benchmarks" / "results" / "dev40-issue6.md"
# The row of dev40-issue6.md that is a plain task on the bundled model today.
DEV40_ROW = "single attempt, after"
GOAL_SHARE = 0.03
INSTRUCTION = "The CSV export drops the last row; fix it."
# Event pairs that bracket a sandboxed command or a test run (their time is the sandbox's).
INSIDE = {("command.started", "command.finished"), ("tests.started", "tests.ran")}
FINISH = '```bash\nfinish "to_csv exports every row"\n```'


def git(*args: str, cwd: Path) -> str:
    identity = ["-c", "user.name=pullsmith bench", "-c", "user.email=bench@pullsmith.invalid"]
    return subprocess.run(
        ["git", *identity, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


class ScriptedModel:
    """Answers with `replies` in order (for the recorded run of the example repository)."""

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


class PlanModel:
    """Answers each conversation from the plan whose key is in its first user message."""

    name = "plan"

    def __init__(self, plans: dict[str, list[str]]) -> None:
        self.plans = plans
        self.lock = threading.Lock()

    def complete(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> Reply:
        first = next(str(m["content"]) for m in messages if m["role"] == "user")
        turn = sum(1 for m in messages if m["role"] == "assistant")
        text = '```bash\nfinish "nothing to do"\n```'
        for key, replies in self.plans.items():
            if key in first:
                text = replies[min(turn, len(replies) - 1)]
                break
        return Reply(
            text=text, usage=Usage(prompt_tokens=100, completion_tokens=20), finish_reason="stop"
        )

    def close(self) -> None:
        pass


# --- part 1: overhead per task ----------------------------------------------------------


def make_example_repo(where: Path) -> Path:
    repo = where / "inventory"
    shutil.copytree(EXAMPLE, repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def rewrite_reply(repo: Path) -> str:
    text = (repo / "inventory" / "export.py").read_text(encoding="utf-8")
    old = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
    new = "    for row in rows:\n        lines.append(format_row(row))\n"
    if old not in text:
        raise SystemExit(f"{EXAMPLE / 'inventory' / 'export.py'} no longer holds the known bug")
    return (
        "The loop skips the last row.\n```bash\ncat > inventory/export.py <<'EOF'\n"
        + text.replace(old, new)
        + "EOF\n```"
    )


@dataclasses.dataclass
class RunTimes:
    wall: float  # task.started -> task.finished
    caller: float  # around run_task
    model: float
    commands: float
    tests: float
    commands_n: int
    tests_n: int
    # Time between consecutive events outside a command or a test run, by "a → b".
    gaps: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def sandbox(self) -> float:
        return self.commands + self.tests

    @property
    def overhead(self) -> float:
        return self.wall - self.model - self.sandbox

    @property
    def caller_overhead(self) -> float:
        return self.caller - self.model - self.sandbox


def times_of(run_dir: Path, caller: float) -> RunTimes:
    events = read_events(run_dir / "events.jsonl")
    started = next(e.ts for e in events if e.type == "task.started")
    finished = [e.ts for e in events if e.type == "task.finished"][-1]
    commands = [e.data["seconds"] for e in events if e.type == "command.finished"]
    tests = [e.data["seconds"] for e in events if e.type == "tests.ran"]
    gaps: dict[str, float] = {}
    for before, after in zip(events, events[1:], strict=False):
        if (before.type, after.type) in INSIDE:
            continue
        key = f"{before.type} → {after.type}"
        gaps[key] = gaps.get(key, 0.0) + after.ts - before.ts
    return RunTimes(
        wall=finished - started,
        caller=caller,
        model=sum(e.data["seconds"] for e in events if e.type == "model.reply"),
        commands=sum(commands),
        tests=sum(tests),
        commands_n=len(commands),
        tests_n=len(tests),
        gaps=gaps,
    )


def timed_run(task: Task, settings: Settings, model: Any = None) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run_task(task, settings, model=model)
    return result, time.perf_counter() - started


def measure_overhead(settings: Settings, work: Path, runs: int) -> tuple[list[RunTimes], str]:
    template = make_example_repo(work / "template")
    recorded, _ = timed_run(
        Task(instruction=INSTRUCTION, repo=str(make_example_repo(work / "recorded"))),
        settings,
        ScriptedModel([rewrite_reply(template), FINISH]),
    )
    if recorded.status != "passed":
        raise SystemExit(f"the recorded run did not pass: {recorded.status} {recorded.error}")
    replay = dataclasses.replace(settings, model=f"replay:{recorded.run_dir}")
    samples: list[RunTimes] = []
    for n in range(runs + 1):  # run 0 is the warm-up
        repo = work / f"copy-{n}"
        shutil.copytree(template, repo)
        result, caller = timed_run(Task(instruction=INSTRUCTION, repo=str(repo)), replay)
        if result.status != "passed" or result.diff != recorded.diff:
            raise SystemExit(
                f"replay {n} did not reproduce the recorded run: {result.status} {result.error}"
            )
        if n:
            samples.append(times_of(Path(result.run_dir), caller))
        shutil.rmtree(repo)
    return samples, str(recorded.run_dir)


def bundled_wall(path: Path) -> tuple[float | None, str]:
    """The median wall per task of the single-attempt row of dev40-issue6.md, and its row."""
    if not path.is_file():
        return None, f"{path} not found"
    header: list[str] | None = None
    walls: dict[str, float] = {}  # row label -> median wall seconds
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if any("median wall" in c for c in cells):
                header = cells
            continue
        column = next(i for i, c in enumerate(header) if "median wall" in c)
        match = re.fullmatch(r"([\d.]+)\s*s", cells[column]) if column < len(cells) else None
        if match:
            walls[cells[0]] = float(match.group(1))
    label = next((k for k in walls if k.startswith(DEV40_ROW)), None)
    if label is None:
        return None, f'no "{DEV40_ROW}" row with a median wall time in {path}'
    smallest = " (the smallest there)" if walls[label] == min(walls.values()) else ""
    return walls[label], f'the median wall per task of its "{label}" row{smallest}'


# --- part 2: eval throughput ------------------------------------------------------------

# (module, function, buggy body, fixed body, visible test, hidden test). The fixes differ in
# size from the bugs (see tests/eval/eval_helpers.py: a same-size edit within a second of the
# worktree's creation can be missed by Workspace.diff).
SUITE_TASKS = [
    ("adder", "add(a, b)", "a - b", "a + b", "add(2, 2) == 4", "add(2, 3) == 5"),
    ("multiplier", "mul(a, b)", "a + b", "a * b", "mul(2, 3) == 6", "mul(3, 4) == 12"),
    ("subtractor", "sub(a, b)", "b - a", "a - b", "sub(5, 3) == 2", "sub(10, 4) == 6"),
    ("bigger", "big(a, b)", "min(a, b)", "max(a, b)", "big(1, 2) == 2", "big(7, 3) == 7"),
    ("negator", "negate(x)", "x", "-x", "negate(3) == -3", "negate(-2) == 2"),
    ("squarer", "square(x)", "x * 2", "x * x", "square(3) == 9", "square(4) == 16"),
    ("halver", "half(x)", "x // 3", "x / 2", "half(4) == 2", "half(5) == 2.5"),
    ("incrementer", "inc(x)", "x - 1", "x + 1", "inc(1) == 2", "inc(-1) == 0"),
]


def heredoc(path: str, text: str) -> str:
    return f"```bash\ncat > {path} <<'EOF'\n{text}EOF\n```"


def make_suite(root: Path, count: int) -> tuple[Path, dict[str, list[str]]]:
    suite = root / "bench-suite"
    plans: dict[str, list[str]] = {}
    for module, signature, bug, fix, visible, hidden in SUITE_TASKS[:count]:
        name = signature.split("(")[0]
        task = suite / module
        (task / "repo").mkdir(parents=True)
        (task / "hidden").mkdir()
        (task / "repo" / f"{module}.py").write_text(f"def {signature}:\n    return {bug}\n")
        fixed = f"def {signature}:\n    return {fix}  # fixed\n"
        (task / "repo" / f"test_{module}.py").write_text(
            f"from {module} import {name}\n\nassert {visible}\n"
        )
        (task / "hidden" / f"hidden_test_{module}.py").write_text(
            f"from {module} import {name}\n\nassert {hidden}\nassert {visible}\n"
        )
        (task / "task.toml").write_text(
            f'statement = "{name}() in {module}.py is wrong; fix it. Tests: test_{module}.py."\n'
            'repo = "repo"\n'
            f'test_command = "python test_{module}.py"\n'
            "[tests]\n"
            'files_dir = "hidden"\n'
            f'fail_to_pass = ["python hidden_test_{module}.py"]\n'
            f'pass_to_pass = ["python test_{module}.py"]\n'
            "timeout_s = 20\n"
        )
        plans[f"{module}.py"] = [heredoc(f"{module}.py", fixed), '```bash\nfinish "fixed"\n```']
    return suite, plans


@dataclasses.dataclass
class Throughput:
    rates: dict[int, list[float]]  # tasks per second of each eval, by worker count
    first_start: dict[int, list[float]]  # seconds from run_suite to its first task.started
    expected: dict[str, bool]  # the recording's resolved, by task
    mismatches: list[str]


def measure_throughput(settings: Settings, work: Path, count: int, rounds: int) -> Throughput:
    suite_dir, plans = make_suite(work, count)
    suite = load_suite(suite_dir)
    recorded_out = work / "eval-recorded"
    recorded = run_suite(
        suite, suite.tasks, settings, EvalOptions(out=recorded_out), model=PlanModel(plans)
    )
    expected = {r.task_id: r.resolved for r in recorded.records}
    replay = dataclasses.replace(settings, model=f"replay:{recorded_out}")
    out = Throughput({1: [], 2: []}, {1: [], 2: []}, expected, [])
    for r in range(rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            eval_out = work / f"eval-round{r}-workers{workers}"
            wall_start, started = time.time(), time.perf_counter()
            run = run_suite(suite, suite.tasks, replay, EvalOptions(out=eval_out, workers=workers))
            elapsed = time.perf_counter() - started
            out.rates[workers].append(len(suite.tasks) / elapsed)
            firsts = [
                read_events(Path(rec.run_log))[0].ts
                for rec in run.records
                if rec.run_log and Path(rec.run_log).is_file()
            ]
            out.first_start[workers].append(min(firsts, default=wall_start) - wall_start)
            got = {rec.task_id: rec.resolved for rec in run.records}
            errors = [rec.error for rec in run.records if rec.error]
            if got != expected or errors:
                out.mismatches.append(f"round {r}, workers {workers}: {got}; errors {errors}")
            shutil.rmtree(eval_out, ignore_errors=True)
    return out


# --- report -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def commit() -> str:
    try:
        return git("rev-parse", "--short", "HEAD", cwd=ROOT).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="replays of the example task")
    parser.add_argument("--rounds", type=int, default=3, help="eval runs per worker count")
    parser.add_argument("--tasks", type=int, default=6, help=f"suite size (<= {len(SUITE_TASKS)})")
    parser.add_argument(
        "--bundled-wall",
        type=float,
        default=None,
        help="wall seconds of a typical bundled-model task (default: from dev40-issue6.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    if args.runs < 1 or args.rounds < 1 or not 1 <= args.tasks <= len(SUITE_TASKS):
        parser.error(f"--runs and --rounds must be >= 1, --tasks 1..{len(SUITE_TASKS)}")
    home = Path(os.environ["PULLSMITH_BENCH_HOME"])
    if args.bundled_wall is not None:
        typical, source = args.bundled_wall, "given with --bundled-wall"
    else:
        found, source = bundled_wall(DEV40)
        if found is None:
            raise SystemExit(f"no bundled-model wall time: {source}; pass --bundled-wall")
        typical, source = found, f"{DEV40.relative_to(ROOT)}: {source}"
    why_not = bwrap_available()
    sandbox = "bwrap" if why_not is None else "none"
    settings = load_settings({"sandbox": sandbox}, cwd=home)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        samples, recorded_dir = measure_overhead(settings, home / "overhead", args.runs)
        evals = measure_throughput(settings, home / "throughput", args.tasks, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    report(args, samples, evals, typical, source, sandbox, why_not, load_before, started)
    if args.keep:
        print(f"\nKept: {home} (the recorded run: {recorded_dir}).")


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(
    args: argparse.Namespace,
    samples: list[RunTimes],
    evals: Throughput,
    typical: float,
    source: str,
    sandbox: str,
    why_not: str | None,
    load_before: float,
    started: float,
) -> None:
    command = shlex.join([".venv/bin/python", "benchmarks/engine_overhead.py", *sys.argv[1:]])
    print("# Engine overhead per task, and eval throughput with 1 vs 2 worker processes\n")
    print(f"    {command}\n")
    print(
        f"Commit {commit()}, {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; Python "
        f"{platform.python_version()}; sandbox **{sandbox}**"
        + (f" (bwrap unavailable: {why_not})" if why_not else "")
        + f"; {time.monotonic() - started:.0f} s in all."
    )
    first = samples[0]
    print(
        f"\n## 1. Overhead per task: the example repository, replayed {len(samples)} times\n\n"
        "One recorded run (a whole-file rewrite of inventory/export.py, then `finish`) replayed "
        "with `replay:<its run dir>` through `run_task`, each time on a fresh copy of the "
        f"repository, after one untimed warm-up; each run made {first.commands_n} sandboxed "
        f"command(s) and {first.tests_n} test runs. overhead = wall − model − (sandbox "
        "commands + test runs), per run; medians over the runs, in ms:\n"
    )
    print("| wall measured | wall | model | sandbox commands | test runs | overhead | / wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [
        ("task.started → task.finished", "wall", "overhead"),
        ("around `run_task` (caller)", "caller", "caller_overhead"),
    ]
    for label, wall_attr, over_attr in rows:
        wall = med([getattr(s, wall_attr) for s in samples])
        over = med([getattr(s, over_attr) for s in samples])
        print(
            f"| {label} | {ms(wall)} | {ms(med([s.model for s in samples]))} | "
            f"{ms(med([s.commands for s in samples]))} | {ms(med([s.tests for s in samples]))} | "
            f"**{ms(over)}** | {over / wall:.1%} |"
        )
    over_ms = sorted(s.overhead * 1000 for s in samples)
    print(
        f"\nOverhead per run (task.started → task.finished): min {over_ms[0]:.0f}, median "
        f"{med(over_ms):.0f}, max {over_ms[-1]:.0f} ms."
    )
    print(f"\nTypical bundled-model task: **{typical:g} s** of wall time ({source}).\n")
    print("| wall measured | median overhead | share of a bundled-model task | goal ≤ 3% |")
    print("|---|---:|---:|:---:|")
    for label, _, over_attr in rows:
        over = med([getattr(s, over_attr) for s in samples])
        share = over / typical
        verdict = "met" if share <= GOAL_SHARE else "**not met**"
        print(f"| {label} | {ms(over)} ms | {share:.2%} | {verdict} |")
    keys = sorted({k for s in samples for k in s.gaps})
    gaps = {k: med([s.gaps.get(k, 0.0) for s in samples]) for k in keys}
    top = sorted(gaps.items(), key=lambda item: -item[1])[:6]
    print(
        "\nWhere it goes: the largest gaps between consecutive events outside commands and "
        "test runs (median ms per run; the model's gaps are the agent's own work, a replay "
        "answers at once):\n"
    )
    print("| between | ms |")
    print("|---|---:|")
    for key, seconds in top:
        print(f"| {key} | {seconds * 1000:.1f} |")
    rest = med([sum(s.gaps.values()) for s in samples]) - sum(v for _, v in top)
    print(f"| everything else | {max(rest, 0.0) * 1000:.1f} |")

    r1, r2 = med(evals.rates[1]), med(evals.rates[2])
    count = len(evals.expected)
    print(
        f"\n## 2. Eval throughput: {count} tasks replayed, `--workers 1` vs `--workers 2`\n\n"
        f"The suite was evaluated once with a scripted model object ({sum(evals.expected.values())} "
        f"of {count} resolved), then replayed (`replay:<that eval's out dir>`) through "
        "`run_suite` on the ProcessExecutor, "
        f"{args.rounds} round(s) per worker count, alternating which goes first. The time counts "
        "everything `run_suite` does: spawning the workers, each task's repository, run and "
        "hidden-test scoring, the reports.\n"
    )
    print(
        "| workers | tasks / s (median) | per round | first task started after | "
        "tasks / s after that |"
    )
    print("|---:|---:|---|---:|---:|")
    steady: dict[int, float] = {}
    for workers, rate in ((1, r1), (2, r2)):
        rounds = ", ".join(f"{x:.2f}" for x in evals.rates[workers])
        after = [
            count / (count / rate_ - first)
            for rate_, first in zip(evals.rates[workers], evals.first_start[workers], strict=True)
        ]
        steady[workers] = med(after)
        print(
            f"| {workers} | {rate:.2f} | {rounds} | {med(evals.first_start[workers]):.2f} s | "
            f"{steady[workers]:.2f} |"
        )
    print(
        f"\nThroughput ratio workers 2 / workers 1: **{r2 / r1:.2f}x** (counting from the first "
        f"task's start, past the workers' start-up: {steady[2] / steady[1]:.2f}x).\n"
    )
    same = "**yes**" if not evals.mismatches else "**no**: " + "; ".join(evals.mismatches)
    print(f"Every replayed eval resolved the same tasks as the recording, without errors: {same}.")


if __name__ == "__main__":
    main()
