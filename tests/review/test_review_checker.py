"""The checker's judgement: what counts as a demonstration, on which tree."""

from __future__ import annotations

from conftest import bwrap_works
from review_helpers import calc_repo

from pullsmith.config import load_settings
from pullsmith.review.checker import Checker, is_demonstrated
from pullsmith.review.diff import resolve_change
from pullsmith.review.schema import Finding, Location

SANDBOX = "bwrap" if bwrap_works() else "none"


def finding(path: str, line: int = 1) -> Finding:
    return Finding(
        title="t",
        body="b",
        priority="P1",
        confidence=0.5,
        location=Location(path=path, start_line=line, end_line=line),
    )


def test_each_outcome(tmp_path):
    repo = calc_repo(tmp_path)
    (repo / "extra.py").write_text("def f():\n    return 1\n")
    change = resolve_change(repo)
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    calc, extra = finding("calc.py", 4), finding("extra.py")
    with Checker(change, settings) as checker:
        root = checker._root
        shows = "python -c 'from calc import total; assert total([1, 2]) == 3'"
        demo = checker.demonstrate(calc, shows)
        assert is_demonstrated(demo) and "passes on the base" in demo.reason
        passes = checker.demonstrate(calc, "python -c 'from calc import total; total([1])'")
        assert not is_demonstrated(passes) and passes.reason == "The command passes on the change."
        both = checker.demonstrate(
            calc, "python -c 'from calc import total; assert total([]) == 1'"
        )
        assert not is_demonstrated(both) and "fails on the base too" in both.reason
        # extra.py is new: no base to run; a failure counts unless the command was broken.
        new = checker.demonstrate(extra, "python -c 'from extra import f; assert f() == 2'")
        assert is_demonstrated(new) and [r.tree for r in new.runs] == ["head"]
        broken = checker.demonstrate(extra, "python -c 'from extra import f; assert f( == 2'")
        assert not is_demonstrated(broken) and "SyntaxError" in broken.reason
        if SANDBOX == "bwrap":  # the trees are read-only to the commands
            wrote = checker.demonstrate(calc, "echo x > calc.py")
            assert not is_demonstrated(wrote)
            assert (root / "head" / "calc.py").read_text().count("xs[:-1]") == 1
    assert not root.exists()
