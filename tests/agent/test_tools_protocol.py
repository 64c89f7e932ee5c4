"""The tools protocol: native `shell` and `finish` calls, parsed, answered and run by the loop."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import ScriptedModel, git
from test_loop import RecordingSandbox

from pullsmith.agent.loop import Agent, AgentLimits
from pullsmith.agent.prompts import (
    TOOLS_CLOSING,
    TOOLS_INTRO,
    TaskContext,
    first_message,
    prompts_for,
    tools_system_prompt,
)
from pullsmith.agent.protocol import (
    NOT_RUN,
    TOOLS,
    FormatError,
    assistant_message,
    parse_tool_calls,
    tool_message,
)
from pullsmith.config import load_settings
from pullsmith.events import EventLog, read_events
from pullsmith.models.base import Reply
from pullsmith.sandbox import bwrap_available, make_sandbox

SANDBOX = "bwrap" if bwrap_available() is None else "none"
_ids = itertools.count(1)


def call(name: str, arguments: object = None, **kwargs: str) -> dict:
    """One tool call as a provider returns it; keyword arguments become its JSON arguments."""
    raw = arguments if arguments is not None else json.dumps(kwargs)
    return {"id": f"call_{next(_ids)}", "name": name, "arguments": raw}


def calls(*items: dict, text: str = "") -> dict:
    return {"text": text, "tool_calls": list(items)}


def shell(command: str, text: str = "") -> dict:
    return calls(call("shell", command=command), text=text)


def finish(summary: str) -> dict:
    return calls(call("finish", summary=summary))


def make_agent(tmp_path, replies, answers=None, verify=None, after_command=None, **limits):
    events = EventLog("t1", tmp_path / "events.jsonl")
    model = ScriptedModel(replies)
    sandbox = RecordingSandbox(answers)
    agent = Agent(
        model,
        sandbox,
        events,
        limits=AgentLimits(**limits),
        verify=verify,
        history_path=tmp_path / "history.json",
        after_command=after_command,
        protocol="tools",
    )
    return agent, model, sandbox, events


def assert_wire_valid(messages: list[dict]) -> None:
    """Every assistant tool call is answered, in order, by the `tool` messages right after it."""
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if message["role"] == "tool":
            raise AssertionError(f"a tool message answers no call: {message}")
        ids = [c["id"] for c in message.get("tool_calls") or []]
        for c in message.get("tool_calls") or []:
            assert c["type"] == "function" and isinstance(c["function"]["arguments"], str)
        answered = [m["tool_call_id"] for m in messages[index : index + len(ids)]]
        assert answered == ids, f"calls {ids} answered by {answered}"
        assert all(m["role"] == "tool" for m in messages[index : index + len(ids)])
        index += len(ids)


def check_conversations(model: ScriptedModel) -> None:
    for seen in model.seen:
        assert_wire_valid(seen)
    for earlier, later in itertools.pairwise(model.seen):
        assert later[: len(earlier)] == earlier  # append-only


# parse_tool_calls -----------------------------------------------------------------------------


def test_shell_and_finish_calls_become_actions():
    action = parse_tool_calls(Reply(text="", tool_calls=[call("shell", command="ls -la\n")]))
    assert action.command == "ls -la" and not action.finish and action.note == ""
    action = parse_tool_calls(Reply(text="", tool_calls=[call("finish", summary=" fixed it ")]))
    assert action.finish and action.command == "" and action.summary == "fixed it"
    # Arguments some servers hand over already decoded are taken as they are.
    action = parse_tool_calls(Reply(text="", tool_calls=[call("shell", {"command": "pwd"})]))
    assert action.command == "pwd"


def test_an_unclosed_heredoc_is_closed_as_in_the_text_protocol():
    command = "cat > a.py <<'EOF'\nprint(1)"
    action = parse_tool_calls(Reply(text="", tool_calls=[call("shell", command=command)]))
    assert action.command == "cat > a.py <<'EOF'\nprint(1)\nEOF"


def test_several_calls_run_the_first_and_say_so():
    reply = Reply(
        text="",
        tool_calls=[call("shell", command="ls"), call("shell", command="pwd"), call("finish")],
    )
    action = parse_tool_calls(reply)
    assert action.command == "ls" and action.ignored_calls == 2
    assert "3 tool calls; I ran only the first" in action.note


@pytest.mark.parametrize(
    ("tool_call", "message"),
    [
        (call("run", command="ls"), "There is no tool called 'run'"),
        (call("", command="ls"), "There is no tool called ''"),
        (call("shell", '{"command": "ls"'), "arguments of your `shell` call are not valid JSON"),
        (call("shell", "ls -la"), "not valid JSON"),
        (call("shell", "{}"), 'needs a string argument "command"'),
        (call("shell", ""), 'needs a string argument "command"'),
        (call("shell", '["ls"]'), 'needs a string argument "command"'),
        (call("shell", '{"command": ["ls"]}'), 'needs a string argument "command"'),
        (call("shell", cmd="ls"), 'needs a string argument "command"'),
        (call("finish", "{}"), 'needs a string argument "summary"'),
        (call("shell", command="  \n"), "empty command"),
    ],
)
def test_bad_calls_are_format_errors_the_model_can_act_on(tool_call, message):
    with pytest.raises(FormatError, match=message) as info:
        parse_tool_calls(Reply(text="", tool_calls=[tool_call]))
    assert str(info.value).rstrip().endswith(".")


def test_no_tool_call_is_a_format_error_unless_a_bash_block_is_there():
    with pytest.raises(FormatError, match="no tool call. Call the `shell` tool"):
        parse_tool_calls(Reply(text="I think the bug is in export.py."))
    action = parse_tool_calls(Reply(text="Look.\n```bash\nls\n```"))
    assert action.command == "ls" and action.via_text
    assert "call the `shell` tool instead" in action.note
    action = parse_tool_calls(Reply(text='finish "done"'))
    assert action.finish and action.summary == "done"


def test_wire_messages():
    reply = Reply(text="", tool_calls=[{"id": "c1", "name": "shell", "arguments": '{"a": 1}'}])
    assert assistant_message(reply) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": '{"a": 1}'}}
        ],
    }
    assert assistant_message(Reply(text="hi")) == {"role": "assistant", "content": "hi"}
    assert tool_message("c1", "out") == {"role": "tool", "tool_call_id": "c1", "content": "out"}
    assert [t["function"]["name"] for t in TOOLS] == ["shell", "finish"]
    assert TOOLS[0]["function"]["parameters"]["required"] == ["command"]
    assert TOOLS[1]["function"]["parameters"]["required"] == ["summary"]


# The loop -------------------------------------------------------------------------------------


def test_tools_run_until_finish_with_tool_messages(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        [shell("ls", text="Look first."), finish("all good")],
        answers={"ls": (0, "a.py\nb.py")},
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "all good" and outcome.turns == 2
    assert sandbox.commands == ["ls"]
    assert model.tools == [TOOLS, TOOLS]
    second = model.seen[1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[2]["content"] == "Look first."
    assert second[2]["tool_calls"][0]["function"]["name"] == "shell"
    assert second[3]["tool_call_id"] == second[2]["tool_calls"][0]["id"]
    # The same observation text as the text protocol: exit code and output.
    assert second[3]["content"] == "exit code 0\n```\na.py\nb.py\n```"
    check_conversations(model)
    types = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert types == [
        "model.reply",
        "command.started",
        "command.finished",
        "model.reply",
        "agent.finished",
    ]
    reply_event = read_events(tmp_path / "events.jsonl")[0]
    assert reply_event.data["tool_calls"][0]["name"] == "shell"
    assert json.loads((tmp_path / "history.json").read_text()) == agent.messages


def test_text_protocol_does_not_offer_tools(tmp_path):
    events = EventLog("t1", tmp_path / "events.jsonl")
    model = ScriptedModel(["```bash\nfinish ok\n```"])
    assert Agent(model, RecordingSandbox(), events).run("s", "t").finished
    assert model.tools == [None]


def test_unknown_protocol_is_refused(tmp_path):
    with pytest.raises(ValueError, match="protocol must be 'text' or 'tools'"):
        Agent(ScriptedModel([]), RecordingSandbox(), EventLog("t1"), protocol="xml")


def test_format_errors_answer_the_bad_call_or_come_as_a_user_message(tmp_path):
    agent, model, sandbox, events = make_agent(
        tmp_path,
        [
            {"text": "Let me think about it."},
            calls(call("run", command="ls")),
            calls(call("shell", "{not json")),
            calls(call("shell", '{"cmd": "ls"}')),
            shell("ls"),
            finish("ok"),
        ],
        format_errors=5,
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and sandbox.commands == ["ls"]
    last = [seen[-1] for seen in model.seen[1:]]
    assert last[0]["role"] == "user" and "no tool call" in last[0]["content"]
    assert last[1]["role"] == "tool" and "no tool called 'run'" in last[1]["content"]
    assert last[2]["role"] == "tool" and "not valid JSON" in last[2]["content"]
    assert last[3]["role"] == "tool" and 'string argument "command"' in last[3]["content"]
    assert last[4]["role"] == "tool" and last[4]["content"].startswith("exit code 0")
    check_conversations(model)
    errors = [e for e in read_events(tmp_path / "events.jsonl") if e.type == "format.error"]
    assert len(errors) == 4


def test_too_many_bad_calls_end_the_run(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path, [calls(call("nope")) for _ in range(5)], format_errors=2
    )
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason == "too many malformed replies"
    assert outcome.turns == 3 and sandbox.commands == []
    check_conversations(model)


def test_several_calls_run_the_first_and_answer_every_one(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        [
            calls(call("shell", command="ls"), call("shell", command="pwd"), call("finish")),
            finish("ok"),
        ],
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and sandbox.commands == ["ls"]
    answers = model.seen[1][3:]
    assert [m["role"] for m in answers] == ["tool", "tool", "tool"]
    assert "3 tool calls; I ran only the first" in answers[0]["content"]
    assert [m["content"] for m in answers[1:]] == [NOT_RUN, NOT_RUN]
    check_conversations(model)


def test_a_bash_block_without_a_tool_call_is_run_with_a_note(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path, ["Here.\n```bash\nls\n```", finish("ok")], answers={"ls": (0, "a.py")}
    )
    assert agent.run("system", "task").finished
    assert sandbox.commands == ["ls"]
    observed = model.seen[1][-1]
    assert observed["role"] == "user" and "a.py" in observed["content"]
    assert "call the `shell` tool instead" in observed["content"]
    check_conversations(model)


def test_repeated_calls_are_refused_and_raise_the_temperature(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        [shell("ls"), shell("ls"), shell("ls"), shell("pwd"), finish("ok")],
        format_errors=5,
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and sandbox.commands == ["ls", "pwd"]
    assert model.temperatures == [None, None, 0.7, 0.9, None]
    refusal = model.seen[2][-1]
    assert refusal["role"] == "tool" and "You sent exactly this reply before" in refusal["content"]
    check_conversations(model)


def test_finish_is_verified_and_the_rejection_answers_the_call(tmp_path):
    verdicts = ["tests still fail: test_x", None]
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        [finish("done"), shell("fix"), finish("done")],
        verify=lambda: verdicts.pop(0),
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "done" and outcome.turns == 3
    assert sandbox.commands == ["fix"]
    rejection = model.seen[1][-1]
    assert rejection["role"] == "tool" and "tests still fail: test_x" in rejection["content"]
    assert rejection["tool_call_id"] == model.seen[1][-2]["tool_calls"][0]["id"]
    assert "finish.rejected" in [e.type for e in read_events(tmp_path / "events.jsonl")]
    check_conversations(model)


def test_after_command_notes_reach_the_tool_message(tmp_path):
    seen = []

    def after(command, result):
        seen.append((command, result.exit_code))
        return "Files changed so far: a.py"

    agent, model, _, _ = make_agent(
        tmp_path, [shell("edit"), finish("ok")], answers={"edit": (1, "oops")}, after_command=after
    )
    assert agent.run("system", "task").finished
    assert seen == [("edit", 1)]
    content = model.seen[1][-1]["content"]
    assert content.startswith("exit code 1\n```\noops\n```")
    assert content.endswith("Files changed so far: a.py")


def test_limits_apply_to_tool_calls_too(tmp_path):
    agent, _, _, _ = make_agent(
        tmp_path, [shell(f"ls {n}") for n in range(5)], max_turns=3, format_errors=5
    )
    assert agent.run("system", "task").exit_reason == "turn limit reached (3 turns)"
    agent, _, _, _ = make_agent(tmp_path, [shell(f"ls {n}") for n in range(5)], max_tokens=200)
    assert agent.run("system", "task").exit_reason == "token limit reached (200 tokens)"
    # The context estimate reads tool messages and content-less assistant messages.
    agent, _, _, _ = make_agent(
        tmp_path,
        [shell("x" * 3000 + str(n)) for n in range(5)],
        context_tokens=1500,
        reply_tokens=500,
        compact=False,
    )
    assert agent.run("system", "task").exit_reason == "context window full (1500 tokens)"


def test_tools_run_edits_a_file_in_a_real_sandbox(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "area.py").write_text("def area(w, h):\n    return w + h\n")
    sandbox = make_sandbox(SANDBOX, workspace)
    model = ScriptedModel(
        [
            shell("sed -i 's/w + h/w * h/' area.py && cat area.py"),
            shell("python3 -c 'import area; print(area.area(3, 4))'"),
            finish("area multiplies"),
        ]
    )
    events = EventLog("t1", tmp_path / "events.jsonl")
    try:
        agent = Agent(model, sandbox, events, protocol="tools")
        outcome = agent.run(tools_system_prompt(), "Fix area.")
    finally:
        sandbox.close()
    assert outcome.finished and outcome.summary == "area multiplies"
    assert (workspace / "area.py").read_text() == "def area(w, h):\n    return w * h\n"
    assert "return w * h" in model.seen[1][-1]["content"]
    assert model.seen[2][-1]["content"].startswith("exit code 0\n```\n12\n```")
    check_conversations(model)


# Prompts and the runner -----------------------------------------------------------------------


def test_tools_prompts_ask_for_calls_not_bash_blocks():
    ctx = TaskContext(instruction="Fix it.", files="a.py")
    system, first = prompts_for("tools", ctx)
    assert "`shell`" in system and "`finish`" in system
    assert "```bash" not in first and first.endswith(
        "Call the `shell` tool with your first command."
    )
    assert first.startswith("Task: Fix it.")
    assert prompts_for("text", ctx)[1] == first_message(ctx)
    # The edit forms are taught as commands to pass to `shell`, not as ```bash blocks.
    assert "```bash\n" not in system and "apply_patch <<'EOF'" in system
    system, _ = prompts_for("tools", ctx, ("whole-file",))
    assert "cat > path/to/file.py <<'EOF'" in system and "apply_patch" not in system


def test_runner_uses_the_resolved_protocol(example_repo, tmp_path):
    from pullsmith.attempt import run_dir_for
    from pullsmith.engine import run_task
    from pullsmith.task import Task

    settings = load_settings({"sandbox": SANDBOX, "protocol": "tools"}, cwd=tmp_path)
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(example_repo))
    run_dir = run_dir_for(settings, task.task_id)
    fix = (
        "sed -i 's/for i in range(len(rows) - 1):/for row in rows:/; "
        "s/format_row(rows\\[i\\])/format_row(row)/' inventory/export.py"
    )
    model = ScriptedModel([shell(fix), finish("to_csv exports every row")])
    result = run_task(task, settings, model=model)
    assert result.status == "passed", result.exit_reason
    system, first = model.seen[0][0]["content"], model.seen[0][1]["content"]
    assert system.startswith(TOOLS_INTRO) and first.endswith(TOOLS_CLOSING)
    assert model.tools[0] == TOOLS
    started = read_events(run_dir / "events.jsonl")[0]
    assert started.type == "task.started" and started.data["protocol"] == "tools"
    assert "for row in rows:" in git(
        "show", f"{result.branch}:inventory/export.py", cwd=example_repo
    )
