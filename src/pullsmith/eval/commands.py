"""`pullsmith eval`: run a suite, check its scorer, rebuild a report, compare two runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pullsmith.cli_options import (
    attempt_options,
    compact_option,
    executor_option,
    max_cost_option,
    max_time_option,
    model_options,
    settings_from_flags,
    stack_options,
)
from pullsmith.errors import UserError
from pullsmith.eval.harness import (
    RECORDS_FILE,
    RUN_FILE,
    EvalOptions,
    Listener,
    TaskRecord,
    load_records,
    run_suite,
)
from pullsmith.eval.report import (
    REPORT_JSON,
    REPORT_MD,
    build_report,
    compare,
    headline,
    load_report,
    render_compare_markdown,
    write_reports,
)
from pullsmith.eval.scoring import CheckResult, check_suite
from pullsmith.eval.tasks import EvalTask, Suite, load_suite
from pullsmith.sandbox import SANDBOX_NAMES


def _split_ids(values: tuple[str, ...]) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def swebench_options(func: Any) -> Any:
    options = [
        click.option(
            "--swebench-repos",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="For SWE-bench instance files: a directory with a local clone of each "
            "repository, as DIR/owner__name (or DIR/owner/name, DIR/name).",
        ),
        click.option(
            "--swebench-test-cmd",
            default=None,
            help="For SWE-bench: how to run test ids; {tests} becomes the quoted ids "
            "(default: 'python -m pytest -q {tests}').",
        ),
        click.option(
            "--swebench-setup", default=None, help="For SWE-bench: a setup command per task."
        ),
    ]
    return stack_options(func, options)


def selection_options(func: Any) -> Any:
    options = [
        click.option(
            "--tasks",
            "task_ids",
            multiple=True,
            help="Only these task ids (comma-separated, or repeat the option).",
        ),
        click.option("--subset", default=None, help="A named subset of the suite, e.g. dev40."),
        click.option("--limit", type=int, default=None, help="Only the first K chosen tasks."),
    ]
    return stack_options(func, options)


def _load(
    suite_path: str,
    swebench_repos: Path | None,
    swebench_test_cmd: str | None,
    swebench_setup: str | None,
    test_timeout: float | None = None,
) -> Suite:
    return load_suite(
        suite_path,
        swebench_repos,
        test_cmd=swebench_test_cmd,
        setup=swebench_setup,
        timeout_s=test_timeout,
    )


def _select(
    suite: Suite, task_ids: tuple[str, ...], subset: str | None, limit: int | None
) -> list[EvalTask]:
    tasks = suite.select(ids=_split_ids(task_ids), subset=subset, limit=limit)
    if not tasks:
        raise UserError(f"no tasks of suite {suite.name} were chosen; check --tasks and --subset.")
    return tasks


@click.group("eval")
def eval_group() -> None:
    """Measure resolve rate, time and tokens on task suites (hidden tests decide)."""


# --- run ----------------------------------------------------------------------------------


class ProgressView(Listener):
    """A progress bar with the running resolve rate, a line per task in flight, one per result."""

    def __init__(self, console: Console, total: int, done: int, resolved: int) -> None:
        self.console = console
        self.resolved = resolved
        self.done = done
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.bar = self.progress.add_task("tasks", total=total, completed=done, rate=self._rate())
        self.rows: dict[str, TaskID] = {}
        self.lock = threading.Lock()

    def _rate(self) -> str:
        if not self.done:
            return "resolved –"
        return f"resolved {self.resolved}/{self.done} ({100 * self.resolved / self.done:.0f}%)"

    def task_started(self, task_id: str) -> None:
        with self.lock:
            self.rows[task_id] = self.progress.add_task(
                f"  {task_id}: starting", total=None, rate=""
            )

    def task_step(self, task_id: str, step: str) -> None:
        with self.lock:
            row = self.rows.get(task_id)
            if row is not None:
                self.progress.update(row, description=f"  {escape(task_id)}: {escape(step)}")

    def task_finished(self, record: TaskRecord) -> None:
        with self.lock:
            row = self.rows.pop(record.task_id, None)
            if row is not None:
                self.progress.remove_task(row)
            self.done += 1
            self.resolved += int(record.resolved)
            self.progress.update(self.bar, advance=1, rate=self._rate())
        mark = "[green]✓[/]" if record.resolved else "[red]✗[/]"
        why = record.exit_reason or record.status
        if record.error_kind:
            why = f"[yellow]error ({record.error_kind})[/]: " + escape(
                (record.error or "").strip().splitlines()[0][:100] if record.error else ""
            )
        else:
            why = escape(why)
        self.console.print(
            f"{mark} {escape(record.task_id)} · {record.turns} turns · "
            f"{record.wall_seconds:.0f} s · {record.total_tokens:,} tokens · {why}"
        )


@eval_group.command("run")
@click.argument("suite_path", metavar="SUITE")
@model_options
@click.option("--sandbox", type=click.Choice(SANDBOX_NAMES), default=None, help="Sandbox.")
@click.option("--max-turns", type=int, default=None, help="Turn limit per task.")
@max_cost_option
@max_time_option
@compact_option
@click.option("--seed", type=int, default=None, help="Sampling seed, where the model takes one.")
@attempt_options
@click.option(
    "--workers",
    "--jobs",
    "workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes running tasks at once. With the bundled model they share one "
    "server with a slot each; on a 2-core machine more than one mostly queue at the model.",
)
@executor_option
@selection_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: <data dir>/evals/<suite>-<time>).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out; recorded tasks are skipped."
)
@click.option("--keep", is_flag=True, help="Keep each task's repository (with its branch).")
@click.option("--test-timeout", type=float, default=None, help="Seconds per hidden test command.")
@swebench_options
def run_command(
    suite_path: str,
    model: str | None,
    base_url: str | None,
    sandbox: str | None,
    protocol: str | None,
    edit_forms: str | None,
    max_turns: int | None,
    max_cost: float | None,
    task_time: float | None,
    compact: bool | None,
    seed: int | None,
    attempts: int,
    until_pass: bool,
    workers: int,
    executor: str | None,
    task_ids: tuple[str, ...],
    subset: str | None,
    limit: int | None,
    out: Path | None,
    resume: bool,
    keep: bool,
    test_timeout: float | None,
    swebench_repos: Path | None,
    swebench_test_cmd: str | None,
    swebench_setup: str | None,
) -> None:
    """Run pullsmith on every chosen task of SUITE and score it with the hidden tests.

    SUITE is a directory of task directories (task.toml each), a suite directory with a
    suite.toml, a JSONL file of tasks, or a SWE-bench instance file (with --swebench-repos).
    Each finished task is appended to OUT/records.jsonl; OUT/report.md and OUT/report.json
    hold the totals and a row per task.
    """
    settings = settings_from_flags(
        model=model,
        base_url=base_url,
        sandbox=sandbox,
        protocol=protocol,
        edit_forms=edit_forms,
        max_turns=max_turns,
        max_cost=max_cost,
        task_time_s=task_time,
        compact=compact,
        seed=seed,
        executor=executor,
    )
    suite = _load(suite_path, swebench_repos, swebench_test_cmd, swebench_setup, test_timeout)
    tasks = _select(suite, task_ids, subset, limit)
    if out is None:
        if resume:
            raise UserError("--resume needs --out with the directory of the run to continue.")
        out = settings.data_dir / "evals" / f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(highlight=False)
    existing = load_records(out / RECORDS_FILE) if resume else {}
    chosen = {task.id for task in tasks}
    done = [r for i, r in existing.items() if i in chosen and not r.retried_on_resume]
    console.print(
        f"[bold]pullsmith eval[/] · suite {escape(suite.name)} · {len(tasks)} task(s)"
        + (f", {len(done)} already done" if done else "")
        + f" · model {escape(settings.model_name)} · sandbox {settings.sandbox} · workers {workers}"
        + (
            f" · executor ray ({escape(settings.ray_address)})"
            if settings.executor == "ray"
            else ""
        )
    )
    console.print(f"results in {escape(str(out))}")
    view = ProgressView(console, len(tasks), len(done), sum(r.resolved for r in done))
    description = {
        "subset": subset,
        "limit": limit,
        "command": "pullsmith " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
    }
    opts = EvalOptions(
        out=out,
        workers=workers,
        attempts=attempts,
        until_pass=until_pass,
        resume=resume,
        keep=keep,
        test_timeout_s=test_timeout,
        description=description,
    )
    # `kill PID` (a run in the background ignores Ctrl-C) stops as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with view.progress:
            result = run_suite(suite, tasks, settings, opts, listener=view)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]; finished tasks are recorded in {escape(str(out))}; "
            f"continue with --resume --out {escape(str(out))}."
        )
        sys.exit(130)
    _print_totals(console, result.report, out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_totals(console: Console, report: dict[str, Any], out: Path) -> None:
    t = report["totals"]
    per, res = t["per_task"], t["per_resolved_task"]

    def num(value: float | None, unit: str = "") -> str:
        if value is None:
            return "–"
        return (f"{value:,.0f}" if value == int(value) or value >= 100 else f"{value:.1f}") + unit

    console.print(f"[bold]{headline(report)}[/]")
    console.print(
        f"median per task: {num(per['median_wall_seconds'], ' s')}, "
        f"{num(per['median_tokens'])} tokens, {num(per['median_turns'])} turns · per resolved "
        f"task: {num(res['median_wall_seconds'], ' s')}, {num(res['median_tokens'])} tokens"
    )
    cost = t.get("sum_cost_usd")
    console.print(
        "cost: unknown (no price for this model)" if cost is None else f"cost: ${cost:.4f} in all"
    )
    if report.get("pending"):
        console.print(f"[yellow]{len(report['pending'])} task(s) not yet run[/]")
    console.print(f"report: {escape(str(out / REPORT_MD))} · {escape(str(out / REPORT_JSON))}")


# --- check --------------------------------------------------------------------------------


@eval_group.command("check")
@click.argument("suite_path", metavar="SUITE")
@selection_options
@click.option("--sandbox", type=click.Choice(SANDBOX_NAMES), default=None, help="Sandbox.")
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Tasks checked at once (default: the number of CPUs).",
)
@click.option("--test-timeout", type=float, default=None, help="Seconds per hidden test command.")
@click.option("--json", "as_json", is_flag=True, help="Print every result as JSON.")
@swebench_options
def check_command(
    suite_path: str,
    task_ids: tuple[str, ...],
    subset: str | None,
    limit: int | None,
    sandbox: str | None,
    jobs: int | None,
    test_timeout: float | None,
    as_json: bool,
    swebench_repos: Path | None,
    swebench_test_cmd: str | None,
    swebench_setup: str | None,
) -> None:
    """Prove the scorer: each task's snapshot must fail its hidden tests, its reference pass.

    No model runs; the unchanged snapshot and the reference solution go through the same
    restore-and-score path as a run's results. Exits 1 when any task is off.
    """
    settings = settings_from_flags(sandbox=sandbox)
    suite = _load(suite_path, swebench_repos, swebench_test_cmd, swebench_setup, test_timeout)
    tasks = _select(suite, task_ids, subset, limit)
    console = Console(highlight=False, stderr=as_json)
    with Progress(
        SpinnerColumn(),
        TextColumn("checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("check", total=len(tasks))
        results = check_suite(
            tasks,
            settings,
            jobs=jobs or os.cpu_count() or 1,
            timeout_s=test_timeout,
            on_result=lambda _: progress.advance(bar),
        )
    if as_json:
        rows = [
            {
                "task_id": r.task_id,
                "ok": r.ok,
                "problem": r.problem,
                "base": r.base.to_dict(),
                "reference": r.reference.to_dict() if r.reference else None,
            }
            for r in results
        ]
        print(json.dumps(rows, indent=1))
    _print_check(console, suite, results)
    if not all(r.ok for r in results):
        sys.exit(1)


def _print_check(console: Console, suite: Suite, results: list[CheckResult]) -> None:
    n = len(results)
    failing = sum(not r.base.resolved for r in results)
    passing = sum(bool(r.reference and r.reference.resolved) for r in results)
    console.print(
        f"suite {escape(suite.name)}: unchanged snapshots failing {failing}/{n} · "
        f"reference solutions passing {passing}/{n}"
    )
    for r in results:
        if not r.ok:
            console.print(f"[red]✗[/] {escape(r.task_id)}: {escape(r.problem or '')}")
    if all(r.ok for r in results):
        console.print("[green]the scorer tells every reference from its snapshot.[/]")


# --- report and compare -------------------------------------------------------------------


@eval_group.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(out: Path) -> None:
    """Rebuild OUT/report.json and OUT/report.md from OUT/records.jsonl."""
    records = load_records(out / RECORDS_FILE)
    if not records:
        raise UserError(f"{out} holds no {RECORDS_FILE}; pass the --out of an eval run.")
    meta_path = out / RUN_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    report = build_report(meta, list(records.values()))
    write_reports(out, report)
    _print_totals(Console(highlight=False), report, out)


@eval_group.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--markdown", is_flag=True, help="Print the comparison as Markdown.")
def compare_command(a: str, b: str, markdown: bool) -> None:
    """Put two runs side by side task by task (A and B: report.json files or --out dirs)."""
    cmp = compare(load_report(a), load_report(b))
    if markdown:
        print(render_compare_markdown(cmp), end="")
        return
    console = Console(highlight=False)
    table = Table("task", "A", "B", "flip", "A s", "B s", "A tokens", "B tokens")
    mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
    for r in cmp["tasks"]:
        flip = {"fixed": "[green]fixed[/]", "broken": "[red]broken[/]"}.get(r["flip"], "")
        table.add_row(
            escape(r["task_id"]),
            mark[bool(r["a_resolved"])],
            mark[bool(r["b_resolved"])],
            flip,
            f"{r['a_wall_seconds']:.0f}",
            f"{r['b_wall_seconds']:.0f}",
            f"{r['a_tokens']:,}",
            f"{r['b_tokens']:,}",
        )
    console.print(table)
    console.print(f"on the {cmp['shared']} tasks both ran:")
    console.print(f"  A ({escape(str(cmp['a']['path']))}): {headline(cmp['a'])}")
    console.print(f"  B ({escape(str(cmp['b']['path']))}): {headline(cmp['b'])}")
    console.print(f"  fixed in B: {escape(', '.join(cmp['fixed']) or 'none')}")
    console.print(f"  broken in B: {escape(', '.join(cmp['broken']) or 'none')}")
    if cmp["only_a"] or cmp["only_b"]:
        console.print(f"  only in A: {len(cmp['only_a'])} · only in B: {len(cmp['only_b'])}")


# --- review -------------------------------------------------------------------------------


@eval_group.command("review")
@click.argument("suite_path", metavar="SUITE")
@click.option("--model", default=None, help="Model name (default: the bundled local model).")
@click.option("--base-url", default=None, help="OpenAI-compatible API base URL.")
@click.option("--sandbox", type=click.Choice(SANDBOX_NAMES), default=None, help="Sandbox.")
@click.option("--seed", type=int, default=None, help="Sampling seed, where the model takes one.")
@selection_options
@click.option(
    "--kinds",
    default="bug,clean",
    show_default=True,
    help="Which diffs: bug (the reverse of each fix), clean (a rename or reformat), or both.",
)
@click.option("--no-check", is_flag=True, help="Do not run demonstrations of P0/P1 findings.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: <data dir>/evals/review-<suite>-<time>).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out; recorded diffs are skipped."
)
def review_command(
    suite_path: str,
    model: str | None,
    base_url: str | None,
    sandbox: str | None,
    seed: int | None,
    task_ids: tuple[str, ...],
    subset: str | None,
    limit: int | None,
    kinds: str,
    no_check: bool,
    out: Path | None,
    resume: bool,
) -> None:
    """Measure `pullsmith review` on diffs with known answers built from SUITE's fixes.

    Bug diffs (the reverse of each canonical fix) should be flagged at the bug's lines; clean
    diffs (a local variable renamed, or the function reformatted) should get no P0/P1 finding.
    Writes OUT/results.jsonl (one line per review), OUT/report.md and OUT/report.json.
    """
    from pullsmith.eval import review_bench
    from pullsmith.models import open_model

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    unknown = [k for k in wanted if k not in review_bench.KINDS]
    if unknown or not wanted:
        raise UserError(f"--kinds takes bug, clean or both (comma-separated), not {kinds!r}.")
    settings = settings_from_flags(model=model, base_url=base_url, sandbox=sandbox, seed=seed)
    suite = _load(suite_path, None, None, None)
    tasks = _select(suite, task_ids, subset, limit)
    if out is None:
        if resume:
            raise UserError("--resume needs --out with the directory of the run to continue.")
        out = settings.data_dir / "evals" / f"review-{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(highlight=False, emoji=False)  # ids like "Python-6:bug" stay as written
    diffs = review_bench.build_diffs(tasks, settings, wanted)
    meta = {
        "suite": suite.name,
        "subset": subset,
        "limit": limit,
        "kinds": list(wanted),
        "check": not no_check,
        "model": settings.model_name,
        "sandbox": settings.sandbox,
        "command": "pullsmith " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None,
    }
    console.print(
        f"[bold]pullsmith eval review[/] · suite {escape(suite.name)} · {len(diffs)} diffs from "
        f"{len(tasks)} task(s) · model {escape(settings.model_name)} · sandbox {settings.sandbox}"
    )
    console.print(f"results in {escape(str(out))}")

    def show(row: dict[str, Any], number: int, total: int) -> None:
        if row.get("error"):
            console.print(
                f"[{number}/{total}] {escape(row['id'])}: [red]error[/] {escape(row['error'])}"
            )
            return
        hit = " · [green]hit[/]" if row["hit"] else ""
        changed = (
            f" · {row['behaviour_changed']} behaviour changed"
            if row.get("behaviour_changed")
            else ""
        )
        console.print(
            f"[{number}/{total}] {escape(row['id'])}: {row['verdict']} · {row['p0p1']} P0/P1"
            f"{hit} · {row['demonstrated']} demonstrated"
            f"{changed} · {row['seconds']:.0f} s"
        )

    signal.signal(signal.SIGTERM, _interrupt)
    model_ = open_model(settings, log_path=out / "model-server.log" if out else None)
    try:
        rows = review_bench.run_bench(
            diffs, model_, settings, out, resume=resume, check=not no_check, on_result=show
        )
    except KeyboardInterrupt:
        rows = review_bench.latest(review_bench.load_results(out / review_bench.RESULTS_FILE))
        review_bench.write_report(out, rows, meta)
        console.print(
            f"[yellow]interrupted[/]; finished reviews are recorded in {escape(str(out))}; "
            f"continue with --resume --out {escape(str(out))}."
        )
        sys.exit(130)
    finally:
        model_.close()
    report = review_bench.write_report(out, rows, meta)
    for name, f in report["models"].items():

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{100 * v:.0f}%"

        console.print(
            f"[bold]{escape(name)}[/]: recall {pct(f['recall'])} · location hit rate "
            f"{pct(f['location_hit_rate'])} · false positives per clean diff "
            f"{'–' if f['false_positives_per_clean_diff'] is None else format(f['false_positives_per_clean_diff'], '.2f')}"
            f" · P0/P1 demonstrated {pct(f['demonstrated_share'])}"
        )
    console.print(f"report: {escape(str(out / review_bench.REPORT_MD))}")
