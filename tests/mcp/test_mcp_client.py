"""The MCP client: a real MCP server (tests/mcp/lookup_server.py, written with the SDK, over
stdio) used by whole runs under both protocols, in the sandbox or trusted, failing or hanging."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ScriptedModel, git
from mcp_helpers import INSTRUCTION, LOOKUP_SERVER, SANDBOX, fix_from, server_table, write_config

from pullsmith.attempt import run_dir_for
from pullsmith.config import McpServer, load_settings
from pullsmith.engine import run_task
from pullsmith.events import read_events
from pullsmith.mcp.client import McpHub, launcher_for
from pullsmith.mcp.tools import McpCall
from pullsmith.sandbox import bwrap_available, make_sandbox
from pullsmith.sandbox.policy import agent_policy
from pullsmith.task import Task

FINISH = '```bash\nfinish "to_csv writes every row"\n```'


class LookupModel(ScriptedModel):
    """Asks the MCP tool first, then writes the fix from its answer, runs the tests, finishes."""

    def __init__(self, first: str | dict, protocol: str) -> None:
        super().__init__([first])
        self.protocol = protocol

    def complete(self, messages, temperature=None, tools=None, stop=None, seed=None, on_text=None):
        if len(self.seen) == 1:  # the tool's answer is the last message now
            fixed = fix_from(messages[-1]["content"])
            heredoc = f"cat > inventory/export.py <<'EOF'\n{fixed}EOF"
            if self.protocol == "tools":
                self.replies.append(shell(heredoc, "c2"))
            else:
                self.replies.append(f"The tool says how.\n```bash\n{heredoc}\n```")
            self.replies.append(
                {"tool_calls": [call("finish", "c3", summary="to_csv writes every row")]}
                if self.protocol == "tools"
                else FINISH
            )
        return super().complete(messages, temperature, tools, stop, seed)


def call(name: str, call_id: str, **arguments: object) -> dict:
    return {"id": call_id, "name": name, "arguments": json.dumps(arguments)}


def shell(command: str, call_id: str) -> dict:
    return {"tool_calls": [call("shell", call_id, command=command)]}


def run_with(repo, tmp_path, model, protocol: str, *tables: str, **flags: str):
    write_config(tmp_path, *tables)
    flags = {"sandbox": SANDBOX, "protocol": protocol, **flags}
    settings = load_settings(flags, cwd=tmp_path)
    task = Task(instruction=INSTRUCTION, repo=str(repo))
    result = run_task(task, settings, model=model)
    events = read_events(run_dir_for(settings, task.task_id) / "events.jsonl")
    return result, events


def test_a_tools_protocol_run_calls_the_mcp_tool_natively_and_uses_its_answer(
    example_repo, tmp_path
):
    first = {
        "text": "Let me ask.",
        "tool_calls": [call("mcp__fixes__lookup", "c1", key="export-loop")],
    }
    model = LookupModel(first, "tools")
    result, events = run_with(example_repo, tmp_path, model, "tools", server_table())
    assert result.status == "passed", (result.exit_reason, result.error)
    # The tool was offered natively, with the server's own input schema.
    offered = {tool["function"]["name"]: tool["function"] for tool in model.tools[0]}
    assert {"shell", "finish", "mcp__fixes__lookup", "mcp__fixes__read_text"} <= set(offered)
    schema = offered["mcp__fixes__lookup"]["parameters"]
    assert schema["properties"]["key"]["type"] == "string" and schema["required"] == ["key"]
    assert "Look up the fix" in offered["mcp__fixes__lookup"]["description"]
    assert "`mcp__fixes__lookup`" in model.seen[0][0]["content"]  # the system prompt names it
    # The call and its answer are an event; the answer went back as the call's tool message.
    (called,) = [e.data for e in events if e.type == "mcp.called"]
    assert called["server"] == "fixes" and called["tool"] == "lookup"
    assert called["arguments"] == {"key": "export-loop"}
    assert called["ok"] is True and called["output"] == "for row in rows:"
    answer = model.seen[1][-1]
    assert answer["role"] == "tool" and answer["tool_call_id"] == "c1"
    assert "for row in rows:" in git(
        "show", f"{result.branch}:inventory/export.py", cwd=example_repo
    )
    # No command ran for the call: it is not a shell command.
    commands = [e.data["command"] for e in events if e.type == "command.started"]
    assert not any("lookup" in command for command in commands)


def test_a_text_protocol_run_calls_the_tool_with_an_mcp_line(example_repo, tmp_path):
    first = 'I\'ll ask the fixes server.\n```bash\nmcp fixes lookup \'{"key": "export-loop"}\'\n```'
    model = LookupModel(first, "text")
    result, events = run_with(example_repo, tmp_path, model, "text", server_table())
    assert result.status == "passed", (result.exit_reason, result.error)
    system = model.seen[0][0]["content"]
    assert "mcp fixes lookup" in system and "never passed to bash" in system
    assert "key (string, required)" in system
    assert model.tools[0] is None  # the text protocol offers no native tools
    (called,) = [e.data for e in events if e.type == "mcp.called"]
    assert called["ok"] and called["arguments"] == {"key": "export-loop"}
    assert model.seen[1][-1]["role"] == "user"
    assert "the MCP tool answered" in model.seen[1][-1]["content"]
    assert not any(e.type == "command.started" and "mcp" in e.data["command"] for e in events)


def test_a_tool_error_and_a_bad_mcp_line_are_observations_not_crashes(example_repo, tmp_path):
    replies = [
        '```bash\nmcp fixes lookup \'{"key": "no-such-bug"}\'\n```',
        "```bash\nmcp fixes nosuchtool\n```",
        "```bash\nmcp fixes lookup '{not json'\n```",
        FINISH,
    ]
    model = ScriptedModel(replies)
    # A test command that passes: what counts here is that the run went through to its end.
    result, events = run_with(
        example_repo, tmp_path, model, "text", server_table(), test_command="true"
    )
    assert result.status == "passed" and result.turns == 4, (result.exit_reason, result.error)
    called = [e.data for e in events if e.type == "mcp.called"]
    assert [c["ok"] for c in called] == [False, False]
    assert "no entry for 'no-such-bug'" in called[0]["output"]
    assert (
        "has no tool 'nosuchtool'; its tools are: lookup, read_text, sleep" in called[1]["output"]
    )
    (format_error,) = [e.data for e in events if e.type == "format.error"]
    assert "not valid JSON" in format_error["message"]


def test_servers_that_do_not_start_are_one_warning_each_and_the_run_goes_on(example_repo, tmp_path):
    fixed = fix_from("```\nfor row in rows:\n```")
    replies = [f"```bash\ncat > inventory/export.py <<'EOF'\n{fixed}EOF\n```", FINISH]
    model = ScriptedModel(replies)
    # The model's own fix, checked by a cheap test command: the servers are what is tested.
    flags = {"test_command": "grep -q 'for row in rows' inventory/export.py"}
    tables = [
        server_table("dying", "--die"),
        server_table("hanging", "--hang", startup_timeout=1),
        '[mcp_servers.missing]\ncommand = "no-such-mcp-server-program"\ntrusted = true\n',
    ]
    result, events = run_with(example_repo, tmp_path, model, "text", *tables, **flags)
    assert result.status == "passed", (result.exit_reason, result.error)
    warnings = [e.data["message"] for e in events if e.type == "warning"]
    assert len(warnings) == 3, warnings
    dying, hanging, missing = warnings
    assert dying.startswith("MCP server dying did not start") and "refusing to start" in dying
    assert hanging == (
        "MCP server hanging did not answer within its startup_timeout of 1 s; "
        "the run goes on without it."
    )
    assert missing.startswith("MCP server missing did not start") and "no-such-mcp" in missing
    for warning in warnings:
        assert "\n" not in warning and warning.endswith("the run goes on without it.")
    assert "MCP" not in model.seen[0][0]["content"]  # no tools: no MCP section in the prompt
    # Each server's stderr is kept in the run directory.
    assert "refusing to start" in (Path(result.run_dir) / "mcp-dying.log").read_text()


def test_a_call_past_its_timeout_is_a_failed_call(tmp_path):
    server = McpServer(
        "slow", sys.executable, (str(LOOKUP_SERVER),), call_timeout_s=1, trusted=True
    )
    with McpHub([server], launcher_for(None, tmp_path)) as hub:
        assert hub.started == ["slow"]
        result = hub.call(McpCall("slow", "sleep", {"seconds": 4}))
        unknown = hub.call(McpCall("other", "lookup", {}))
    assert not result.ok and "timed out after 1 s" in result.output
    assert (
        not unknown.ok
        and "There is no MCP server 'other'; the servers are: slow." == unknown.output
    )


def test_enabled_tools_pick_what_is_offered(tmp_path):
    server = McpServer(
        "picky",
        sys.executable,
        (str(LOOKUP_SERVER),),
        enabled_tools=("lookup", "nope"),
        trusted=True,
    )
    with McpHub([server], launcher_for(None, tmp_path)) as hub:
        assert [tool.native_name for tool in hub.tools] == ["mcp__picky__lookup"]
        refused = hub.call(McpCall("picky", "sleep", {"seconds": 0}))
    assert not refused.ok and "its tools are: lookup" in refused.output
    assert hub.failures == [
        "MCP server picky has no tool 'nope' (named in its enabled_tools); the run goes on "
        "without it."
    ]


@pytest.mark.skipif(bwrap_available() is not None, reason=f"bwrap cannot run: {bwrap_available()}")
def test_a_sandboxed_server_cannot_see_a_hidden_file_but_a_trusted_one_can(tmp_path):
    workspace = tmp_path / "work"
    workspace.mkdir()
    (workspace / "secret.txt").write_text("the launch codes")
    (workspace / "notes.txt").write_text("plain notes")
    settings = load_settings({"sandbox": "bwrap"}, cwd=tmp_path)
    policy = agent_policy(settings, hidden=[workspace / "secret.txt"])
    box = make_sandbox("bwrap", workspace, policy)
    servers = [
        McpServer("boxed", sys.executable, (str(LOOKUP_SERVER),)),
        McpServer("host", sys.executable, (str(LOOKUP_SERVER),), trusted=True),
    ]
    try:
        with McpHub(servers, launcher_for(box, workspace)) as hub:
            assert hub.started == ["boxed", "host"], hub.failures

            def read(server: str, name: str) -> str:
                result = hub.call(McpCall(server, "read_text", {"path": str(workspace / name)}))
                assert result.ok, result.output
                return result.output

            assert read("boxed", "notes.txt") == "plain notes"
            assert read("boxed", "secret.txt") == ""  # hidden: it reads as an empty file
            assert read("host", "secret.txt") == "the launch codes"
            # The sandboxed server runs in the workspace, in a PID namespace of its own.
            pid_boxed = hub.call(McpCall("boxed", "read_text", {"path": "/proc/self/stat"}))
            assert pid_boxed.output.split()[0] in {"1", "2", "3", "4"}
    finally:
        box.close()


def test_a_server_in_a_container_sandbox_is_refused_with_a_sentence(tmp_path):
    class Container:
        name = "docker"
        workspace = tmp_path

    server = McpServer("boxed", sys.executable, (str(LOOKUP_SERVER),))
    with McpHub([server], launcher_for(Container(), tmp_path)) as hub:  # type: ignore[arg-type]
        assert hub.started == []
    (failure,) = hub.failures
    assert failure.startswith("MCP server boxed was not started: the docker sandbox can not run")
    assert "trusted = true" in failure and "--sandbox bwrap" in failure
