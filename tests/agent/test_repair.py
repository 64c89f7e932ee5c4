"""Direct repair: the functions ranked first, each asked for fixed, kept only when tests pass."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ScriptedModel, bwrap_works, git

from pullsmith.agent.failures import parse_test_output
from pullsmith.agent.repair import (
    RepairCandidate,
    ask_order,
    definition_in,
    direct_repair,
    lines_edit_in,
    repair_candidates,
    repair_request,
)
from pullsmith.attempt import run_dir_for
from pullsmith.config import load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.models.base import Reply, Usage
from pullsmith.pr.evidence import run_evidence
from pullsmith.task import Task, TestRun
from pullsmith.tools.search_replace import SearchReplaceError

SANDBOX = "bwrap" if bwrap_works() else "none"
BUGGY_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
FIXED_TO_CSV = '''def to_csv(header, rows):
    """Return the header and every row as CSV text, one line per row."""
    lines = [format_row(header)]
    for row in rows:
        lines.append(format_row(row))
    return "\\n".join(lines) + "\\n"
'''
FINISH = '```bash\nfinish "done"\n```'


def replace_reply(path: str, name: str, body: str) -> str:
    return f"Fixed.\n```bash\nreplace_function {path} {name} <<'EOF'\n{body}EOF\n```"


def pytest_output(root) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    return done.stdout + done.stderr


def pytest_runner(root):
    runs: list[int] = []

    def run() -> TestRun:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        runs.append(done.returncode)
        return TestRun("repair", "pytest", done.returncode, done.stdout, 0.5, False, len(runs))

    return run, runs


class ByFunction:
    """Answers each repair request by the function it names (`answers`, else unchanged)."""

    name = "by-function"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.prefixes: list[list[dict]] = []

    def complete(self, messages, temperature=None, tools=None, stop=None, seed=None, on_text=None):
        request = messages[-1]["content"]
        name = request.split("most likely reach `", 1)[1].split("`", 1)[0]
        path = request.split(f"`{name}` in `", 1)[1].split("`", 1)[0]
        self.asked.append(name)
        self.prefixes.append(messages[:-1])
        source = request.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"
        text = replace_reply(path, name, self.answers.get(name, source))
        if on_text is not None:
            on_text(text)
        return Reply(text=text, usage=Usage(prompt_tokens=50, completion_tokens=20))

    def close(self) -> None:
        pass


# --- reading the reply ---------------------------------------------------------------------


def test_the_definition_comes_from_a_replace_function_heredoc():
    reply = replace_reply("inventory/export.py", "to_csv", FIXED_TO_CSV)
    assert definition_in(reply, "to_csv") == FIXED_TO_CSV


def test_from_a_whole_file_or_class_only_the_named_definition_is_taken():
    whole = (
        "```python\nimport os\n\nclass Report:\n    def total(self):\n        return 1\n\n"
        "    def render(self, rows):\n        return [r for r in rows]\n\nX = 2\n```"
    )
    assert definition_in(whole, "Report.render") == (
        "def render(self, rows):\n    return [r for r in rows]\n"
    )
    heredoc = "```bash\ncat > m.py <<'EOF'\ndef a():\n    pass\n\ndef b():\n    return 3\nEOF\n```"
    assert definition_in(heredoc, "b") == "def b():\n    return 3\n"


def test_a_reply_without_the_function_or_that_does_not_parse_has_no_definition():
    assert definition_in("```bash\npytest -q\n```", "to_csv") is None
    assert definition_in("```python\ndef to_csv(:\n```", "to_csv") is None
    assert definition_in("```python\ndef other():\n    pass\n```", "to_csv") is None
    assert definition_in("no block at all", "to_csv") is None


def test_the_request_shows_the_function_and_names_it_for_replace_function():
    candidate = RepairCandidate("pkg/m.py", "Box.area", 10, 11, "    def area(self):\n", 1)
    text = repair_request(candidate)
    assert "```python\ndef area(self):\n```" in text
    assert "replace_function pkg/m.py Box.area <<'EOF'" in text
    assert "lines 10-11" in text


# --- the changed lines only, for a long function ------------------------------------------

METHOD = RepairCandidate(
    "pkg/m.py",
    "Box.area",
    10,
    13,
    "    def area(self):\n        # the area\n        w = self.w\n        return w + self.h",
    1,
    "lines",
)


def lines_reply(path: str, search: str, replace: str) -> str:
    return (
        f"The sum should be a product.\n```bash\nsearch_replace {path} <<'EOF'\n"
        f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\nEOF\n```"
    )


def test_a_lines_request_asks_for_a_search_replace_block_not_the_whole_function():
    text = repair_request(METHOD)
    assert "```python\ndef area(self):\n    # the area\n" in text
    assert "search_replace pkg/m.py <<'EOF'" in text and "<<<<<<< SEARCH" in text
    assert "replace_function" not in text


def test_the_blocks_of_a_lines_reply_change_the_function_alone():
    # Copied from the request's dedented view: re-indented to the method's lines.
    reply = lines_reply("pkg/m.py", "    return w + self.h\n", "    return w * self.h\n")
    assert lines_edit_in(reply, METHOD) == (
        "def area(self):\n    # the area\n    w = self.w\n    return w * self.h\n"
    )
    # A block that matches nothing in the function is not applied (whatever the rest of the
    # file holds), with search_replace's own words.
    elsewhere = lines_reply("pkg/m.py", "    return self.w\n", "    return 0\n")
    with pytest.raises(SearchReplaceError, match="SEARCH"):
        lines_edit_in(elsewhere, METHOD)
    # A reply that writes the function whole is taken that way; one with neither has none.
    whole = replace_reply("pkg/m.py", "Box.area", "def area(self):\n    return 1\n")
    assert lines_edit_in(whole, METHOD) == "def area(self):\n    return 1\n"
    assert lines_edit_in("The bug is not in this function.", METHOD) is None


def test_a_search_copied_back_with_a_slip_applies_to_the_one_run_of_lines_it_nearly_copies():
    slipped = lines_reply("pkg/m.py", "    return w + self.hh\n", "    return w * self.h\n")
    assert lines_edit_in(slipped, METHOD) == (
        "def area(self):\n    # the area\n    w = self.w\n    return w * self.h\n"
    )
    # Several lines, one with a changed character, indented as in the file: still one run.
    two = lines_reply(
        "pkg/m.py",
        "        w = self.w;\n        return w + self.h\n",
        "        w = self.w\n        return w * self.h\n",
    )
    assert lines_edit_in(two, METHOD).endswith("    w = self.w\n    return w * self.h\n")
    # Long lines, the last one copied without its colon: the run one line earlier is 95%
    # alike too (semver-01), but it is the same place, one line off, not a rival.
    source = (
        "def bump(version, part):\n"
        "    v = 0\n"
        "    if (version.prerelease or version.build) and (\n"
        '        part == "patch"\n'
        '        or (part == "minor" and version.patch == 0)\n'
        '        or (part == "major" and version.minor == version.patch == 0)\n'
        "    ):\n"
        "        return version\n"
        "    return None"
    )
    bump = RepairCandidate("pkg/v.py", "bump", 1, 9, source, 1, "lines")
    colon = (
        "if (version.prerelease or version.build) and (\n"
        '    part == "patch"\n    or (part == "minor" and version.patch == 0)\n'
        '    or (part == "major" and version.minor == version.patch == 0)\n)\n'
    )
    fixed = lines_edit_in(lines_reply("pkg/v.py", colon, colon.replace("(ver", "(not ver")), bump)
    assert "    if (not version.prerelease or version.build) and (\n" in fixed
    assert "    ):\n        return version\n" in fixed
    # Not alike enough: nothing is applied, with search_replace's own words.
    far = lines_reply("pkg/m.py", "    return w - self.height\n", "    return w * self.h\n")
    with pytest.raises(SearchReplaceError, match="not found"):
        lines_edit_in(far, METHOD)
    # Two runs alike: which one was meant cannot be told, so nothing is applied.
    source = (
        "def f(left_total):\n    left_total = left_total + 1\n    left_total = left_total + 2\n"
    )
    twice = RepairCandidate("pkg/m.py", "f", 1, 3, source + "    return left_total", 1, "lines")
    ambiguous = lines_reply("pkg/m.py", "    left_total = left_total + 3\n", "    pass\n")
    with pytest.raises(SearchReplaceError, match="not found"):
        lines_edit_in(ambiguous, twice)


SIMPLE = RepairCandidate(
    "webcolors/_html5.py",
    "parse_simple",
    40,
    44,
    "def parse_simple(value):\n"
    "    if isinstance(value, str) or len(value) != 7:\n"
    '        raise ValueError("not a simple color")\n'
    "    return value.lower()",
    1,
    "lines",
)
FIXED_SIMPLE = (
    "def parse_simple(value):\n"
    "    if not isinstance(value, str) or len(value) != 7:\n"
    '        raise ValueError("not a simple color")\n'
    "    return value.lower()\n"
)


def test_a_fix_written_into_both_parts_of_a_block_is_applied_as_written():
    # webcolors-02's third ask: the fixed line as SEARCH and as REPLACE. Mending the REPLACE
    # part like a slip would change nothing, so it is taken as the model wrote it.
    line = "if not isinstance(value, str) or len(value) != 7:\n"
    assert lines_edit_in(lines_reply(SIMPLE.path, line, line), SIMPLE) == FIXED_SIMPLE


def test_a_lines_reply_cut_off_in_its_replace_part_or_closed_twice_still_applies():
    search = "if isinstance(value, str) or len(value) != 7:"
    fixed = "if not isinstance(value, str) or len(value) != 7:"
    # The reply ends after the REPLACE lines: no '>>>>>>> REPLACE', no EOF.
    cut = f"```bash\nsearch_replace {SIMPLE.path} <<'EOF'\n<<<<<<< SEARCH\n{search}\n=======\n{fixed}\n```"
    assert lines_edit_in(cut, SIMPLE) == FIXED_SIMPLE
    # A second '=======' where '>>>>>>> REPLACE' belongs, then the marker.
    twice = lines_reply(SIMPLE.path, search + "\n", fixed + "\n=======\n")
    assert lines_edit_in(twice, SIMPLE) == FIXED_SIMPLE
    # Cut off before its REPLACE part: there is nothing to apply, in search_replace's words.
    early = f"```bash\nsearch_replace {SIMPLE.path} <<'EOF'\n<<<<<<< SEARCH\n{search}\n```"
    with pytest.raises(SearchReplaceError, match="missing '=======' and '>>>>>>> REPLACE'"):
        lines_edit_in(early, SIMPLE)


def test_a_function_over_lines_over_is_asked_for_its_lines_up_to_a_longer_cap(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(100))
    (tmp_path / "big.py").write_text(
        f"def big():\n{body}    return x0 - 1\n\n\ndef small():\n    return big() + 1\n"
    )
    (tmp_path / "test_big.py").write_text(
        "from big import small\n\ndef test_small():\n    assert small() == 1\n"
    )
    git("init", "-q", cwd=tmp_path)
    git("add", ".", cwd=tmp_path)
    report = parse_test_output(tmp_path, pytest_output(tmp_path))
    whole = {c.name: c.form for c in repair_candidates(tmp_path, report, 5)}
    assert whole == {"small": "function"}  # 102 lines is too long to ask for whole
    forms = {c.name: c.form for c in repair_candidates(tmp_path, report, 5, lines_over=30)}
    assert forms == {"small": "function", "big": "lines"}


def test_a_lines_answer_is_applied_tested_and_kept(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 3, lines_over=3)
    fix = next(c for c in candidates if c.name == "to_csv")
    assert fix.form == "lines" and fix.end - fix.start + 1 == 6
    reply = lines_reply(
        "inventory/export.py",
        BUGGY_LOOP,
        "    for row in rows:\n        lines.append(format_row(row))\n",
    )
    model = ScriptedModel([reply])
    run, runs = pytest_runner(example_repo)
    result = direct_repair(model, [], example_repo, [fix], run, budget_s=60)
    assert [t.outcome for t in result.tries] == ["passed"] and runs == [0]
    diff = git("diff", "--numstat", cwd=example_repo)
    assert diff.split()[:3] == ["2", "2", "inventory/export.py"]


# --- real files, real test runs ------------------------------------------------------------


def test_candidates_are_the_ranked_functions_with_the_one_at_fault_among_them(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 3)
    assert 1 <= len(candidates) <= 3
    names = [c.name for c in candidates]
    assert "to_csv" in names
    found = candidates[names.index("to_csv")]
    assert found.path == "inventory/export.py" and BUGGY_LOOP.strip() in found.source
    assert all(not c.path.startswith("tests/") for c in candidates)
    assert repair_candidates(example_repo, report, 0) == []


def test_a_name_defined_twice_in_a_file_is_not_asked_for(tmp_path):
    (tmp_path / "box.py").write_text(
        "class Box:\n    def __init__(self, w):\n        self._w = w\n\n"
        "    @property\n    def width(self):\n        return self._w + 1\n\n"
        "    @width.setter\n    def width(self, value):\n        self._w = value\n\n"
        "    def area(self):\n        return self.width * self.width\n"
    )
    (tmp_path / "test_box.py").write_text(
        "from box import Box\n\ndef test_area():\n    assert Box(2).area() == 4\n"
    )
    git("init", "-q", cwd=tmp_path)
    git("add", ".", cwd=tmp_path)
    report = parse_test_output(tmp_path, pytest_output(tmp_path))
    names = [c.name for c in repair_candidates(tmp_path, report, 5)]
    assert "Box.area" in names and "Box.width" not in names
    assert len(names) == len(set(names))


def test_wrong_and_unchanged_answers_are_put_back_and_the_passing_one_is_kept(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 3)
    others = [c for c in candidates if c.name != "to_csv"]
    fix = next(c for c in candidates if c.name == "to_csv")
    ordered = [*others, fix]
    assert "format_row" in [c.name for c in others]
    # A wrong change to format_row: the tests still fail, so it is put back.
    row = next(c for c in others if c.name == "format_row")
    wrong = {"format_row": row.source.replace("SEPARATOR.join", "';'.join") + "\n"}
    model = ByFunction({**wrong, "to_csv": FIXED_TO_CSV})
    run, runs = pytest_runner(example_repo)
    prefix = [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}]
    before = {p: p.read_text() for p in example_repo.rglob("*.py")}
    seen = []
    result = direct_repair(
        model, prefix, example_repo, ordered, run, budget_s=60, on_try=seen.append
    )
    assert [t.candidate.name for t in result.tries] == [c.name for c in ordered]
    assert result.passed is not None and result.passed.candidate.name == "to_csv"
    assert seen == result.tries
    assert result.tries[-1].outcome == "passed" and runs[-1] == 0
    outcomes = {t.candidate.name: t.outcome for t in result.tries}
    assert outcomes.pop("format_row") == "failed" and outcomes.pop("to_csv") == "passed"
    assert set(outcomes.values()) <= {"unchanged"}
    assert len(runs) == 2  # an unchanged function needs no test run
    # Every request is a branch off the same prefix; only the fix is left in the tree.
    assert all(p == prefix for p in model.prefixes)
    for path, text in before.items():
        now = path.read_text()
        if path.name == "export.py":
            assert "for row in rows:" in now and BUGGY_LOOP not in now
            assert '"""Join one row' in now  # the rest of the file as it was
        else:
            assert now == text, path


