"""What the diff shrink and the summary from the final diff cost: median over N attempts.

    PYTHONPATH=src .venv/bin/python benchmarks/diff_shrink.py [--runs 5] [--sandbox bwrap]

Each run is a whole attempt through `run_task` on a fresh copy of examples/inventory, with a
scripted model (no model time: what is measured is pullsmith's own work) whose whole-file
rewrite fixes the one-line bug and, per case, also deletes two docstrings (`docstrings`: one
test run drops both), adds a helper nobody calls as well (`helper`: three runs) or is clean
(`clean`: one hunk, nothing to try). Printed per case: the median seconds of the shrink, its
test runs, the median seconds of one plain test run of the same attempt (the "after" run) for
scale, and the attempt's wall time; then the size of the summary prompt (characters, and
tokens at ~3.5 characters a token) next to the conversation it would otherwise be appended to.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.models.base import Reply, Usage
from pullsmith.task import Task

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "inventory"
OLD_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
NEW_LOOP = "    for row in rows:\n        lines.append(format_row(row))\n"
DOCS = (
    '    """Join one row\'s values with the separator."""\n',
    '    """Return the header and every row as CSV text, one line per row."""\n',
)
HELPER = "\n\ndef unused_helper():\n    return 42\n"
CHARS_PER_TOKEN = 3.5


class Scripted:
    """Canned replies in order; remembers the last request it was shown."""

    name = "scripted"

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.last: list[dict[str, Any]] = []

    def complete(self, messages: list[Any], **_: Any) -> Reply:
        self.last = [dict(m) for m in messages]
        text = self.replies.pop(0)
        return Reply(text=text, usage=Usage(prompt_tokens=0, completion_tokens=0))

    def close(self) -> None:
        pass


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def fresh_repo(root: Path) -> Path:
    repo = root / "inventory"
    shutil.copytree(EXAMPLE, repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "initial", cwd=repo)
    return repo


def rewrite(repo: Path, case: str) -> str:
    text = (repo / "inventory" / "export.py").read_text().replace(OLD_LOOP, NEW_LOOP)
    if case in ("docstrings", "helper"):
        for doc in DOCS:
            text = text.replace(doc, "")
    if case == "helper":
        text += HELPER
    return f"Rewrite it.\n```bash\ncat > inventory/export.py <<'EOF'\n{text}EOF\n```"


def one_run(case: str, sandbox: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pullsmith-shrink-") as tmp:
        root = Path(tmp)
        repo = fresh_repo(root)
        settings = load_settings(
            {"sandbox": sandbox, "data_dir": str(root / "data"), "summary_from_diff": True},
            cwd=root,
        )
        model = Scripted(
            [rewrite(repo, case), '```bash\nfinish "fixed"\n```', "Export every row in to_csv"]
        )
        task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(repo))
        result = run_task(task, settings, model=model)  # type: ignore[arg-type]
        if result.status != "passed":
            raise SystemExit(f"{case}: the attempt did not pass ({result.exit_reason})")
        run_dir = run_dir_for(settings, result.task_id)
        events = read_events(run_dir / "events.jsonl")
        shrunk = next(e.data for e in events if e.type == "diff.shrunk")
        after = next(e.data for e in events if e.type == "tests.ran" and e.data["phase"] == "after")
        history = json.loads((run_dir / "history.json").read_text())
        prompt = sum(len(str(m.get("content") or "")) for m in model.last)
        request = len(str(model.last[-1].get("content") or ""))
        conversation = sum(len(str(m.get("content") or "")) for m in history)
        return {
            "shrink_s": float(shrunk["seconds"]),
            "test_runs": float(shrunk["test_runs"]),
            "dropped": float(len(shrunk["dropped"])),
            "after_s": float(after["seconds"]),
            "wall_s": float(result.wall_seconds),
            "prompt_chars": float(prompt),
            "request_chars": float(request),
            "conversation_chars": float(conversation),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sandbox", default="bwrap")
    parser.add_argument("--cases", default="clean,docstrings,helper")
    args = parser.parse_args()
    cases = args.cases.split(",")
    samples: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(args.runs):
        for case in cases:  # the cases take turns, so a change of load slows them alike
            samples[case].append(one_run(case, args.sandbox))
    print(f"diff shrink, {args.runs} attempts per case, sandbox {args.sandbox} (medians)")
    print(
        f"{'case':<11} {'shrink s':>9} {'test runs':>9} {'dropped':>7} {'1 test run s':>12} {'attempt s':>9}"
    )
    for case in cases:
        rows = samples[case]

        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        print(
            f"{case:<11} {med('shrink_s'):>9.2f} {med('test_runs'):>9.0f} {med('dropped'):>7.0f} "
            f"{med('after_s'):>12.2f} {med('wall_s'):>9.2f}"
        )
    print("\nsummary prompt (its own) vs the conversation it would be appended to (medians)")
    for case in cases:
        rows = samples[case]
        prompt = statistics.median(r["prompt_chars"] for r in rows)
        request = statistics.median(r["request_chars"] for r in rows)
        conversation = statistics.median(r["conversation_chars"] for r in rows)
        print(
            f"{case:<11} prompt {prompt:>6.0f} chars (~{prompt / CHARS_PER_TOKEN:.0f} tokens; "
            f"the request alone {request:.0f}, ~{request / CHARS_PER_TOKEN:.0f}); conversation "
            f"{conversation:.0f} chars (~{conversation / CHARS_PER_TOKEN:.0f} tokens)"
        )


if __name__ == "__main__":
    main()
