"""Edit feedback: what the model is told after a command changed (or did not change) files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import ScriptedModel
from test_loop import RecordingSandbox

from pullsmith.agent.feedback import (
    EDIT_FEEDBACK_CHARS,
    WRITES_FILES,
    ChangeReporter,
    RewriteGuard,
)
from pullsmith.agent.loop import Agent
from pullsmith.events import EventLog, read_events
from pullsmith.sandbox import make_sandbox
from pullsmith.sandbox.base import CommandResult


class FakeWorkspace:
    """A diff that changes when `edit` is called."""

    def __init__(self) -> None:
        self.text = ""
        self.files: list[tuple[str, int, int]] = []

    def edit(self, path: str, added: int, removed: int) -> None:
        self.files.append((path, added, removed))
        self.text += f"diff of {path}\n"

    def diff(self) -> str:
        return self.text

    def changed_files(self) -> list[tuple[str, int, int]]:
        return list(self.files)


@dataclass
class Run:
    command: str
    exit_code: int
    output: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def ok(command: str, output: str = "") -> CommandResult:
    return CommandResult(command=command, exit_code=0, output=output, duration_s=0.01)


def reporter(tmp_path, runs=(), protocol="text", test_command="pytest -q"):
    workspace = FakeWorkspace()
    events = EventLog("t1", tmp_path / "events.jsonl")
    queue = list(runs)
    asked: list[int] = []

    def run_tests():
        asked.append(1)
        return queue.pop(0) if queue else None

    hook = ChangeReporter(workspace, events, test_command, run_tests, protocol)
    return hook, workspace, events, asked


WRITE = "cat > a.py <<'EOF'\nx = 1\nEOF"


def test_a_write_that_changed_nothing_is_pointed_out(tmp_path):
    hook, _, events, asked = reporter(tmp_path)
    assert hook(WRITE, ok(WRITE)) == (
        "Note: every file is exactly as it was before this command; it changed nothing."
    )
    # A command that does not write files gets no note when nothing changed.
    assert hook("ls", ok("ls", "a.py")) is None
    assert asked == []
    events.close()
    edits = [e for e in read_events(tmp_path / "events.jsonl") if e.type == "edit"]
    assert [(e.data["form"], e.data["ok"]) for e in edits] == [("whole-file", True)]


def test_a_change_is_listed_and_the_tests_run(tmp_path):
    hook, workspace, _, asked = reporter(tmp_path, [Run("pytest -q", 1, "1 failed\n")])
    workspace.edit("a.py", 2, 1)
    note = hook(WRITE, ok(WRITE))
    assert note == (
        "Files changed so far: a.py (+2 -1)."
        "\nAfter this change `pytest -q` exits with code 1:\n```\n1 failed\n```"
    )
    assert asked == [1]
    # The same diff again is a command that changed nothing.
    assert "it changed nothing" in hook(WRITE, ok(WRITE))


@pytest.mark.parametrize(
    ("protocol", "wording", "not_wording"),
    [
        ("text", 'reply with a ```bash block holding only: finish "one sentence', "`finish` tool"),
        ("tools", "call the `finish` tool with one sentence saying what you changed", "```bash"),
    ],
)
def test_passing_tests_say_how_to_finish_in_the_protocols_words(
    tmp_path, protocol, wording, not_wording
):
    hook, workspace, _, _ = reporter(tmp_path, [Run("pytest -q", 0, "3 passed")], protocol)
    workspace.edit("a.py", 1, 1)
    note = hook("sed -i s/a/b/ a.py", ok("sed -i s/a/b/ a.py"))
    assert "exits with code 0" in note and "The tests pass now. If the task is done" in note
    assert wording in note and not_wording not in note


def test_a_command_that_ran_the_tests_itself_is_not_followed_by_another_run(tmp_path):
    hook, workspace, _, asked = reporter(tmp_path, [Run("pytest -q", 0, "")])
    workspace.edit("a.py", 1, 0)
    command = "sed -i s/a/b/ a.py && pytest -q"
    assert hook(command, ok(command)) == "Files changed so far: a.py (+1 -0)."
    assert asked == []


def test_no_test_command_or_no_run_leaves_the_list_of_changes(tmp_path):
    hook, workspace, _, asked = reporter(tmp_path, test_command=None)
    workspace.edit("a.py", 1, 0)
    assert hook(WRITE, ok(WRITE)) == "Files changed so far: a.py (+1 -0)."
    assert asked == []
    hook, workspace, _, asked = reporter(tmp_path)  # run_tests returns None
    workspace.edit("a.py", 1, 0)
    assert hook(WRITE, ok(WRITE)) == "Files changed so far: a.py (+1 -0)."
    assert asked == [1]


def test_a_change_undone_says_everything_is_back(tmp_path):
    hook, workspace, _, _ = reporter(tmp_path, test_command=None)
    workspace.edit("a.py", 1, 0)
    hook(WRITE, ok(WRITE))
    workspace.files, workspace.text = [], ""
    assert hook("rm a.py", ok("rm a.py")) == (
        "Files changed so far: none (everything is back as it started)."
    )


def test_long_test_output_is_clipped(tmp_path):
    output = "HEAD" + "x" * 10_000 + "TAIL"
    hook, workspace, _, _ = reporter(tmp_path, [Run("pytest -q", 1, output)])
    workspace.edit("a.py", 1, 0)
    note = hook(WRITE, ok(WRITE))
    assert "HEAD" in note and "TAIL" in note and "characters cut" in note
    assert len(note) < EDIT_FEEDBACK_CHARS + 300


def test_writes_files_recognises_the_edit_commands():
    for command in ("echo x > a", "apply_patch <<'EOF'", "sed -i s/a/b/ f", "mv a b", "rm a"):
        assert WRITES_FILES.search(command), command
    for command in ("ls", "cat a.py", "grep -n x a.py", "sed -n 1,5p a.py"):
        assert not WRITES_FILES.search(command), command


def test_an_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(ValueError, match="protocol must be 'text' or 'tools'"):
        ChangeReporter(FakeWorkspace(), EventLog("t1"), None, lambda: None, "xml")


def test_the_reporter_is_the_agents_after_command_hook(tmp_path):
    workspace = FakeWorkspace()

    class EditingSandbox(RecordingSandbox):
        def run(self, command, timeout_s=None, stdin=None):
            if command.startswith("sed -i"):
                workspace.edit("a.py", 1, 1)
            return super().run(command, timeout_s, stdin)

    events = EventLog("t1", tmp_path / "events.jsonl")
    hook = ChangeReporter(
        workspace, events, "pytest -q", lambda: Run("pytest -q", 0, "1 passed"), "tools"
    )
    model = ScriptedModel(
        [
            {
                "tool_calls": [
                    {"id": "c1", "name": "shell", "arguments": '{"command": "sed -i x a.py"}'}
                ]
            },
            {"tool_calls": [{"id": "c2", "name": "finish", "arguments": '{"summary": "ok"}'}]},
        ]
    )
    agent = Agent(model, EditingSandbox(), events, after_command=hook, protocol="tools")
    assert agent.run("system", "task").finished
    answer = model.seen[1][-1]
    assert answer["role"] == "tool" and answer["tool_call_id"] == "c1"
    assert "Files changed so far: a.py (+1 -1)." in answer["content"]
    assert answer["content"].endswith(
        "call the `finish` tool with one sentence saying what you changed."
    )


# --------------------------------------------------------------------------------------------
# RewriteGuard: a whole-file rewrite that would wreck the file is refused before it runs

LONG = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(40))  # 120 lines


def rewrite(path: str, body: str) -> str:
    return f"cat > {path} <<'EOF'\n{body}EOF\npython -c 'import m'"


def guard(tmp_path, forms=("whole-file", "replace-function")):
    (tmp_path / "m.py").write_text(LONG)
    (tmp_path / "short.py").write_text("x = 1\n")
    events = EventLog("t1", tmp_path / "events.jsonl")
    return RewriteGuard(tmp_path, events, forms), events


def test_a_rewrite_that_drops_most_of_a_long_file_is_refused(tmp_path):
    check, events = guard(tmp_path)
    said = check(rewrite("m.py", "def f7():\n    return 8\n"))
    assert said is not None and said.startswith("I did not run that command:")
    assert "replace the 120 lines of m.py with 2" in said and "`replace_function`" in said
    events.close()
    edit = next(e for e in read_events(tmp_path / "events.jsonl") if e.type == "edit")
    assert (edit.data["form"], edit.data["ok"]) == ("whole-file", False)


def test_a_rewrite_that_keeps_the_file_or_writes_a_short_or_new_one_runs(tmp_path):
    check, _ = guard(tmp_path)
    assert check(rewrite("m.py", LONG.replace("return 7", "return 8"))) is None
    assert check(rewrite("short.py", "x = 2\n")) is None
    assert check(rewrite("new.py", "y = 1\n")) is None
    assert check("cat >> m.py <<'EOF'\nz = 1\nEOF") is None  # an append keeps what is there
    assert check(rewrite("../outside.py", "y = 1\n")) is None  # not ours to judge


def test_the_prompts_placeholder_is_never_written(tmp_path):
    check, _ = guard(tmp_path, forms=("whole-file",))
    said = check(rewrite("short.py", "<the complete new content of the file>\n"))
    assert said is not None and "placeholder" in said and "short.py" in said


def test_only_whole_file_taught_suggests_sed(tmp_path):
    check, _ = guard(tmp_path, forms=("whole-file",))
    said = check(rewrite("m.py", "x = 1\n"))
    assert said is not None and "`sed -i` on the lines at fault" in said


def test_the_agent_does_not_run_a_refused_rewrite_and_the_file_stays_whole(tmp_path):
    check, events = guard(tmp_path)
    truncating = (
        "I will fix f7.\n```bash\n" + rewrite("m.py", "def f7():\n    return 8\n") + "\n```"
    )
    fixing = "Only that line then.\n```bash\nsed -i 's/return 7$/return 8/' m.py\n```"
    done = '```bash\nfinish "f7 returns 8"\n```'
    model = ScriptedModel([truncating, fixing, done])
    sandbox = make_sandbox("none", tmp_path)
    try:
        agent = Agent(model, sandbox, events, check_command=check)
        outcome = agent.run("system", "task")
    finally:
        sandbox.close()
        events.close()
    assert outcome.finished
    told = model.seen[1][-1]["content"]
    assert told.startswith("I did not run that command: it would replace the 120 lines of m.py")
    text = (tmp_path / "m.py").read_text()
    assert text == LONG.replace("return 7\n", "return 8\n")
    started = [e.data.get("command") for e in read_events(tmp_path / "events.jsonl")]
    assert not any("cat > m.py" in (c or "") for c in started)
