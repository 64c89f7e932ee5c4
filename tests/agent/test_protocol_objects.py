"""The protocols as objects: the request each builds, how each parses and answers a reply."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedModel
from test_loop import RecordingSandbox

from pullsmith.agent.loop import Agent
from pullsmith.agent.protocol import (
    NOT_RUN,
    TEXT_STOP,
    TOOLS,
    ActionProtocol,
    FormatError,
    TextProtocol,
    ToolsProtocol,
    protocol_for,
)
from pullsmith.events import EventLog
from pullsmith.models.base import Reply


def tool_call(call_id: str, name: str, **arguments: str) -> dict:
    return {"id": call_id, "name": name, "arguments": json.dumps(arguments)}


def test_protocol_for_names_the_two_protocols():
    assert isinstance(protocol_for("text"), TextProtocol)
    assert isinstance(protocol_for("tools"), ToolsProtocol)
    assert protocol_for("text").name == "text" and protocol_for("tools").name == "tools"
    with pytest.raises(ValueError, match="protocol must be 'text' or 'tools', not 'xml'"):
        protocol_for("xml")


def test_requests_carry_the_stop_sequence_or_the_tools():
    text = TextProtocol().request()
    assert text == {"stop": list(TEXT_STOP)}
    text["stop"].append("mutated")  # each request is its own list
    assert TextProtocol().request() == {"stop": ["\n```\n"]}
    assert ToolsProtocol().request() == {"tools": TOOLS}


def test_ask_sends_the_request_and_mends_the_reply():
    model = ScriptedModel([Reply(text="Look.\n```bash\nls", finish_reason="stop")])
    reply = TextProtocol().ask(model, [{"role": "user", "content": "go"}], 0.7)
    assert reply.text == "Look.\n```bash\nls\n```"
    assert model.stops == [["\n```\n"]] and model.tools == [None]
    assert model.temperatures == [0.7]

    # The tools protocol leaves the reply as it came (no stop sequence cut it).
    model = ScriptedModel([Reply(text="```bash\nls", finish_reason="stop")])
    reply = ToolsProtocol().ask(model, [], None)
    assert reply.text == "```bash\nls"
    assert model.tools == [TOOLS] and model.stops == [None]


def test_text_parse():
    action = TextProtocol().parse(Reply(text="```bash\nls\nfinish 'done'\n```"))
    assert action.command == "ls" and action.finish and action.summary == "done"
    with pytest.raises(FormatError, match="no ```bash block"):
        TextProtocol().parse(Reply(text="no block"))
    # The text protocol reads the text only, not tool calls.
    with pytest.raises(FormatError):
        TextProtocol().parse(Reply(text="", tool_calls=[tool_call("c1", "shell", command="ls")]))


def test_tools_parse():
    protocol = ToolsProtocol()
    reply = Reply(text="", tool_calls=[tool_call("c1", "shell", command="ls")])
    assert protocol.parse(reply).command == "ls"
    reply = Reply(text="", tool_calls=[tool_call("c1", "finish", summary="ok")])
    assert protocol.parse(reply).finish
    with pytest.raises(FormatError, match="no tool call"):
        protocol.parse(Reply(text="thinking"))
    with pytest.raises(FormatError, match="no tool called 'run'"):
        protocol.parse(Reply(text="", tool_calls=[tool_call("c1", "run")]))


def test_text_answers_with_a_user_message():
    reply = Reply(text="```bash\nls\n```")
    assert TextProtocol().answer(reply, "exit code 0") == [
        {"role": "user", "content": "exit code 0"}
    ]


def test_tools_answer_the_first_call_and_not_run_the_others():
    reply = Reply(
        text="",
        tool_calls=[
            tool_call("c1", "shell", command="ls"),
            tool_call("c2", "shell", command="pwd"),
            tool_call("c3", "finish", summary="x"),
        ],
    )
    assert ToolsProtocol().answer(reply, "out") == [
        {"role": "tool", "tool_call_id": "c1", "content": "out"},
        {"role": "tool", "tool_call_id": "c2", "content": NOT_RUN},
        {"role": "tool", "tool_call_id": "c3", "content": NOT_RUN},
    ]
    # A reply that made no call is answered by a user message.
    assert ToolsProtocol().answer(Reply(text="hm"), "call a tool") == [
        {"role": "user", "content": "call a tool"}
    ]


def test_the_agent_takes_a_protocol_object_or_its_name(tmp_path):
    events = EventLog("t1", tmp_path / "events.jsonl")
    agent = Agent(ScriptedModel([]), RecordingSandbox(), events, protocol=ToolsProtocol())
    assert agent.protocol == "tools" and isinstance(agent.wire, ToolsProtocol)
    agent = Agent(ScriptedModel([]), RecordingSandbox(), events)
    assert agent.protocol == "text" and isinstance(agent.wire, TextProtocol)


def test_a_protocol_of_ones_own_drives_the_loop(tmp_path):
    class Upper(TextProtocol):
        """Runs every command in upper case: the loop goes through the object for each step."""

        name = "upper"

        def parse(self, reply: Reply):
            action = super().parse(reply)
            return type(action)(command=action.command.upper(), finish=action.finish)

    assert issubclass(Upper, ActionProtocol)
    sandbox = RecordingSandbox()
    model = ScriptedModel(["```bash\nls\n```", "```bash\nfinish\n```"])
    agent = Agent(model, sandbox, EventLog("t1", tmp_path / "e.jsonl"), protocol=Upper())
    assert agent.run("s", "t").finished
    assert sandbox.commands == ["LS"] and model.stops[0] == ["\n```\n"]
