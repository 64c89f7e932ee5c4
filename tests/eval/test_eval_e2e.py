"""The smoke run CI does with the bundled model: one HumanEvalFix task, start to report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "suites" / "humanevalfix"


@pytest.mark.e2e
def test_e2e_humanevalfix_smoke_with_the_bundled_model(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", "eval", "run"]
        + [str(SUITE), "--limit", "1", "--max-turns", "4", "--out", str(out)],
        env=os.environ,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["done"] == 1 and report["run"]["model"] == "qwen2.5-coder-1.5b-instruct"
    [record] = report["tasks"]
    assert record["task_id"] == "Python-0" and record["error_kind"] is None, record.get("error")
    assert record["turns"] >= 1 and record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
    assert record["score"]["tests"][0]["command"] == "python hidden_test_has_close_elements.py"
    assert Path(record["run_log"]).is_file()
    assert "resolved" in (out / "report.md").read_text()
    # Whether this one task is resolved is the model's business; that the score agrees with
    # the hidden test's exit code is ours.
    assert record["resolved"] == (record["score"]["tests"][0]["exit_code"] == 0)
