"""Replay direct repair's recorded "lines" replies through today's reader, with real tests.

    PYTHONPATH=src .venv/bin/python benchmarks/repair_replay.py suites/pypi-bugs \
        benchmarks/results/runs/pypi-bugs-dev12-lines/repair-tries.jsonl
    (or the run logs themselves: ~/.local/share/pullsmith/runs/eval-*/events.jsonl)

A change to how a lines reply is read (agent/repair.py `lines_edit_in`) can be measured without
the model: the replies are in the run logs (`repair.tried` keeps them). For each lines try in
the given task logs, the task's repository is built afresh from the suite, the function is
taken from it as the try saw it, the reply is read by the code on PYTHONPATH, and what it gives
is written in with `replace_function` and tested with the run's own test command (its
`tests.ran` before the agent), outside the sandbox, then put back. It prints each try's
recorded outcome beside the replayed one, and the totals. Attempt logs (`…-N/`) are skipped:
the task's log holds their events too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from pullsmith.agent.failures import function_source
from pullsmith.agent.repair import RepairCandidate, _normalized, lines_edit_in
from pullsmith.eval.snapshot import materialize
from pullsmith.eval.tasks import load_suite
from pullsmith.tools.replace_function import ReplaceFunctionError, replace_function
from pullsmith.tools.search_replace import SearchReplaceError

_RUN = re.compile(r"^eval-(.+)-[0-9a-f]{6}$")
_CLIPPED = re.compile(r"\[\.\.\. [\d,]+ characters cut \.\.\.\]")


def tries_in(log: Path) -> list[tuple[str, list[dict], str | None]]:
    """Per run in `log`: the task id, its lines tries, and its first test command. `log` is a
    task's events.jsonl, or a bundle of such events with a `task_id` each (as kept under
    benchmarks/results/runs/)."""
    runs: dict[str, tuple[list[dict], list[str]]] = {}
    found = _RUN.match(log.parent.name)
    for line in log.read_text().splitlines():
        event = json.loads(line)
        task_id = event.get("task_id", "") if found is None else found.group(1)
        if found is None and "run" not in event:
            continue  # an events.jsonl that is not a task's (an attempt's own)
        tries, commands = runs.setdefault(task_id, ([], []))
        data = event.get("data", {})
        if event.get("type") == "tests.ran":
            commands.append(data.get("command"))
        stopped = data.get("outcome") == "stopped"  # cut off: no reply to read
        if event.get("type") == "repair.tried" and data.get("form") == "lines" and not stopped:
            tries.append(data)
    return [(task, tries, (commands or [None])[0]) for task, (tries, commands) in runs.items()]


def replay(repo: Path, one: dict, command: str, timeout_s: float) -> str:
    if _CLIPPED.search(one.get("reply", "")):
        return "clipped"  # the log keeps REPAIR_REPLY_CHARS of a reply: not replayable
    path = repo / one["path"]
    found = function_source(path, one["function"])
    if found is None:
        return "no such function"
    start, end, source = found
    candidate = RepairCandidate(one["path"], one["function"], start, end, source, 1, "lines")
    try:
        text = lines_edit_in(one.get("reply", ""), candidate)
    except SearchReplaceError:
        return "not applied"
    if text is None:
        return "no definition"
    if _normalized(text) == _normalized(source):
        return "unchanged"
    original = path.read_bytes()
    try:
        replace_function(path, one["function"], text, shown=one["path"])
    except ReplaceFunctionError:
        return "not applied"
    try:
        done = subprocess.run(
            command,
            shell=True,
            cwd=repo,
            capture_output=True,
            timeout=timeout_s,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
        return "passed" if done.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        return "failed"
    finally:
        path.write_bytes(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    suite = load_suite(args.suite)
    by_id = {task.safe_id: task for task in suite.tasks}
    changes: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory() as scratch:
        runs = [run for log in sorted(args.logs) for run in tries_in(log)]
        for task_id, tries, command in runs:
            task = by_id.get(task_id)
            if task is None or not tries or not command:
                continue
            repo = Path(scratch) / task.safe_id
            if not repo.exists():
                materialize(task, repo, Path(scratch) / "clones")
            for one in tries:
                now = replay(repo, one, command, args.timeout)
                was = one.get("outcome", "")
                changes[(was, now)] += 1
                mark = "" if was == now else "   <- changed"
                print(
                    f"{task_id:14} {one['function']:28} attempt {one.get('attempt', 1)} "
                    f"ask {one.get('sample', 1)}: {was:12} -> {now}{mark}"
                )
    total = sum(changes.values())
    print(f"\nlines tries replayed: {total}")
    for (was, now), count in sorted(changes.items()):
        print(f"  {was:12} -> {now:12} {count}")
    passed_before = sum(n for (was, _), n in changes.items() if was == "passed")
    passed_now = sum(n for (_, now), n in changes.items() if now == "passed")
    print(f"passed: {passed_before} recorded, {passed_now} replayed")


if __name__ == "__main__":
    main()
