"""Localization: does the first message show the function at fault? No model runs.

    .venv/bin/python benchmarks/localization.py SUITE [--tasks ID ...] [--limit N] [--json]
    .venv/bin/python benchmarks/localization.py tests/fixtures/localization

For each task of SUITE (any suite `pullsmith eval` reads) whose metadata names `bug_file` and
`bug_function` (`Class.method` for a method), it writes the task's repository, runs its setup
and its visible test command in the sandbox as an attempt does, builds the first message
exactly as an attempt would (`attempt.task_context`, `prompts_for` under the settings' model)
and reports: is the bug's file shown in the message's source section, is the bug's function
shown whole, the rank `localize.rank_functions` gives it, and the size of the first message
(characters, and tokens at 3 characters a token). Tasks without that metadata count for the
size only. Settings come from the usual places (`--sandbox` overrides the sandbox;
`PULLSMITH_LOCALIZE=false` measures the first message without the ranking).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pullsmith.agent.context import collect_agents_md, detect_test_command
from pullsmith.agent.failures import function_source
from pullsmith.agent.prompts import prompts_for
from pullsmith.attempt import find_faults, task_context
from pullsmith.config import Settings, load_settings
from pullsmith.eval.harness import _setup_snapshot
from pullsmith.eval.snapshot import init_repo, materialize
from pullsmith.eval.tasks import EvalTask, load_suite
from pullsmith.models.profiles import resolve_edit_forms, resolve_protocol
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.policy import agent_policy
from pullsmith.task import TestRun

SOURCES_HEADING = "Source the failing tests point to:"
CHARS_PER_TOKEN = 3


@dataclass
class TaskLocalization:
    task_id: str
    bug_file: str | None
    bug_function: str | None
    test_exit_code: int | None
    failing: int
    file_shown: bool | None
    function_shown: bool | None
    rank: int | None
    candidates: int
    first_message_chars: int
    system_chars: int
    error: str = ""


def _sources_section(message: str) -> str:
    return message.split(SOURCES_HEADING, 1)[1] if SOURCES_HEADING in message else ""


def measure_task(task: EvalTask, settings: Settings, work: Path) -> TaskLocalization:
    """One task: its repository, the tests before any change, the first message, the rank."""
    bug_file = task.metadata.get("bug_file")
    bug_function = task.metadata.get("bug_function")
    record = TaskLocalization(task.id, bug_file, bug_function, None, 0, None, None, None, 0, 0, 0)
    repo = work / task.safe_id / "repo"
    materialize(task, repo, settings.data_dir / "clones")
    error = _setup_snapshot(task, repo, settings)
    if error:
        record.error = error
        return record
    init_repo(repo)
    agents_md = collect_agents_md(repo)
    command = task.test_command or settings.test_command or detect_test_command(repo, agents_md)
    before: TestRun | None = None
    if command:
        sandbox = make_sandbox(settings.sandbox, repo, agent_policy(settings, task.hidden_paths))
        try:
            res = sandbox.run(command, timeout_s=settings.test_timeout_s)
        finally:
            sandbox.close()
        before = TestRun(
            "before", command, res.exit_code, res.output, res.duration_s, res.timed_out, 0
        )
        record.test_exit_code = res.exit_code
    findings = find_faults(repo, before) if before and not before.passed else None
    context = task_context(
        repo,
        task.statement,
        agents_md,
        command,
        before,
        localize=settings.localize,
        findings=findings,
    )
    protocol = resolve_protocol(settings.protocol, settings.model_name)
    edit_forms = resolve_edit_forms(settings.edit_forms, settings.model_name)
    system, first = prompts_for(protocol, context, edit_forms)
    record.first_message_chars = len(first)
    record.system_chars = len(system)
    record.failing = len(findings.report.failures) if findings else 0
    ranked = findings.ranked if findings else []
    record.candidates = len(ranked)
    if bug_file and bug_function:
        sources = _sources_section(first)
        record.file_shown = f"{bug_file}:\n" in sources or f"{bug_file} (" in sources
        found = function_source(repo / bug_file, bug_function)
        record.function_shown = bool(found) and found[2] in sources
        record.rank = next(
            (
                c.rank
                for c in ranked
                if (c.definition.path, c.definition.name) == (bug_file, bug_function)
            ),
            None,
        )
    return record


def summary(records: list[TaskLocalization]) -> dict[str, object]:
    """Hit rates over the tasks that name their bug; sizes over every task."""
    known = [r for r in records if r.bug_file and r.bug_function and not r.error]
    sizes = [r.first_message_chars for r in records if not r.error]
    ranks = [r.rank for r in known if r.rank is not None]

    def rate(values: list[bool]) -> str:
        return f"{sum(values)}/{len(values)}" if values else "-"

    median = statistics.median(sizes) if sizes else 0
    return {
        "tasks": len(records),
        "with_bug_metadata": len(known),
        "errors": sum(1 for r in records if r.error),
        "file_in_first_message": rate([bool(r.file_shown) for r in known]),
        "function_in_first_message": rate([bool(r.function_shown) for r in known]),
        "rank_1": rate([r.rank == 1 for r in known]),
        "rank_le_3": rate([r.rank is not None and r.rank <= 3 for r in known]),
        "rank_le_5": rate([r.rank is not None and r.rank <= 5 for r in known]),
        "median_rank": statistics.median(ranks) if ranks else None,
        "median_first_message_chars": median,
        "median_first_message_tokens_est": round(median / CHARS_PER_TOKEN),
        "max_first_message_chars": max(sizes) if sizes else 0,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="a suite directory or file, as `pullsmith eval run` takes")
    parser.add_argument("--tasks", nargs="*", help="only these task ids")
    parser.add_argument("--subset", help="a subset of the suite")
    parser.add_argument("--limit", type=int, help="at most this many tasks")
    parser.add_argument("--sandbox", help="the sandbox backend (default: the settings')")
    parser.add_argument("--json", action="store_true", help="print the records and summary")
    args = parser.parse_args(argv)
    overrides = {"sandbox": args.sandbox} if args.sandbox else {}
    settings = load_settings(overrides)
    suite = load_suite(args.suite)
    tasks = suite.select(args.tasks, args.subset, args.limit)
    records = []
    with tempfile.TemporaryDirectory(prefix="pullsmith-localization-") as tmp:
        for task in tasks:
            started = time.monotonic()
            record = measure_task(task, settings, Path(tmp))
            records.append(record)
            if not args.json:
                where = "-" if record.rank is None else record.rank
                print(
                    f"{task.id}: rank {where} of {record.candidates}, file shown "
                    f"{record.file_shown}, function shown {record.function_shown}, first "
                    f"message {record.first_message_chars} chars "
                    f"({time.monotonic() - started:.1f} s){' ' + record.error if record.error else ''}",
                    flush=True,
                )
    result = summary(records)
    if args.json:
        print(json.dumps({"records": [asdict(r) for r in records], "summary": result}, indent=1))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
