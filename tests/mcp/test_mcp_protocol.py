"""MCP tools in the two protocols and the prompts, without a server."""

from __future__ import annotations

import json

import pytest

from pullsmith.agent.prompts import TaskContext, prompts_for
from pullsmith.agent.protocol import TOOLS, FormatError, protocol_for
from pullsmith.mcp.tools import McpCall, McpTool, with_native_names
from pullsmith.models.base import Reply

SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
LOOKUP = with_native_names([McpTool("fixes", "lookup", "Look up a fix.", SCHEMA)])[0]
CTX = TaskContext(instruction="fix it", files="a.py")


def tool_reply(name: str, arguments: str) -> Reply:
    return Reply(text="", tool_calls=[{"id": "c1", "name": name, "arguments": arguments}])


def test_native_names_are_valid_and_unique():
    tools = with_native_names(
        [
            McpTool("docs", "search.v2"),
            McpTool("docs", "search_v2"),
            McpTool("docs", "x" * 80),
        ]
    )
    names = [tool.native_name for tool in tools]
    assert names[:2] == ["mcp__docs__search_v2", "mcp__docs__search_v2_2"]
    assert len(names[2]) == 64 and len(set(names)) == 3


def test_the_tools_protocol_offers_mcp_tools_after_its_own_and_parses_their_calls():
    wire = protocol_for("tools", [LOOKUP])
    assert wire.request()["tools"][: len(TOOLS)] == TOOLS
    native = wire.request()["tools"][-1]["function"]
    assert native["name"] == "mcp__fixes__lookup" and native["parameters"] == SCHEMA
    action = wire.parse(tool_reply("mcp__fixes__lookup", json.dumps({"key": "k"})))
    assert action.mcp == McpCall("fixes", "lookup", {"key": "k"}) and not action.finish
    with pytest.raises(FormatError, match="must be a JSON object; its arguments are: key"):
        wire.parse(tool_reply("mcp__fixes__lookup", "[1]"))
    with pytest.raises(FormatError, match="`finish` \\(end the task\\), `mcp__fixes__lookup`"):
        wire.parse(tool_reply("nope", "{}"))
    assert protocol_for("tools").request() == {"tools": TOOLS}  # none: as before


def test_the_text_protocol_takes_an_mcp_line_only_when_the_run_has_mcp_tools():
    text = 'Ask.\n```bash\nmcp fixes lookup \'{"key": "k"}\'\n```'
    action = protocol_for("text", [LOOKUP]).parse(Reply(text=text))
    assert action.mcp == McpCall("fixes", "lookup", {"key": "k"}) and action.command == ""
    # Without MCP tools, the same block is a command for bash.
    assert protocol_for("text").parse(Reply(text=text)).command.startswith("mcp fixes lookup")
    # A block that does more than the call is a command too.
    both = "```bash\nmcp fixes lookup '{}'\nls\n```"
    assert protocol_for("text", [LOOKUP]).parse(Reply(text=both)).mcp is None
    with pytest.raises(FormatError, match="must be a JSON object"):
        protocol_for("text", [LOOKUP]).parse(Reply(text="```bash\nmcp fixes lookup '[1]'\n```"))
    with pytest.raises(FormatError, match="words after mcp"):
        protocol_for("text", [LOOKUP]).parse(Reply(text="```bash\nmcp fixes\n```"))


@pytest.mark.parametrize("protocol", ["text", "tools"])
def test_the_prompt_gains_a_closing_mcp_section_only_with_tools(protocol):
    plain_system, plain_first = prompts_for(protocol, CTX)
    system, first = prompts_for(protocol, CTX, mcp_tools=[LOOKUP])
    assert "MCP" not in plain_system
    assert system.startswith(plain_system) and first == plain_first  # appended, nothing moved
    assert "Look up a fix." in system[len(plain_system) :]
    name = "`mcp__fixes__lookup`" if protocol == "tools" else "`mcp fixes lookup`"
    assert name in system