def test_no_candidate_passes_and_the_tree_is_left_as_it_was(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 2)
    fix = next(c for c in candidates if c.name == "to_csv")
    still_wrong = fix.source.replace("len(rows) - 1", "len(rows) - 2") + "\n"
    model = ByFunction({"to_csv": still_wrong})
    run, runs = pytest_runner(example_repo)
    result = direct_repair(model, [], example_repo, candidates, run, budget_s=60)
    assert result.passed is None
    assert {t.candidate.name: t.outcome for t in result.tries}["to_csv"] == "failed"
    assert git("status", "--porcelain", cwd=example_repo) == ""


def test_the_time_budget_stops_a_reply_while_it_streams(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 3)
    model = ScriptedModel([replace_reply("inventory/export.py", "to_csv", FIXED_TO_CSV)] * 3)
    result = direct_repair(model, [], example_repo, candidates, lambda: None, budget_s=0)
    assert [t.outcome for t in result.tries] == ["stopped"]
    assert "used up" in result.stopped
    assert git("status", "--porcelain", cwd=example_repo) == ""


class CopiesWhenCold(ByFunction):
    """Writes each function back unchanged at the attempt's own temperature (None) and
    answers from `answers` only when asked at a set one, as the bundled model did with the
    example's to_csv (3 of 3 copies at 0.2, 3 of 5 fixes at 0.7)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(answers)
        self.sampling: list[tuple[float | None, int | None]] = []

    def complete(self, messages, temperature=None, seed=None, **kw):
        self.sampling.append((temperature, seed))
        if temperature is None:
            saved, self.answers = self.answers, {}
            try:
                return super().complete(messages, **kw)
            finally:
                self.answers = saved
        return super().complete(messages, **kw)


def test_the_first_ranked_function_is_asked_again_soonest():
    order = [(c, n) for c, n in ask_order(["f1", "f2", "f3", "f4", "f5"], 3)]
    assert order[:9] == [
        ("f1", 1), ("f2", 1), ("f1", 2), ("f3", 1), ("f2", 2),
        ("f4", 1), ("f1", 3), ("f3", 2), ("f5", 1),
    ]  # fmt: skip
    assert sorted(order) == [(f, n) for f in ["f1", "f2", "f3", "f4", "f5"] for n in (1, 2, 3)]
    assert ask_order(["f1", "f2"], 1) == [("f1", 1), ("f2", 1)]


def test_later_asks_are_at_the_repair_temperature_until_a_rewrite_passes(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    candidates = repair_candidates(example_repo, report, 3)
    model = CopiesWhenCold({"to_csv": FIXED_TO_CSV})
    run, runs = pytest_runner(example_repo)
    result = direct_repair(
        model, [], example_repo, candidates, run, budget_s=60, samples=3, temperature=0.7, seed=7
    )
    # In ask_order, up to to_csv's first ask at 0.7, whose rewrite passes.
    order = ask_order(candidates, 3)
    until = next(i for i, (c, n) in enumerate(order) if c.name == "to_csv" and n == 2)
    assert model.asked == [c.name for c, _ in order[: until + 1]]
    assert [t.sample for t in result.tries] == [n for _, n in order[: until + 1]]
    assert all(t.outcome == "unchanged" for t in result.tries[:-1])
    assert result.passed is not None and result.passed.sample == 2
    cold = [sampling for sampling, (_, n) in zip(model.sampling, order, strict=False) if n == 1]
    assert cold == [(None, None)] * len(cold)
    later = [sampling for sampling, (_, n) in zip(model.sampling, order, strict=False) if n > 1]
    assert later and all(t == 0.7 for t, _ in later) and len({s for _, s in later}) == len(later)
    assert runs == [0]  # the unchanged copies cost no test run


def test_a_rewrite_already_tried_is_not_tested_again(example_repo):
    report = parse_test_output(example_repo, pytest_output(example_repo))
    fix = next(c for c in repair_candidates(example_repo, report, 3) if c.name == "to_csv")
    still_wrong = fix.source.replace("len(rows) - 1", "len(rows) - 2") + "\n"
    model = ByFunction({"to_csv": still_wrong})
    run, runs = pytest_runner(example_repo)
    result = direct_repair(
        model, [], example_repo, [fix], run, budget_s=60, samples=3, temperature=0.7
    )
    assert [t.outcome for t in result.tries] == ["failed", "repeated", "repeated"]
    assert len(runs) == 1 and result.passed is None
    assert git("status", "--porcelain", cwd=example_repo) == ""


# --- in an attempt -------------------------------------------------------------------------


def run_with(repo, tmp_path, model, **settings):
    loaded = load_settings({"sandbox": SANDBOX, "repair": True, **settings}, cwd=tmp_path)
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(repo))
    result = run_task(task, loaded, model=model)
    return result, read_events(run_dir_for(loaded, result.task_id) / "events.jsonl")


def test_a_passing_repair_is_committed_and_the_agent_does_not_run(example_repo, tmp_path):
    model = ByFunction({"to_csv": FIXED_TO_CSV})
    result, events = run_with(example_repo, tmp_path, model)
    assert {e.data["form"] for e in events if e.type == "repair.tried"} == {"function"}
    assert result.status == "passed" and result.exit_reason == "repaired"
    assert result.turns == 0 and result.usage.prompt_tokens == 50 * len(model.asked)
    types = [e.type for e in events]
    assert "model.reply" not in types and "command.started" not in types
    tried = [e.data for e in events if e.type == "repair.tried"]
    assert tried[-1]["function"] == "to_csv" and tried[-1]["outcome"] == "passed"
    runs = {e.id: e.data for e in events if e.type == "tests.ran"}
    assert runs[tried[-1]["test_event"]]["phase"] == "repair"
    after = [d for d in runs.values() if d["phase"] == "after"]
    assert after and after[0]["same_as"] == tried[-1]["test_event"]
    committed = git("show", f"{result.branch}:inventory/export.py", cwd=example_repo)
    assert "for row in rows:" in committed
    # The PR's evidence carries the tries.
    notes = run_evidence(events, result.test_command)["notes"]
    assert [t["outcome"] for t in notes["repair"]][-1] == "passed"
    # The user's checkout is untouched.
    assert BUGGY_LOOP in (example_repo / "inventory" / "export.py").read_text()


class RepairThenAgent(ByFunction):
    """Repair requests answered unchanged; the agent's turns from a script."""

    def __init__(self, turns: list[str]) -> None:
        super().__init__({})
        self.agent = ScriptedModel(turns)

    def complete(self, messages, **kw):
        if "most likely reach `" in messages[-1]["content"]:
            return super().complete(messages, **kw)
        return self.agent.complete(messages, **kw)


