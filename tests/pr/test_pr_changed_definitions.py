"""The definitions a change touches, read from the code in git (pr.local.changed_definitions),
and how the PR's Changes table shows them."""

from __future__ import annotations

from conftest import git
from test_pr_describe import attempt, facts

from pullsmith.pr.describe import FileChange, describe
from pullsmith.pr.local import changed_definitions, file_changes

BASE = '''\
"""Shapes."""

LIMIT = 10


class Box:
    """A box."""

    def __init__(self, w, h):
        self.w, self.h = w, h

    @property
    def area(self):
        return self.w + self.h

    def perimeter(self):
        return 2 * (self.w + self.h)


def unused():
    return None
'''


def commit(repo, files, message):
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()


def test_each_changed_line_is_named_by_its_innermost_definition_on_its_own_side(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    base = commit(
        repo, {"shapes.py": BASE, "notes.txt": "a\n", "gone.py": "def f():\n    return 1\n"}, "base"
    )
    head_text = (
        BASE.replace("LIMIT = 10", "LIMIT = 12")
        .replace("self.w + self.h\n\n    def", "self.w * self.h\n\n    def")
        .replace("\n\ndef unused():\n    return None\n", "")
    )
    assert head_text.count("self.w * self.h") == 1 and "unused" not in head_text
    head = commit(
        repo,
        {"shapes.py": head_text, "notes.txt": "b\n", "gone.py": None, "new.py": "X = 1\n"},
        "change",
    )
    # The constant, the property's body (by the decorated method's name) and the function
    # that was deleted (named from the base), in file order.
    assert changed_definitions(repo, base, head, "shapes.py") == (
        "module level",
        "Box.area",
        "unused",
    )
    assert changed_definitions(repo, base, head, "notes.txt") == ()
    assert changed_definitions(repo, base, head, "gone.py") == ("f",)
    assert changed_definitions(repo, base, head, "new.py") == ("module level",)
    by_path = {c.path: c.where for c in file_changes(repo, base, head)}
    assert by_path == {
        "gone.py": ("f",),
        "new.py": ("module level",),
        "notes.txt": (),
        "shapes.py": ("module level", "Box.area", "unused"),
    }

    # A side that does not parse names nothing: here the added line (in the broken file)
    # is not read, the removed one (in the good one) is.
    broken = commit(repo, {"shapes.py": head_text.replace("class Box:", "class Box")}, "broken")
    assert changed_definitions(repo, head, broken, "shapes.py") == ("Box",)
    assert changed_definitions(repo, broken, head, "shapes.py") == ("Box",)
    both = commit(repo, {"shapes.py": head_text.replace("LIMIT = 12", "LIMIT = (")}, "both")
    assert changed_definitions(repo, broken, both, "shapes.py") == ()


def test_the_changes_table_has_a_changed_in_column_only_when_something_is_named():
    run = attempt()
    named = describe(
        facts(
            run,
            changes=[
                FileChange("pkg/a.py", 1, 1, where=("module level", "Box.area")),
                FileChange("README.md", 3, 0),
                FileChange("pkg/b.py", 9, 0, where=tuple(f"f{i}" for i in range(8))),
            ],
        )
    ).body
    assert "| File | Changed in | + | − |" in named
    assert "| `pkg/a.py` | module level, `Box.area` | 1 | 1 |" in named
    assert "| `README.md` |  | 3 | 0 |" in named
    assert "| `pkg/b.py` | `f0`, `f1`, `f2`, `f3`, `f4`, `f5`, 2 more | 9 | 0 |" in named
    assert "| **3 files** | | **+13** | **−1** |" in named
    plain = describe(facts(run, changes=[FileChange("README.md", 3, 0)])).body
    assert "| File | + | − |" in plain and "Changed in" not in plain
    assert "| **1 file** | **+3** | **−0** |" in plain
