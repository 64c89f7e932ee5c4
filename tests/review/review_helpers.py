"""Shared pieces of the review tests: a repository with a change that introduces a bug, and a
model scripted through a recorded conversation (`--model replay:FILE`)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import git

CALC = (
    "def total(xs):\n"
    '    """The sum of xs."""\n'
    "    result = 0\n"
    "    for x in xs:\n"
    "        result += x\n"
    "    return result\n"
)
BUGGY_CALC = CALC.replace("for x in xs:", "for x in xs[:-1]:")

REVIEW_REPLY = """\
**FINDING:** total drops the last number
PRIORITY: P1
CONFIDENCE: 0.9
FILE: calc.py
LINES: 4
WHY: xs[:-1] skips the last item, so total([1, 2]) is 1.

FINDING: a nit far away
PRIORITY: P3
CONFIDENCE: 0.2
FILE: calc.py
LINES: 90-95
WHY: nothing real.

VERDICT: incorrect
REASON: The loop leaves out the last number, so every total is short.
"""
DEMO_REPLY = "```bash\npython -c 'from calc import total; r = total([1, 2]); assert r == 3, r'\n```"
CLEAN_REPLY = "VERDICT: correct\nREASON: The change keeps what the code does.\n"


def calc_repo(root: Path) -> Path:
    """A repository whose committed calc.py is right, with the bug as an uncommitted change."""
    repo = root / "calc"
    repo.mkdir(parents=True)
    (repo / "calc.py").write_text(CALC)
    (repo / "AGENTS.md").write_text(
        "# Notes\n\n## Review\n\nTreat off-by-one errors as P1.\n\n## Other\n\nIgnore this.\n"
    )
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    (repo / "calc.py").write_text(BUGGY_CALC)
    return repo


def scripted(tmp_path: Path, *replies: str, name: str = "history.json") -> str:
    """A `--model` value that answers with `replies`, in order."""
    path = tmp_path / name
    path.write_text(json.dumps([{"role": "assistant", "content": r} for r in replies]))
    return f"replay:{path}"
