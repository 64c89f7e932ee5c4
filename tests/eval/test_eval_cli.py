"""`pullsmith eval` as a user runs it, against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bwrap_works
from eval_helpers import FIX_PLANS, FakeOpenAIServer, make_mini_suite

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = "bwrap" if bwrap_works() else "none"


def pullsmith(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def assert_one_sentence_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in proc.stderr, proc.stderr


def test_run_resume_report_and_compare(tmp_path):
    suite = make_mini_suite(tmp_path)
    out = tmp_path / "out"
    with FakeOpenAIServer(FIX_PLANS) as server:
        common = ["--base-url", server.base_url, "--model", "fake", "--sandbox", SANDBOX]
        proc = pullsmith("eval", "run", str(suite), *common, "--limit", "1", "--out", str(out))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "✓ add · 2 turns" in proc.stdout
        assert "1 / 1 resolved (100.0%" in proc.stdout
        assert server.model.calls == 2
        proc = pullsmith("eval", "run", str(suite), *common, "--out", str(out))
        assert_one_sentence_error(proc, "pass --resume to continue it")
        proc = pullsmith("eval", "run", str(suite), *common, "--out", str(out), "--resume")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "2 task(s), 1 already done" in proc.stdout and "✓ mul" in proc.stdout
        assert server.model.calls == 4  # only mul ran the second time
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["resolved"] == 2 and report["run"]["model"] == "fake"
    assert "--limit 1" in report["run"]["command"] and "--resume" in report["run"]["resumed_with"]
    assert (out / "report.md").read_text().startswith("# Evaluation: mini")

    (out / "report.json").unlink()
    proc = pullsmith("eval", "report", str(out))
    assert proc.returncode == 0 and "2 / 2 resolved" in proc.stdout
    assert (out / "report.json").is_file()

    proc = pullsmith("eval", "compare", str(out), str(out / "report.json"), "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert (
        "fixed in B (unresolved in A): none" in proc.stdout and "| add | ✅ | ✅ |" in proc.stdout
    )
    proc = pullsmith("eval", "compare", str(out), str(out))
    assert proc.returncode == 0 and "broken in B: none" in proc.stdout


def test_interrupted_run_resumes(tmp_path):
    suite = make_mini_suite(tmp_path)
    out = tmp_path / "out"
    # Each reply takes 2.5 s, so the interrupt lands while the second task talks to the
    # model even on a loaded machine (with 0.3 s the whole suite once saw it finish first).
    with FakeOpenAIServer(FIX_PLANS, delay_s=2.5) as server:
        args = ["eval", "run", str(suite), "--base-url", server.base_url, "--model", "fake"]
        args += ["--sandbox", SANDBOX, "--out", str(out)]
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            # As from a terminal: a test run started in the background (`make test &`, as
            # nohup or a non-interactive shell does) has SIGINT ignored, the child inherits
            # that, and Python then never raises KeyboardInterrupt (exit 0, not 130).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 120
        # The interrupt is sent while a request of the second task waits at the model, after
        # the first task's record is written (the full suite once saw the run end first: exit
        # 0, when the interrupt had only waited for the record).
        records = out / "records.jsonl"
        while not (
            records.is_file()
            and records.read_text()
            and "mathx.py" in list(server.in_flight)  # the second task's plan
        ):
            assert time.monotonic() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # while the second task runs
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stdout + stderr
        assert "interrupted; finished tasks are recorded" in stdout
        assert [json.loads(line)["task_id"] for line in (out / "records.jsonl").open()] == ["add"]
        proc = pullsmith(*args, "--resume")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "1 already done" in proc.stdout and "2 / 2 resolved" in proc.stdout


def test_check_command(tmp_path):
    suite = make_mini_suite(tmp_path)
    proc = pullsmith("eval", "check", str(suite), "--sandbox", SANDBOX)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "unchanged snapshots failing 2/2 · reference solutions passing 2/2" in proc.stdout
    (suite / "add" / "solution" / "calc.py").write_text("def add(a, b):\n    return 0\n")
    proc = pullsmith("eval", "check", str(suite), "--sandbox", SANDBOX)
    assert proc.returncode == 1
    assert "✗ add: the reference solution fails" in proc.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--attempts", "0"], "--attempts"),
        (["--subset", "nope"], "unknown subset 'nope'"),
        (["--tasks", "add,zzz"], "not in suite mini: zzz"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_run_errors_are_one_sentence(tmp_path, args, fragment):
    suite = make_mini_suite(tmp_path)
    proc = pullsmith("eval", "run", str(suite), "--sandbox", SANDBOX, *args)
    assert_one_sentence_error(proc, fragment)


def test_missing_suite_and_report(tmp_path):
    assert_one_sentence_error(pullsmith("eval", "run", str(tmp_path / "nope")), "does not exist")
    proc = pullsmith("eval", "compare", str(tmp_path), str(tmp_path))
    assert_one_sentence_error(proc, "report.json does not exist")


def test_help_mentions_the_local_model_queue():
    proc = pullsmith("eval", "run", "--help")
    assert proc.returncode == 0
    assert "share one server" in " ".join(proc.stdout.split())