def test_after_repair_fails_the_agent_starts_from_the_same_first_message(example_repo, tmp_path):
    fix = (
        "```bash\nsed -i 's/for i in range(len(rows) - 1):/for i in range(len(rows)):/' "
        "inventory/export.py\n```"
    )
    model = RepairThenAgent([fix, FINISH])
    result, events = run_with(example_repo, tmp_path, model)
    assert result.status == "passed" and result.exit_reason == "finished"
    outcomes = [e.data["outcome"] for e in events if e.type == "repair.tried"]
    assert outcomes and set(outcomes) == {"unchanged"}
    first_turn = model.agent.seen[0]
    assert first_turn[:2] == model.prefixes[0]
    assert result.usage.prompt_tokens == 50 * len(outcomes) + 100 * 2


TOOLS_FINISH = {"tool_calls": [{"id": "1", "name": "finish", "arguments": '{"summary": "x"}'}]}


@pytest.mark.parametrize(
    ("setting", "finish"), [({"repair": False}, FINISH), ({"protocol": "tools"}, TOOLS_FINISH)]
)
def test_repair_is_not_tried_when_off_or_with_the_tools_protocol(
    example_repo, tmp_path, setting, finish
):
    # The finish is refused twice (the tests fail), then taken as the last word.
    model = RepairThenAgent([finish] * 3)
    result, events = run_with(example_repo, tmp_path, model, **setting)
    assert result.status == "failed", result.exit_reason
    assert not [e for e in events if e.type == "repair.tried"]
    assert model.asked == []


