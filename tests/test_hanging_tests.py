"""A test suite that hangs on the bug costs seconds of CPU time per pullsmith test run, not
minutes, and the model is told plainly that the tests timed out."""

from __future__ import annotations

import time

import pytest
from conftest import ScriptedModel, bwrap_works, git

from pullsmith.agent.failures import CPU_MARK, cpu_capped, cpu_exceeded, cpu_used, hang_note
from pullsmith.attempt import run_dir_for
from pullsmith.config import Settings, load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.sandbox.policy import agent_policy, pytest_env
from pullsmith.task import Task

SANDBOX = "bwrap" if bwrap_works() else "none"

LOOPING = '''\
def countdown(n):
    """Count down from n to zero; the list of numbers."""
    out = []
    while n != 0:
        out.append(n)
        n -= 2
    out.append(0)
    return out
'''
FIXED = LOOPING.replace("n -= 2", "n -= 1")
TEST = """\
from count import countdown


def test_countdown():
    assert countdown(3) == [3, 2, 1, 0]


def test_zero():
    assert countdown(0) == [0]
"""


@pytest.fixture
def looping_repo(tmp_path):
    repo = tmp_path / "looping"
    repo.mkdir()
    (repo / "count.py").write_text(LOOPING)
    (repo / "test_count.py").write_text(TEST)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def rewrite(text: str) -> str:
    return f"Fix the step.\n```bash\ncat > count.py <<'EOF'\n{text}EOF\n```"


def test_the_defaults_cap_each_test_run_at_20_cpu_seconds():
    settings = Settings()
    assert settings.test_cpu_s == 20.0 and settings.feedback_test_timeout_s == 120.0
    assert settings.pytest_timeout_s == 30.0
    env = agent_policy(settings).env_set
    assert env["PYTEST_TIMEOUT"] == "30"
    assert env["PYTEST_ADDOPTS"] == (
        "-p no:cacheprovider -p no:schemathesis -p no:hypothesispytest -o faulthandler_timeout=45"
    )
    capped = cpu_capped("pytest -q", 20)
    assert capped.startswith("ulimit -S -t 20 2>/dev/null; ( pytest -q\n); ")
    assert CPU_MARK in capped and capped.endswith("times; exit $__pullsmith_rc")
    assert cpu_capped("pytest -q", 0) == "pytest -q"
    assert pytest_env(0) == {"PYTEST_ADDOPTS": "-p no:cacheprovider"}
    assert pytest_env(0, "a, b") == {"PYTEST_ADDOPTS": "-p no:cacheprovider -p no:a -p no:b"}


def test_a_test_that_loops_forever_is_stopped_and_the_model_told(looping_repo, tmp_path):
    settings = load_settings(
        # The cap on a whole run is generous here: this tests the per-test timeout, and on a
        # loaded machine starting pytest in the sandbox alone can take 20 s (measured).
        {"sandbox": SANDBOX, "pytest_timeout_s": 2, "feedback_test_timeout_s": 60},
        cwd=tmp_path,
    )
    model = ScriptedModel(
        [
            "```bash\npython -m pytest -q\n```",
            rewrite(FIXED),
            '```bash\nfinish "countdown steps by one"\n```',
        ]
    )
    task = Task(instruction="countdown(3) never returns; fix it.", repo=str(looping_repo))
    started = time.monotonic()
    result = run_task(task, settings, model=model)
    took = time.monotonic() - started
    assert result.status == "passed", result.exit_reason
    before = result.tests_before
    # pytest-timeout (the sandbox's Python has it) fails the looping test after 2 s and the
    # run goes on: the before run takes seconds, not the five minutes of test_timeout_s.
    assert before.exit_code != 0 and not before.timed_out and before.seconds < 60
    assert "Timeout" in before.output
    first = model.seen[0][1]["content"]
    assert "stopped by its per-test timeout" in first and "loops forever" in first
    # The agent's own run of the tests is cut the same way (PYTEST_TIMEOUT in its sandbox).
    own = model.seen[1][-1]["content"]
    assert "Timeout" in own
    assert took < 300


