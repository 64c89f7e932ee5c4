"""The two protocols a model can speak.

text: one fenced shell block per reply, and the finish command.
tools: native tool calls of two functions, `shell(command)` and `finish(summary)`.

When a run has MCP tools (pullsmith.mcp), the protocol objects offer them too: the tools
protocol as native tools `mcp__SERVER__TOOL`, the text protocol as a block holding just the line
`mcp SERVER TOOL 'JSON'`; either parses into an Action whose `mcp` is the call.

Each is an `ActionProtocol` object (`protocol_for(name)`): it builds the request, parses a
reply into an `Action` and answers the reply. The module-level functions are its parts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pullsmith.mcp.tools import McpCall, McpCommandError, McpTool, is_command, parse_command
from pullsmith.models.base import Message, Model, Reply

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
FINISH_LINE = re.compile(r"^\s*finish(?:\s|$)")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


# Ends a text-protocol reply at the close of its first block: only that block runs, and a small
# model left to go on often writes the output it expects, or more blocks, for half a minute.
TEXT_STOP = ("\n```\n",)
FENCE_LINE = re.compile(r"^```", re.MULTILINE)


def close_stopped_block(reply: Reply) -> Reply:
    """Put back the closing fence that the TEXT_STOP sequence took off a reply."""
    if reply.finish_reason != "stop" or len(FENCE_LINE.findall(reply.text)) % 2 == 0:
        return reply
    return dataclasses.replace(reply, text=reply.text.rstrip("\n") + "\n```")


class FormatError(Exception):
    """The reply did not hold a usable command; the message tells the model how to fix it."""


@dataclass(frozen=True)
class Action:
    """What one reply asks for: a command to run, then possibly the end of the task."""

    command: str
    finish: bool = False
    summary: str = ""
    ignored_blocks: int = 0
    # Tools protocol: calls after the first, which are not run.
    ignored_calls: int = 0
    # Tools protocol: the command came from a ```bash block, not from a tool call.
    via_text: bool = False
    # A call of an MCP tool, which pullsmith makes instead of running a command.
    mcp: McpCall | None = None

    @property
    def note(self) -> str:
        """The correction owed to the model when it wrote more than one block or call."""
        notes = []
        if self.via_text:
            notes.append(
                "Note: I ran the ```bash block of your reply, but please call the `shell` "
                "tool instead of writing ```bash blocks."
            )
        if self.ignored_blocks:
            notes.append(
                f"Note: your reply had {self.ignored_blocks + 1} ```bash blocks; I ran only the "
                "first. Send exactly one block per reply and wait for its output."
            )
        if self.ignored_calls:
            notes.append(
                f"Note: your reply had {self.ignored_calls + 1} tool calls; I ran only the "
                "first. Make one call per reply and wait for its result."
            )
        return "\n".join(notes)


def _shell_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang.lower() in SHELL_LANGS]


def _parse_summary(arg: str) -> str:
    arg = arg.strip()
    if not arg:
        return ""
    try:
        return " ".join(shlex.split(arg))
    except ValueError:
        return arg.strip("'\"")


def close_heredocs(command: str) -> str:
    """Add the terminator of a heredoc the model opened but never closed.

    Small models often end the fenced block right after a whole-file heredoc; bash would then
    warn and still write the file, but anything after it would become file content.
    """
    lines = command.splitlines()
    index = 0
    while index < len(lines):
        match = HEREDOC.search(lines[index])
        index += 1
        if not match:
            continue
        delimiter = match.group(2)
        strip_tabs = lines[index - 1][match.start() : match.start() + 3] == "<<-"
        while index < len(lines):
            line = lines[index].lstrip("\t") if strip_tabs else lines[index]
            index += 1
            if line.rstrip() == delimiter:
                break
        else:
            lines.append(delimiter)
            break
    return "\n".join(lines)


def parse_action(text: str) -> Action:
    """Turn a model reply into an Action, or raise FormatError saying what was wrong."""
    blocks = _shell_blocks(text)
    if not blocks:
        # A bare `finish "..."` line is unambiguous; small models often leave out the fence.
        for line in text.splitlines():
            if FINISH_LINE.match(line):
                return Action(command="", finish=True, summary=_parse_summary(line.strip()[6:]))
        raise FormatError(
            "Your reply had no ```bash block. Reply with exactly one ```bash block holding the "
            'command to run next, or `finish "summary"` when the task is done.'
        )
    # Small models often write edit, test run and finish as three blocks in one reply. Running
    # the first and saying so keeps the turn; refusing the whole reply would waste it.
    ignored = len(blocks) - 1
    body = close_heredocs(blocks[0].strip("\n"))
    lines = body.rstrip().splitlines()
    # The finish command ends the block; its summary may span several lines.
    for index in range(len(lines) - 1, -1, -1):
        if FINISH_LINE.match(lines[index]):
            rest = "\n".join(lines[index:]).strip()[len("finish") :]
            return Action(
                command="\n".join(lines[:index]).strip("\n"),
                finish=True,
                summary=_parse_summary(rest),
                ignored_blocks=ignored,
            )
    if not body.strip():
        raise FormatError("Your ```bash block was empty. Put the command to run inside it.")
    return Action(command=body, ignored_blocks=ignored)


# The tools protocol -------------------------------------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": (
                "Run a bash command in the repository root inside a sandbox with no network, "
                "and get back its exit code and output."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command to run."}
                },
                "required": ["command"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "End the task once the change is made and the tests pass.",
            "parameters": {
                "type": "object",
                "properties": {
                    "summary": {
                        "type": "string",
                        "description": "One sentence saying what you changed.",
                    }
                },
                "required": ["summary"],
                "additionalProperties": False,
            },
        },
    },
]
TOOL_ARGUMENTS = {"shell": "command", "finish": "summary"}
# What answers each tool call of a reply after the first: the API needs every call answered.
NOT_RUN = "not run: one call per turn"
USE_THE_TOOLS = (
    "Call the `shell` tool with the command to run next, or the `finish` tool with a "
    "one-sentence summary when the task is done."
)


def parse_tool_calls(reply: Reply, mcp_tools: Mapping[str, McpTool] | None = None) -> Action:
    """Turn a tools-protocol reply into an Action (its first call), or raise FormatError.

    A reply without a tool call but with a ```bash block (or a bare finish line) is accepted
    as in the text protocol, with a note asking for a tool call next time. `mcp_tools` are the
    run's MCP tools by native name: a call of one is an Action with its `mcp` call.
    """
    mcp_tools = mcp_tools or {}
    if not reply.tool_calls:
        try:
            action = parse_action(reply.text)
        except FormatError:
            raise FormatError(f"Your reply had no tool call. {USE_THE_TOOLS}") from None
        return Action(
            command=action.command,
            finish=action.finish,
            summary=action.summary,
            ignored_blocks=action.ignored_blocks,
            via_text=True,
        )
    call, ignored = reply.tool_calls[0], len(reply.tool_calls) - 1
    name = str(call.get("name") or "")
    if name in mcp_tools:
        tool = mcp_tools[name]
        arguments = _arguments(name, call.get("arguments"), "argument")
        if not isinstance(arguments, dict):
            raise FormatError(
                f"The arguments of your `{name}` call must be a JSON object; its arguments "
                f"are: {tool.arguments_hint()}."
            )
        return Action(
            command="", mcp=McpCall(tool.server, tool.name, arguments), ignored_calls=ignored
        )
    if name not in TOOL_ARGUMENTS:
        more = "".join(f", `{native}`" for native in mcp_tools)
        raise FormatError(
            f"There is no tool called {name!r}; the tools are `shell` (run a command), "
            f"`finish` (end the task){more}."
        )
    key = TOOL_ARGUMENTS[name]
    arguments = _arguments(name, call.get("arguments"), key)
    if not isinstance(arguments, dict) or not isinstance(arguments.get(key), str):
        raise FormatError(
            f'Your `{name}` call needs a string argument "{key}"; send a JSON object such as '
            f'{{"{key}": "..."}}.'
        )
    if name == "finish":
        return Action(
            command="", finish=True, summary=arguments[key].strip(), ignored_calls=ignored
        )
    command = close_heredocs(arguments[key].strip("\n"))
    if not command.strip():
        raise FormatError("Your `shell` call had an empty command. Put the command to run in it.")
    return Action(command=command, ignored_calls=ignored)


def _arguments(name: str, raw: Any, key: str) -> Any:
    """A call's arguments decoded (some servers hand them over decoded already)."""
    if not (isinstance(raw, str) or raw is None):
        return raw
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"The arguments of your `{name}` call are not valid JSON ({exc.msg}); send a "
            f'JSON object such as {{"{key}": "..."}}.'
        ) from None


def assistant_message(reply: Reply) -> Message:
    """The reply as an assistant message in the OpenAI wire format, tool calls included."""
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.text}
    return {
        "role": "assistant",
        "content": reply.text or None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": _raw(call.get("arguments"))},
            }
            for call in reply.tool_calls
        ],
    }


def tool_message(call_id: str, content: str) -> Message:
    """The answer to one tool call."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _raw(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


# The protocols as objects ---------------------------------------------------------------------


class ActionProtocol(ABC):
    """How the agent and the model exchange commands: the request, the parse and the answer."""

    name: str

    @abstractmethod
    def request(self) -> dict[str, Any]:
        """The keyword arguments `model.complete` takes under this protocol (`stop=`, `tools=`)."""

    def mend(self, reply: Reply) -> Reply:
        """The reply as the conversation records it (the request may have cut it short)."""
        return reply

    @abstractmethod
    def parse(self, reply: Reply) -> Action:
        """The action a reply asks for; raises FormatError with the message for the model."""

    def answer(self, reply: Reply, text: str) -> list[Message]:
        """The messages that tell the model `text` about `reply`.

        The API needs every tool call answered: a `tool` message answers the first call with
        `text` and NOT_RUN the others. A reply without calls (every reply of the text protocol,
        which offers no tools) is answered by a user message.
        """
        calls = reply.tool_calls
        if not calls:
            return [{"role": "user", "content": text}]
        first, *others = calls
        return [
            tool_message(first["id"], text),
            *(tool_message(call["id"], NOT_RUN) for call in others),
        ]

    def ask(
        self,
        model: Model,
        messages: list[Message],
        temperature: float | None,
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        """The model's next reply to `messages`, requested and mended under this protocol;
        streamed to `on_text` when given (see Model.complete)."""
        request = self.request()
        if on_text is not None:
            request["on_text"] = on_text
        return self.mend(model.complete(messages, temperature=temperature, **request))


class TextProtocol(ActionProtocol):
    """One fenced ```bash block per reply, cut off by TEXT_STOP and answered by a user message.

    With MCP tools, a first block holding just an `mcp SERVER TOOL 'JSON'` line is a call of
    one (made by pullsmith, never passed to bash); without them such a block is a command.
    """

    name = "text"

    def __init__(self, mcp_tools: Sequence[McpTool] = ()) -> None:
        self.mcp_tools = tuple(mcp_tools)

    def request(self) -> dict[str, Any]:
        return {"stop": list(TEXT_STOP)}

    def mend(self, reply: Reply) -> Reply:
        return close_stopped_block(reply)

    def parse(self, reply: Reply) -> Action:
        if self.mcp_tools:
            blocks = _shell_blocks(reply.text)
            if blocks and is_command(blocks[0]):
                try:
                    call = parse_command(blocks[0])
                except McpCommandError as exc:
                    raise FormatError(str(exc)) from None
                return Action(command="", mcp=call, ignored_blocks=len(blocks) - 1)
        return parse_action(reply.text)


class ToolsProtocol(ActionProtocol):
    """Native tool calls answered by `tool` messages: `shell` and `finish` (TOOLS), and the
    run's MCP tools under their native names (`tools` lists them all)."""

    name = "tools"

    def __init__(self, mcp_tools: Sequence[McpTool] = ()) -> None:
        self.mcp_tools = {tool.native_name: tool for tool in mcp_tools}

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tools offered to the model, in the wire format: TOOLS, then the MCP tools."""
        return TOOLS + [tool.native() for tool in self.mcp_tools.values()]

    def request(self) -> dict[str, Any]:
        return {"tools": self.tools}

    def parse(self, reply: Reply) -> Action:
        return parse_tool_calls(reply, self.mcp_tools)


PROTOCOLS: dict[str, type[ActionProtocol]] = {"text": TextProtocol, "tools": ToolsProtocol}


def protocol_for(name: str, mcp_tools: Sequence[McpTool] = ()) -> ActionProtocol:
    """The protocol called `name` ("text" or "tools"), offering `mcp_tools` as well."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol must be 'text' or 'tools', not {name!r}.")
    return PROTOCOLS[name](mcp_tools)  # type: ignore[call-arg]