class AnswersInLines(ByFunction):
    """Answers the request for to_csv with a SEARCH/REPLACE block of its loop; any other
    request with no block."""

    def complete(self, messages, on_text=None, **kw):
        request = messages[-1]["content"]
        self.asked.append(request.split("most likely reach `", 1)[1].split("`", 1)[0])
        self.prefixes.append(messages[:-1])
        text = "The bug is not in this function."
        if self.asked[-1] == "to_csv":
            fixed = "    for row in rows:\n        lines.append(format_row(row))\n"
            text = lines_reply("inventory/export.py", BUGGY_LOOP, fixed)
        return Reply(text=text, usage=Usage(prompt_tokens=50, completion_tokens=20))


def test_in_an_attempt_a_function_over_repair_lines_over_is_asked_for_its_lines(
    example_repo, tmp_path
):
    model = AnswersInLines({})
    result, events = run_with(example_repo, tmp_path, model, repair_lines_over=3)
    assert result.status == "passed" and result.exit_reason == "repaired"
    tried = [e.data for e in events if e.type == "repair.tried"]
    assert tried[-1]["function"] == "to_csv" and tried[-1]["form"] == "lines"
    assert "<<<<<<< SEARCH" in tried[-1]["reply"]  # kept, to be read afterwards
    assert {t["outcome"] for t in tried[:-1]} <= {"no definition"}
    committed = git("show", f"{result.branch}:inventory/export.py", cwd=example_repo)
    assert "for row in rows:" in committed and '"""Join one row' in committed