def test_a_run_that_loops_is_stopped_by_its_cpu_time_with_a_plain_note(looping_repo, tmp_path):
    # A runner without a per-test timeout: the CPU time limit of its processes stops it, however
    # slowly a loaded machine lets the loop run; the wall clock stays generous.
    (looping_repo / "AGENTS.md").write_text(
        "Test command: `python -c 'import count; assert count.countdown(3) == [3, 2, 1, 0]'`\n"
    )
    git("add", "-A", cwd=looping_repo)
    git("commit", "-q", "-m", "agents", cwd=looping_repo)
    settings = load_settings({"sandbox": SANDBOX, "test_cpu_s": 2}, cwd=tmp_path)
    still_looping = rewrite(LOOPING.replace("n -= 2", "n -= 4"))
    finish = '```bash\nfinish "countdown steps by one"\n```'
    model = ScriptedModel([still_looping, rewrite(FIXED), finish])
    task = Task(instruction="countdown(3) never returns; fix it.", repo=str(looping_repo))
    result = run_task(task, settings, model=model)
    before = result.tests_before
    assert before.timed_out and before.exit_code == 152 and before.seconds < 120
    first = model.seen[0][1]["content"]
    # The run before the agent may use three times test_cpu_s (a big suite is not a hang).
    assert "did not finish within 6 s of CPU time a process or 120 s in all" in first
    # After the first edit the tests still hang: the feedback says so.
    feedback = model.seen[1][-1]["content"]
    assert "did not finish within 2 s of CPU time" in feedback and "loop forever" in feedback
    assert result.status == "passed"


def test_a_suite_that_needs_more_cpu_than_test_cpu_s_is_not_taken_for_a_hang(tmp_path):
    # The suite burns 1.5 s of CPU time, test_cpu_s is 1 s: the run before may use 3 s, and
    # every later run twice what that one used and 5 s more.
    repo = tmp_path / "slow"
    repo.mkdir()
    (repo / "calc.py").write_text("def double(x):\n    return x + x + 1\n")
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 1.5: pass"
    (repo / "check.py").write_text(f"{burn}\nimport calc\nassert calc.double(2) == 4\n")
    (repo / "AGENTS.md").write_text("Test command: `python check.py`\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    settings = load_settings({"sandbox": SANDBOX, "test_cpu_s": 1}, cwd=tmp_path)
    fix = "Fix it.\n```bash\nprintf 'def double(x):\\n    return x + x\\n' > calc.py\n```"
    model = ScriptedModel([fix, '```bash\nfinish "double adds x to itself"\n```'])
    task = Task(instruction="double(2) is 5; fix it.", repo=str(repo))
    result = run_task(task, settings, model=model)
    before = result.tests_before
    assert before.exit_code == 1 and not before.timed_out
    assert "AssertionError" in before.output and CPU_MARK not in before.output
    assert not result.tests_after.timed_out and result.status == "passed"
    ran = [e for e in read_events(run_dir_for(settings, task.task_id) / "events.jsonl")]
    # The after run is the finish's check (same_as): it did not run again, so it has no CPU.
    cpu = [
        e.data["cpu_seconds"]
        for e in ran
        if e.type == "tests.ran" and e.data.get("same_as") is None
    ]
    assert len(cpu) >= 3 and all(seconds >= 1.5 for seconds in cpu)


def test_cpu_used_reads_the_report_and_leaves_the_rest():
    report = f"\n{CPU_MARK}\n0m0.001s 0m0.000s\n1m2.500s 0m0.250s\n"
    assert cpu_used("1 passed" + report) == ("1 passed", 62.75)
    killed = "bash: line 2:  7 CPU time limit exceeded ( pytest )\n"
    assert cpu_used("out" + report + killed) == ("out\n" + killed, 62.75)
    assert cpu_used("no report") == ("no report", None)


def test_cpu_exceeded_reads_the_signal_and_the_shell_message():
    assert cpu_exceeded(152, "") and cpu_exceeded(-24, "")
    assert cpu_exceeded(1, "bash: line 1:  3 CPU time limit exceeded python3 loop.py")
    assert not cpu_exceeded(1, "1 failed") and not cpu_exceeded(0, "")


def test_hang_note_reads_pytest_timeout_and_faulthandler():
    assert hang_note("E   Failed: Timeout (>8.0s) from pytest-timeout.", False).startswith(
        "A test was still running after 8 s"
    )
    assert "per-test timeout" in hang_note("Timeout (0:00:12)!\nThread 0x1 (most recent", False)
    assert hang_note("1 failed, 2 passed", False) == ""
    assert "within 20 s" in hang_note("", True, "20 s")
