"""`pullsmith eval review`: the diffs with known answers, their scoring and the report."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ScriptedModel, bwrap_works

from pullsmith.config import load_settings
from pullsmith.eval import review_bench as rb
from pullsmith.eval.tasks import load_suite

SUITE = Path(__file__).resolve().parents[2] / "suites" / "humanevalfix"
SANDBOX = "bwrap" if bwrap_works() else "none"


def tasks(*ids):
    return load_suite(str(SUITE)).select(ids=list(ids))


def settings(tmp_path):
    return load_settings({"sandbox": SANDBOX}, cwd=tmp_path)


def test_rename_and_reformat_keep_the_code_valid():
    source = (
        "def f(xs, n):\n"
        "    total = 0\n"
        "    for x in xs:\n"
        "        total += x.real  # .real stays\n"
        "    return total * n\n"
        "\n\ndef g():\n    total = 1\n    return total\n"
    )
    renamed, how = rb.rename_local(source, "f")
    assert how == "renamed the local variable total to total_value in f"
    assert "total_value += x.real" in renamed and "return total_value * n" in renamed
    assert "def g():\n    total = 1\n    return total\n" in renamed  # only inside f
    ast.parse(renamed)
    reformatted, _ = rb.reformat_function("def h( a ):\n    return (a+1)\n", "h")
    assert reformatted == "def h(a):\n    return a + 1\n"
    assert rb.rename_local("def k(a):\n    return a\n", "k") is None


def test_bug_and_clean_diffs_of_a_task(tmp_path):
    (task,) = tasks("Python-6")
    diffs = rb.build_diffs([task], settings(tmp_path))
    bug, clean = diffs
    assert (bug.id, clean.id) == ("Python-6:bug", "Python-6:clean")
    change = rb.make_repo(bug, tmp_path)
    # The reverse of the fix: the buggy line is the one added, and it is known.
    assert rb.known_lines(change) == {"parse_nested_parens.py": [13]}
    assert "+                max_depth -= 1" in change.diff
    clean_change = rb.make_repo(clean, tmp_path)
    assert "depth_value" in clean_change.diff and clean.how.startswith("renamed")
    assert rb.keeps_behaviour(task, clean, settings(tmp_path))


def scripted_reviews(bug_lines: str) -> list[str]:
    return [
        # The bug diff: a P1 on the bug's line, demonstrated (fails on the change only).
        f"FINDING: depth never goes down\nPRIORITY: P1\nCONFIDENCE: 0.8\n"
        f"FILE: parse_nested_parens.py\nLINES: {bug_lines}\nWHY: max_depth is decremented.\n"
        "VERDICT: incorrect\nREASON: Nesting is counted wrong.",
        "```bash\npython -c 'from parse_nested_parens import parse_nested_parens as p; "
        'r = p("(()) ()"); assert r == [2, 1], r\'\n```',
        # The clean diff: a false positive that its command can not demonstrate.
        "FINDING: renamed variable\nPRIORITY: P1\nCONFIDENCE: 0.3\nFILE: parse_nested_parens.py\n"
        "LINES: 6\nWHY: the name changed.\nVERDICT: incorrect\nREASON: A rename.",
        "```bash\npython -c 'import parse_nested_parens; assert False'\n```",
    ]


def test_run_bench_scores_and_reports(tmp_path):
    (task,) = tasks("Python-6")
    diffs = rb.build_diffs([task], settings(tmp_path))
    model = ScriptedModel(scripted_reviews("13"))
    out = tmp_path / "out"
    seen = []
    rows = rb.run_bench(
        diffs, model, settings(tmp_path), out, on_result=lambda r, n, t: seen.append((n, t))
    )
    assert seen == [(1, 2), (2, 2)]
    bug, clean = rows
    assert bug["hit"] and bug["p0p1"] == 1 and bug["demonstrated"] == 1
    assert bug["findings"][0]["check"] == "demonstrated"
    assert not clean["hit"] and clean["p0p1"] == 1 and clean["demonstrated"] == 0
    report = rb.write_report(
        out, rows, {"suite": "humanevalfix", "command": "pullsmith eval review"}
    )
    f = report["models"]["scripted"]
    assert f["recall"] == 1.0 and f["location_hit_rate"] == 1.0 and f["precision"] == 0.5
    assert f["false_positives_per_clean_diff"] == 1.0 and f["demonstrated_share"] == 0.5
    text = (out / "report.md").read_text()
    assert "| recall (P0/P1 at an overlapping location) | 100% |" in text
    assert "| Python-6:bug | incorrect | 1 | yes | 1 |" in text
    # Resumed: the recorded diffs are skipped, no model call is made.
    again = rb.run_bench(diffs, ScriptedModel([]), settings(tmp_path), out, resume=True)
    assert [r["id"] for r in again] == ["Python-6:bug", "Python-6:clean"]


def test_eval_review_command_with_a_recorded_model(tmp_path):
    history = tmp_path / "history.json"
    replies = scripted_reviews("90")  # far from the bug: dropped, so no finding at all
    history.write_text(json.dumps([{"role": "assistant", "content": r} for r in replies]))
    out = tmp_path / "out"
    args = ["eval", "review", str(SUITE), "--tasks", "Python-6", "--kinds", "bug"]
    args += ["--model", f"replay:{history}", "--sandbox", SANDBOX, "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "recall 0%" in proc.stdout and "report:" in proc.stdout
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["id"] == "Python-6:bug" and row["findings"] == [] and row["dropped"] == 1
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    refused = subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert refused.returncode != 0 and "pass --resume to continue" in refused.stderr
    assert "Traceback" not in refused.stderr
