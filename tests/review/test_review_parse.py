"""Reading the model's review: the lenient parser, locations placed on the diff, the prompt."""

from __future__ import annotations

from conftest import ScriptedModel
from review_helpers import BUGGY_CALC, CALC, DEMO_REPLY, REVIEW_REPLY, calc_repo

from pullsmith.config import Settings
from pullsmith.review.diff import parse_diff, resolve_change
from pullsmith.review.prompt import (
    demonstration_command,
    enclosing_code,
    findings_from,
    first_message,
    numbered_diff,
    parse_review,
    review_rules,
)
from pullsmith.review.runner import review_change

TWO_HUNKS = """\
diff --git a/a.py b/a.py
index 1111111..2222222 100644
--- a/a.py
+++ b/a.py
@@ -1,3 +1,3 @@
 x = 1
-y = 2
+y = 3
 z = 4
@@ -40,4 +40,3 @@ def f():
     a = 1
-    b = 2
     c = 3
     return a
diff --git a/new.py b/new.py
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/new.py
@@ -0,0 +1,2 @@
+print(1)
+print(2)
"""


def test_parse_diff_numbers_new_lines():
    files = parse_diff(TWO_HUNKS)
    assert [f.path for f in files] == ["a.py", "new.py"]
    first, second = files[0].hunks
    assert first.added == [2] and first.removed_at == [2]
    assert second.added == [] and second.removed_at == [41]
    assert files[0].changed_lines == [2, 41]
    assert files[1].hunks[0].added == [1, 2]


def change_of(tmp_path):
    return resolve_change(calc_repo(tmp_path), uncommitted=True)


def test_lenient_parse_and_placement(tmp_path):
    change = change_of(tmp_path)
    parsed = parse_review(REVIEW_REPLY)
    assert parsed.verdict == "incorrect"
    assert parsed.reason.startswith("The loop leaves out")
    findings, dropped = findings_from(parsed, change)
    assert [f.title for f in findings] == ["total drops the last number"]
    assert findings[0].priority == "P1" and findings[0].confidence == 0.9
    assert str(findings[0].location) == "calc.py:4"
    # Lines 90-95 are nowhere near the change: left out, with the reason.
    assert dropped[0].title == "a nit far away" and "not in the change" in dropped[0].reason


def test_words_markdown_and_near_misses_are_read(tmp_path):
    change = change_of(tmp_path)
    reply = """```
1. Finding: [P0] Off by one
- Severity: high
- Confidence: 80%
- File: `./calc.py`
- Lines: L7-L9
- Why: the slice drops
  the last element.
Verdict: the change is incorrect
Reasoning: short totals.
```"""
    parsed = parse_review(reply)
    findings, dropped = findings_from(parsed, change)
    assert not dropped
    (finding,) = findings
    # The title's [P0] wins over the word; 80% is 0.8; the why continues on the next line.
    assert finding.priority == "P0" and finding.confidence == 0.8
    assert finding.title == "Off by one"
    assert finding.body == "the slice drops the last element."
    # Lines 7-9 are past the hunk's end (6): snapped onto the changed line, and said so.
    assert str(finding.location) == "calc.py:4" and finding.snapped_from == "./calc.py:L7-L9"
    assert parsed.verdict == "incorrect"


def test_a_file_outside_the_change_is_dropped(tmp_path):
    repo = calc_repo(tmp_path)
    (repo / "other.py").write_text("x = 1\n")
    change = resolve_change(repo, uncommitted=True)
    parsed = parse_review("FINDING: t\nPRIORITY: P1\nFILE: nowhere.py\nLINES: 3\nWHY: w\n")
    findings, dropped = findings_from(parsed, change)
    assert findings == [] and "which the change does not touch" in dropped[0].reason


def test_garbage_is_empty():
    assert parse_review("I think the code looks fine overall, nice work!").empty


