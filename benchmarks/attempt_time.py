"""Where an attempt's time goes, from a finished `pullsmith eval run` directory.

Reads OUT/records.jsonl, each record's run log (events.jsonl) and the model server's log
(llama.cpp's per-request `print_timing` lines), and prints, summed over every task and as a
share of the wall time of the attempts:

- the model: prompt processing and generation (from the server's timings when its log is
  there, else the replies' seconds as one figure), with tokens per second of each;
- pullsmith's own test runs, by phase (before, after each edit, the finish's check, after,
  the diff shrink);
- the model's commands in the sandbox (its own test runs among them);
- the rest (worktree, commit, setup, events, the loop itself).

    .venv/bin/python benchmarks/attempt_time.py /work/evals/dev40-compact

Nothing is run: the figures come from the recorded logs, so the breakdown is of that run on
that day's machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

TIMING = re.compile(
    r"(prompt eval time|\beval time)\s*=\s*([\d.]+) ms /\s*(\d+) tokens", re.IGNORECASE
)


def server_timings(log: Path) -> dict[str, list[float]]:
    """Milliseconds and tokens of every request's prompt processing and generation."""
    out: dict[str, list[float]] = {
        "prompt_ms": [],
        "prompt_tokens": [],
        "gen_ms": [],
        "gen_tokens": [],
    }
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        match = TIMING.search(line)
        if not match:
            continue
        kind = "prompt" if match.group(1).lower().startswith("prompt") else "gen"
        out[f"{kind}_ms"].append(float(match.group(2)))
        out[f"{kind}_tokens"].append(float(match.group(3)))
    return out


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def breakdown(out_dir: Path) -> dict[str, Any]:
    records = [
        json.loads(line)
        for line in (out_dir / "records.jsonl").read_text().splitlines()
        if line.strip()
    ]
    totals: dict[str, float] = defaultdict(float)
    per_task_wall = []
    for record in records:
        log = Path(record.get("run_log") or "")
        rows = events(log)
        if not rows:
            continue
        wall = float(record.get("wall_seconds") or 0.0)
        per_task_wall.append(wall)
        totals["wall"] += wall
        test_commands = set()
        for event in rows:
            data = event.get("data", {})
            kind = event.get("type")
            if kind == "model.reply":
                totals["model"] += float(data.get("seconds") or 0.0)
                totals["replies"] += 1
            elif kind == "context.compacted":
                totals["model"] += float(data.get("seconds") or 0.0)
            elif kind == "tests.ran":
                totals[f"tests:{data.get('phase')}"] += float(data.get("seconds") or 0.0)
                totals["test_runs"] += 1
                test_commands.add(data.get("command"))
            elif kind == "command.finished":
                seconds = float(data.get("seconds") or 0.0)
                totals["commands"] += seconds
                totals["command_count"] += 1
                if data.get("command") in test_commands or "pytest" in str(data.get("command")):
                    totals["commands:tests"] += seconds
        totals["score"] += float(record.get("score_seconds") or 0.0)
    timing = server_timings(out_dir / "model-server.log")
    return {
        "records": len(per_task_wall),
        "totals": dict(totals),
        "server": timing,
        "walls": per_task_wall,
    }


def render(figures: dict[str, Any]) -> str:
    t = figures["totals"]
    wall = t.get("wall", 0.0) or 1.0
    lines = [
        f"tasks: {figures['records']}, attempts' wall time: {t.get('wall', 0):.0f} s "
        f"(median per task {statistics.median(figures['walls']):.0f} s)"
        if figures["walls"]
        else "no run logs found"
    ]
    rows: list[tuple[str, float, str]] = []
    server = figures["server"]
    if server["prompt_ms"]:
        prompt_s, gen_s = sum(server["prompt_ms"]) / 1000, sum(server["gen_ms"]) / 1000
        rows.append(
            (
                "model: prompt processing",
                prompt_s,
                f"{sum(server['prompt_tokens']) / prompt_s:.1f} tok/s, {int(sum(server['prompt_tokens'])):,} tokens not cached",
            )
        )
        rows.append(
            (
                "model: generation",
                gen_s,
                f"{sum(server['gen_tokens']) / gen_s:.1f} tok/s, {int(sum(server['gen_tokens'])):,} tokens",
            )
        )
        rest = t.get("model", 0.0) - prompt_s - gen_s
        rows.append(("model: other (HTTP, queueing, compactions' share)", max(rest, 0.0), ""))
    else:
        rows.append(
            ("model (replies' seconds)", t.get("model", 0.0), f"{int(t.get('replies', 0))} replies")
        )
    for key in sorted(k for k in t if k.startswith("tests:")):
        rows.append((f"pullsmith's test runs: {key[6:]}", t[key], ""))
    own_tests = t.get("commands:tests", 0.0)
    rows.append(("the model's commands: its test runs", own_tests, ""))
    rows.append(
        (
            "the model's commands: the others",
            t.get("commands", 0.0) - own_tests,
            f"{int(t.get('command_count', 0))} commands in all",
        )
    )
    accounted = sum(seconds for _name, seconds, _note in rows)
    rows.append(("the rest (worktree, commit, setup, loop)", max(wall - accounted, 0.0), ""))
    lines += ["", "| where | seconds | share of wall | note |", "| --- | ---: | ---: | --- |"]
    for name, seconds, note in rows:
        lines.append(f"| {name} | {seconds:.0f} | {100 * seconds / wall:.1f}% | {note} |")
    lines.append(f"\nscoring (hidden tests, outside the attempts): {t.get('score', 0.0):.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the eval run's --out directory")
    args = parser.parse_args(argv)
    if not (args.out / "records.jsonl").exists():
        print(
            f"{args.out} has no records.jsonl; pass the --out directory of a pullsmith eval run.",
            file=sys.stderr,
        )
        return 2
    print(render(breakdown(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
