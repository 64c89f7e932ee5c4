"""Reading test output: failing tests, messages, frames, and the source they point to."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pullsmith.agent.context import evidence_sources
from pullsmith.agent.failures import (
    enclosing_function,
    failure_count,
    function_source,
    parse_test_output,
    summarize,
)

MOD = """\
def helper(x):
    return inner(x)


def inner(x):
    return x["k"]


class Box:
    @staticmethod
    def open(x):
        raise ValueError("bad lid")
"""

TESTS = """\
from mod import Box, helper


def check(f):
    assert f({"k": 1}) == 2


def test_crash():
    helper(3)


def test_wrong_value():
    check(helper)


def test_method():
    Box.open(1)


def test_fine():
    assert True
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mod.py").write_text(MOD)
    (tmp_path / "test_mod.py").write_text(TESTS)
    return tmp_path


def pytest_output(root: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("style", ["long", "short"])
def test_pytest_failures_with_messages_and_frames(project, style):
    code, output = pytest_output(project, f"--tb={style}")
    report = parse_test_output(project, output)
    assert (report.failed, report.passed, report.failing) == (3, 1, 3)
    by_test = {f.test: f for f in report.failures}
    assert set(by_test) == {
        "test_mod.py::test_crash",
        "test_mod.py::test_wrong_value",
        "test_mod.py::test_method",
    }
    crash = by_test["test_mod.py::test_crash"]
    assert "not subscriptable" in crash.message
    assert [(f.path, f.function) for f in crash.frames][-2:] == [
        ("mod.py", "helper"),
        ("mod.py", "inner"),
    ]
    assert ("mod.py", "Box.open") in {
        (f.path, f.function) for f in by_test["test_mod.py::test_method"].frames
    }
    assert "assert 1 == 2" in by_test["test_mod.py::test_wrong_value"].message
    assert failure_count(project, output, code) == 3
    text = summarize(report)
    assert "1. test_mod.py::test_crash" in text and "at mod.py:6 in inner" in text


def test_plain_python_traceback(project):
    (project / "run.py").write_text("from mod import helper\nhelper(3)\n")
    proc = subprocess.run([sys.executable, "run.py"], cwd=project, capture_output=True, text=True)
    report = parse_test_output(project, proc.stderr)
    assert len(report.failures) == 1
    failure = report.failures[0]
    assert failure.message.startswith("TypeError")
    assert [(f.path, f.line, f.function) for f in failure.frames] == [
        ("run.py", 2, ""),
        ("mod.py", 2, "helper"),
        ("mod.py", 6, "inner"),
    ]
    assert failure_count(project, proc.stderr, proc.returncode) == 1


def test_frames_outside_the_repository_are_left_out(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "lib.py"
    elsewhere.write_text("x = 1\n")
    output = f'Traceback (most recent call last):\n  File "{elsewhere}", line 1, in <module>\nKeyError: 1\n'
    report = parse_test_output(project, output)
    assert report.failures[0].frames == []


def test_counts_without_details():
    assert failure_count(Path("."), "all good", 0) == 0
    assert failure_count(Path("."), "Segmentation fault", 139) == 1
    assert failure_count(Path("."), "== 2 failed, 1 error in 0.1s ==", 1) == 3


def test_enclosing_function_and_source(project):
    assert enclosing_function(project / "mod.py", 12) == "Box.open"
    assert enclosing_function(project / "mod.py", 1) == "helper"
    assert enclosing_function(project / "mod.py", 8) is None
    start, end, text = function_source(project / "mod.py", "Box.open")
    assert (start, end) == (10, 12) and text.lstrip().startswith("@staticmethod")
    assert function_source(project / "mod.py", "missing") is None


def test_evidence_shows_small_files_whole_code_first(project):
    _, output = pytest_output(project)
    shown = evidence_sources(project, output)
    assert shown[0].startswith("mod.py:") and "class Box" in shown[0]
    assert shown[1].startswith("test_mod.py:")


def test_evidence_cuts_big_files_to_the_functions_named(project):
    filler = "".join(f"\n\ndef unrelated_{i}(x):\n    return x + {i}\n" for i in range(600))
    (project / "mod.py").write_text(MOD + filler)
    _, output = pytest_output(project)
    shown = evidence_sources(project, output)
    code = next(s for s in shown if s.startswith("mod.py"))
    assert "only the functions" in code
    for name in ("def helper", "def inner", "def open"):
        assert name in code
    assert "unrelated_5" not in code
    assert "# lines 5-6" in code and "# lines 1-2" in code


def test_evidence_for_a_failing_assertion_in_the_test_names_the_called_code(tmp_path):
    # The traceback stays in the test file; the code under test is what it calls.
    (tmp_path / "calc.py").write_text(
        "".join(f"def f{i}(x):\n    return x\n\n\n" for i in range(700))
        + "def area(w, h):\n    return w + h\n"
    )
    (tmp_path / "test_calc.py").write_text(
        textwrap.dedent(
            """\
            from calc import area


            def test_area():
                assert area(2, 3) == 6
            """
        )
    )
    _, output = pytest_output(tmp_path)
    shown = evidence_sources(tmp_path, output)
    code = next(s for s in shown if s.startswith("calc.py"))
    assert "def area(w, h):" in code and "def f3(" not in code