def test_numbered_diff_and_first_message(tmp_path):
    change = change_of(tmp_path)
    text, cut = numbered_diff(change)
    assert not cut
    assert "   4 +     for x in xs[:-1]:" in text and "     -     for x in xs:" in text
    message = first_message(change, "off-by-one errors", "Treat off-by-one errors as P1.")
    assert "Focus on: off-by-one errors" in message and "Treat off-by-one" in message
    assert BUGGY_CALC != CALC


def test_review_rules_section():
    text = "# A\n\nintro\n\n## Code Review Rules\n\n- no prints\n\n### detail\nmore\n\n## Next\nx\n"
    assert review_rules(text) == "- no prints\n\n### detail\nmore"
    assert review_rules("# A\n\n## Review\n\nbe kind\n") == "be kind"
    assert review_rules("# A\n\nnothing\n") is None


def test_demonstration_command():
    assert demonstration_command("Here:\n```bash\npython t.py\n```\n") == "python t.py"
    assert demonstration_command("$ python -c 'x'") == "python -c 'x'"
    assert demonstration_command("```bash\npython -c 'cut by the limit") is None
    assert demonstration_command("no command") is None


def test_uncommitted_includes_untracked_files_but_not_ignored_ones(tmp_path):
    from conftest import git

    repo = calc_repo(tmp_path)
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "new.py").write_text("print('new')\n")
    (repo / "debug.log").write_text("noise\n")
    index = (repo / ".git" / "index").read_bytes()
    change = resolve_change(repo)
    assert {f.path for f in change.files} == {"calc.py", "new.py", ".gitignore"}
    assert change.base == git("rev-parse", "HEAD", cwd=repo).strip()
    # The snapshot is an object only: no ref, the index and HEAD as they were.
    assert (repo / ".git" / "index").read_bytes() == index
    assert change.head not in git("for-each-ref", cwd=repo)
    assert "?? new.py" in git("status", "--porcelain", cwd=repo)


def test_the_first_commit_is_reviewed_against_nothing(tmp_path):
    repo = calc_repo(tmp_path)
    change = resolve_change(repo, commit="HEAD")
    assert change.label.startswith("commit ") and {f.path for f in change.files} == {
        "calc.py",
        "AGENTS.md",
    }
    assert change.file("calc.py").hunks[0].added == [1, 2, 3, 4, 5, 6]


def test_enclosing_code_is_the_function_around_the_lines():
    source = (
        "import os\n\n"
        "def f(x):\n"
        '    """Double x.\n\n    >>> f(2)\n    4\n    """\n'
        "    y = x * 2\n\n"
        "    return y\n\n\n"
        "class A:\n"
        "    def g(self):\n"
        "        return 1\n"
    ).splitlines()
    code = enclosing_code(source, 9, 9)
    assert code.splitlines()[0] == "   3  def f(x):"
    assert ">>> f(2)" in code and code.splitlines()[-1] == "  11      return y"
    assert enclosing_code(source, 16, 16).splitlines() == [
        "  15      def g(self):",
        "  16          return 1",
    ]
    # outside any definition: ten lines either side; a long definition is cut around the range
    assert enclosing_code(source, 1, 1).splitlines()[0] == "   1  import os"
    long = ["def big():"] + [f"    x{i} = {i}" for i in range(200)]
    cut = enclosing_code(long, 150, 151, cap=20).splitlines()
    assert len(cut) == 20 and any(row.startswith(" 150 ") for row in cut)


def test_the_demonstration_request_shows_the_function_with_its_docstring(tmp_path):
    repo = calc_repo(tmp_path)
    change = resolve_change(repo, uncommitted=True)
    model = ScriptedModel([REVIEW_REPLY, DEMO_REPLY])
    review = review_change(change, model, Settings(sandbox="none"))
    assert review.findings[0].check == "demonstrated"
    ask = model.seen[1][-1]["content"]
    assert "def total(xs):" in ask and '"""The sum of xs."""' in ask
    assert "for x in xs[:-1]:" in ask  # the code as changed
