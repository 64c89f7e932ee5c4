"""The command line as a user meets it: wrong arguments end in one sentence and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import git
from rich.console import Console

from pullsmith.cli import TerminalView
from pullsmith.events import Event


def pullsmith(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def assert_one_sentence_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert fragment in proc.stderr, proc.stderr


def test_help_and_version():
    proc = pullsmith("--help")
    assert proc.returncode == 0 and "exec" in proc.stdout and "model" in proc.stdout
    proc = pullsmith("--version")
    assert proc.returncode == 0 and "pullsmith" in proc.stdout


def test_not_a_git_repository(tmp_path):
    proc = pullsmith("exec", "--repo", str(tmp_path), "fix it")
    assert_one_sentence_error(proc, "is not a git repository")


def test_missing_path(tmp_path):
    proc = pullsmith("exec", "--repo", str(tmp_path / "nope"), "fix it")
    assert_one_sentence_error(proc, "nope")


def test_unknown_base_ref(example_repo):
    proc = pullsmith("exec", "--repo", str(example_repo), "--base", "no-such-branch", "fix it")
    assert_one_sentence_error(proc, "unknown base ref 'no-such-branch'")
    assert git("branch", "--list", "pullsmith/*", cwd=example_repo) == ""


def test_unknown_sandbox_and_option(example_repo):
    proc = pullsmith("exec", "--repo", str(example_repo), "--sandbox", "jail", "fix it")
    assert_one_sentence_error(proc, "'jail' is not one of")
    proc = pullsmith("exec", "--frobnicate", "fix it")
    assert_one_sentence_error(proc, "No such option")


def test_empty_task(example_repo):
    proc = pullsmith("exec", "--repo", str(example_repo), "  ")
    assert_one_sentence_error(proc, "the task is empty")


def test_bad_config_file(example_repo):
    (example_repo / "pullsmith.toml").write_text("max_turns = [\n")
    proc = pullsmith("exec", "fix it", cwd=example_repo)
    assert_one_sentence_error(proc, "is not valid TOML")


def test_unreachable_api_model_keeps_the_run_log(example_repo):
    # Port 9 on loopback (discard) has no listener here: the connection is refused at once.
    proc = pullsmith(
        "exec",
        "--repo",
        str(example_repo),
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "fix it",
        env={"OPENAI_API_KEY": "sk-test"},
    )
    assert_one_sentence_error(proc, "could not be reached")
    assert "run log:" in proc.stderr
    assert "sk-test" not in proc.stdout + proc.stderr


def test_a_stuck_attempt_says_the_next_one_starts_afresh():
    console = Console(record=True, width=200)
    view = TerminalView(console)
    view(Event(1, "attempts.started", "t", 0.0, {"attempts": 2, "until_pass": True}))
    stuck = {"turn": 2, "reason": "stuck: it sent the same reply again"}
    view(Event(2, "limit.reached", "t", 0.0, {**stuck, "attempt": 1}))
    view(Event(3, "limit.reached", "t", 0.0, {**stuck, "attempt": 2}))
    lines = [line for line in console.export_text().splitlines() if "stopped" in line]
    assert lines[0].endswith("the next attempt starts afresh")
    assert lines[1] == "stopped: stuck: it sent the same reply again"


def test_each_direct_repair_try_is_a_line_with_its_outcome():
    console = Console(record=True, width=200)
    view = TerminalView(console)
    tried = {"path": "pkg/m.py", "rank": 2, "seconds": 30.0, "completion_tokens": 90}
    view(Event(1, "repair.tried", "t", 0.0, {**tried, "function": "Box.area", "outcome": "failed"}))
    again = {**tried, "function": "load", "outcome": "passed", "sample": 2}
    view(Event(2, "repair.tried", "t", 0.0, again))
    view(Event(3, "repair.tried", "t", 0.0, {**again, "sample": 3, "form": "lines"}))
    lines = console.export_text().splitlines()
    assert lines[0].startswith("repair: Box.area in pkg/m.py (rank 2) failed · 30.0 s")
    assert lines[1].startswith("repair: load in pkg/m.py (rank 2, ask 2) passed")
    assert lines[2].startswith("repair: load in pkg/m.py (rank 2, ask 3, lines) passed")
