"""Issue 16's before/after: one suite, one commit, the mechanisms off and on, task by task.

    .venv/bin/python benchmarks/before_after.py suites/humanevalfix --subset dev40 \\
        --out /work/evals/dev40-ba --attempts 4 --until-pass
    .venv/bin/python benchmarks/before_after.py suites/humanevalfix --subset dev40 \\
        --out /work/evals/dev40-ba --report [--localization before.json after.json]

Both columns run `pullsmith eval run` from this checkout, in chunks of `--chunk` tasks (2): chunk
1 before, chunk 1 after, chunk 2 after, chunk 2 before, ... (the order alternates so neither
column always runs on a warmer machine), each with `--resume` into OUT/before or OUT/after,
so a run that is stopped goes on where it was and the two columns always cover the same
tasks, give or take one chunk. The columns differ only in settings (a `pullsmith.toml` in
OUT/<column>-cwd, the directory each runs from):

- before: `localize`, `retry_account`, `shrink_diff`, `summary_from_diff` off,
  `speculative = "off"`, no CPU cap on test runs (`test_cpu_s = 0`), no per-test pytest
  timeout, every pytest plugin loaded (`pytest_skip_plugins = ""`): pullsmith as it was before
  issue 16's mechanisms;
- after: the defaults.

Both get the same time budget per task, every attempt counted (`--max-time`, 600 s by
default, as the issue's own comparison had).

Bubblewrap sandboxes started ahead have no switch and run in both columns.

`--report` prints the table over the tasks both columns finished: resolved, median wall time
per task, median changed lines of the resolved tasks against the reference fix's (the same
tasks), the model's generation speed (llama.cpp's timings in the server logs kept per chunk),
and, given `benchmarks/localization.py --json` of each column, how often the bug's file and
function were in the first message; then the total wall time and one row per task (resolved or
not, the attempt chosen, its wall time).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attempt_time import server_timings  # noqa: E402

from pullsmith.eval.harness import TaskRecord, load_records  # noqa: E402
from pullsmith.eval.tasks import EvalTask, load_suite  # noqa: E402
from pullsmith.workspace import changed_lines  # noqa: E402

COLUMNS = ("before", "after")
BEFORE_SETTINGS = """\
# Issue 16's mechanisms off (benchmarks/before_after.py).
localize = false
retry_account = false
shrink_diff = false
summary_from_diff = false
speculative = "off"
test_cpu_s = 0
pytest_timeout_s = 0
pytest_skip_plugins = ""
"""
AFTER_SETTINGS = "# The defaults (benchmarks/before_after.py).\n"


def reference_lines(task: EvalTask) -> int | None:
    """The reference fix's changed lines against the task's snapshot (files it writes)."""
    if task.reference is None or not task.reference.files:
        return None
    total = 0
    for path, new in task.reference.files.items():
        old = task.files.get(path, b"").decode("utf-8", "replace").splitlines()
        lines = new.decode("utf-8", "replace").splitlines()
        total += changed_lines("\n".join(difflib.unified_diff(old, lines, lineterm="")))
    return total


def chosen_tasks(args: argparse.Namespace) -> tuple[Any, list[EvalTask]]:
    suite = load_suite(args.suite)
    ids = [t.id for t in suite.tasks]
    if args.subset:
        ids = suite.subset_ids(args.subset)
    if args.tasks:
        wanted = [t for part in args.tasks for t in part.split(",") if t]
        ids = [i for i in ids if i in wanted]
    if args.limit:
        ids = ids[: args.limit]
    by_id = {t.id: t for t in suite.tasks}
    return suite, [by_id[i] for i in ids]


def run(args: argparse.Namespace) -> int:
    _, tasks = chosen_tasks(args)
    out: Path = args.out.resolve()
    for column, text in zip(COLUMNS, (BEFORE_SETTINGS, AFTER_SETTINGS), strict=True):
        cwd = out / f"{column}-cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        budget = f"task_time_s = {args.max_time:g}\n"
        (cwd / "pullsmith.toml").write_text(text + budget, encoding="utf-8")
        (out / column / "server-logs").mkdir(parents=True, exist_ok=True)
    pullsmith = Path(sys.executable).parent / "pullsmith"
    chunks = [tasks[i : i + args.chunk] for i in range(0, len(tasks), args.chunk)]
    for number, chunk in enumerate(chunks, 1):
        order = COLUMNS if number % 2 else tuple(reversed(COLUMNS))
        for column in order:
            done = load_records(out / column / "records.jsonl")
            todo = [t.id for t in chunk if t.id not in done or done[t.id].retried_on_resume]
            if not todo:
                continue
            command = [str(pullsmith), "eval", "run", str(Path(args.suite).resolve())]
            command += ["--tasks", ",".join(todo), "--out", str(out / column), "--resume"]
            command += ["--attempts", str(args.attempts)]
            command += ["--until-pass"] if args.until_pass else []
            started = time.monotonic()
            print(f"chunk {number}/{len(chunks)} {column}: {', '.join(todo)}", flush=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PULLSMITH_")}
            code = subprocess.call(command, cwd=out / f"{column}-cwd", env=env)
            log = out / column / "model-server.log"
            if log.is_file():
                log.rename(out / column / "server-logs" / f"chunk{number:03d}.log")
            print(f"  exit {code}, {time.monotonic() - started:.0f} s", flush=True)
            if code != 0:  # an interrupted or failed run: stop here (--resume goes on)
                return code
    return 0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def generation_speed(column_dir: Path) -> float | None:
    tokens = ms = 0.0
    for log in sorted((column_dir / "server-logs").glob("*.log")):
        timing = server_timings(log)
        tokens += sum(timing["gen_tokens"])
        ms += sum(timing["gen_ms"])
    return tokens / ms * 1000 if ms else None


def localization(path: Path | None, ids: set[str]) -> tuple[str, str]:
    if path is None:
        return "—", "—"
    rows = [r for r in json.loads(path.read_text())["records"] if r["task_id"] in ids]
    rows = [r for r in rows if r.get("file_shown") is not None]
    if not rows:
        return "—", "—"
    files = sum(bool(r["file_shown"]) for r in rows)
    functions = sum(bool(r["function_shown"]) for r in rows)
    return f"{files}/{len(rows)}", f"{functions}/{len(rows)}"


def report(args: argparse.Namespace) -> int:
    _, tasks = chosen_tasks(args)
    out: Path = args.out.resolve()
    records: dict[str, dict[str, TaskRecord]] = {
        c: load_records(out / c / "records.jsonl") for c in COLUMNS
    }
    ids = [t.id for t in tasks if all(t.id in records[c] for c in COLUMNS)]
    by_id = {t.id: t for t in tasks}
    if not ids:
        print("No task is finished in both columns yet.", file=sys.stderr)
        return 1
    located = dict(zip(COLUMNS, args.localization or (None, None), strict=True))
    rows: dict[str, list[str]] = {}
    for column in COLUMNS:
        mine = [records[column][i] for i in ids]
        resolved = [r for r in mine if r.resolved]
        lines = [changed_lines(r.diff) for r in resolved]
        refs = [n for r in resolved if (n := reference_lines(by_id[r.task_id])) is not None]
        speed = generation_speed(out / column)
        file_hit, function_hit = localization(located[column], set(ids))
        rows[column] = [
            f"{len(resolved)} / {len(ids)}",
            f"{len(ids) - len(resolved)}",
            f"{median([r.wall_seconds for r in mine]):.0f} s",
            f"{median(lines):.0f}" if lines else "—",
            f"{median(refs):.0f}" if refs else "—",
            file_hit,
            function_hit,
            f"{speed:.1f}" if speed else "—",
        ]
    labels = [
        "resolved",
        "unresolved",
        "median wall per task",
        "median changed lines, resolved tasks",
        "median reference fix changed lines, same tasks",
        "bug's file in the first message",
        "bug's function in the first message",
        "generation tokens/s",
    ]
    print(f"tasks finished in both columns: {len(ids)} of {len(tasks)}\n")
    print("| | before | after |\n|---|---:|---:|")
    for n, label in enumerate(labels):
        print(f"| {label} | {rows['before'][n]} | {rows['after'][n]} |")
    walls = {c: median([records[c][i].wall_seconds for i in ids]) for c in COLUMNS}
    if walls["before"]:
        print(f"\nmedian wall after / before: {walls['after'] / walls['before']:.2f}x")
    totals = {c: sum(records[c][i].wall_seconds for i in ids) for c in COLUMNS}
    print(f"total wall: before {totals['before']:.0f} s, after {totals['after']:.0f} s")
    print("\n| task | before | after |\n|---|---|---|")
    for i in ids:
        print(f"| {i} | {task_cell(records['before'][i])} | {task_cell(records['after'][i])} |")
    return 0


def task_cell(record: TaskRecord) -> str:
    """One task's outcome in a column: resolved or not, the attempt chosen of those that ran,
    the wall time and, unresolved, how the chosen attempt ended."""
    mark = "resolved" if record.resolved else "unresolved"
    ran = len(record.attempt_results) or record.attempts
    how = f"attempt {record.attempt} of {ran} chosen" if record.resolved else f"{ran} attempts"
    why = "" if record.resolved else f", {record.exit_reason or record.status}"
    return f"{mark} ({how}, {record.wall_seconds:.0f} s{why})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subset")
    parser.add_argument("--tasks", action="append")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--chunk", type=int, default=2)
    parser.add_argument("--max-time", type=float, default=600.0)
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--until-pass", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--localization", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    return report(args) if args.report else run(args)


if __name__ == "__main__":
    sys.exit(main())
