"""The MCP tools a run offers, as plain data: names, schemas, calls and their results.

This module does not import the MCP SDK: the agent's protocols and prompts only need to know
what the tools are called and take. `client.py` finds them and calls them.

A tool has two names for the model: under the tools protocol a native tool
`mcp__SERVER__TOOL` (letters, digits, `_` and `-`, at most 64 characters, as the model APIs
require), and under the text protocol the command line `mcp SERVER TOOL '{"arg": ...}'`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

NATIVE_PREFIX = "mcp__"
NATIVE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
NATIVE_NAME_LIMIT = 64
# The text protocol's command: a block holding just this one line.
COMMAND_LINE = re.compile(r"^\s*mcp(?:\s+|$)")


@dataclass(frozen=True)
class McpTool:
    """One tool of one MCP server, as the model is offered it."""

    server: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    native_name: str = ""

    def native(self) -> dict[str, Any]:
        """The tool in the OpenAI `tools` wire format, named `native_name`."""
        schema = dict(self.input_schema) if self.input_schema else {}
        schema.setdefault("type", "object")
        if schema.get("type") == "object":
            schema.setdefault("properties", {})
        description = (
            self.description.strip() or f"The {self.name} tool of MCP server {self.server}."
        )
        return {
            "type": "function",
            "function": {
                "name": self.native_name,
                "description": f"[MCP server {self.server}] {description}",
                "parameters": schema,
            },
        }

    def arguments_hint(self) -> str:
        """The tool's arguments in a few words: `key (string, required), ...`, or `none`."""
        properties = self.input_schema.get("properties") or {}
        required = set(self.input_schema.get("required") or ())
        if not isinstance(properties, dict) or not properties:
            return "none"
        parts = []
        for key, spec in properties.items():
            kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
            if isinstance(kind, list):
                kind = " or ".join(str(k) for k in kind)
            parts.append(f"{key} ({kind}{', required' if key in required else ''})")
        return ", ".join(parts)


def with_native_names(tools: list[McpTool]) -> list[McpTool]:
    """`tools` with a `native_name` each: `mcp__SERVER__TOOL`, made valid and unique."""
    named: list[McpTool] = []
    taken: set[str] = set()
    for tool in tools:
        base = NATIVE_NAME_CHARS.sub("_", f"{NATIVE_PREFIX}{tool.server}__{tool.name}")
        base = base[:NATIVE_NAME_LIMIT]
        name, counter = base, 2
        while name in taken:
            suffix = f"_{counter}"
            name, counter = base[: NATIVE_NAME_LIMIT - len(suffix)] + suffix, counter + 1
        taken.add(name)
        named.append(McpTool(tool.server, tool.name, tool.description, tool.input_schema, name))
    return named


@dataclass(frozen=True)
class McpCall:
    """What a reply asks of an MCP tool."""

    server: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The call as the text protocol writes it, for logs and repeat detection."""
        return shlex.join(["mcp", self.server, self.tool, json.dumps(self.arguments)])


@dataclass(frozen=True)
class McpResult:
    """What a call gave back: `ok` is False for a tool error, a timeout or a dead server."""

    ok: bool
    output: str
    seconds: float = 0.0


class McpCommandError(ValueError):
    """An `mcp …` line that can not be a call; the message tells the model how to write it."""


USAGE = (
    "Write an MCP call as one line alone in its ```bash block: "
    'mcp SERVER TOOL \'{"argument": "value"}\' (the JSON object may be left out when the '
    "tool takes no arguments)."
)


def is_command(block: str) -> bool:
    """Whether a shell block is an `mcp …` line alone (which pullsmith runs, not bash)."""
    lines = [line for line in block.strip().splitlines() if line.strip()]
    return len(lines) == 1 and bool(COMMAND_LINE.match(lines[0]))


def parse_command(line: str) -> McpCall:
    """The call an `mcp SERVER TOOL ['JSON']` line makes; McpCommandError if it is malformed."""
    try:
        words = shlex.split(line.strip())
    except ValueError as exc:
        raise McpCommandError(
            f"Your mcp line could not be split into words ({exc}). {USAGE}"
        ) from None
    if len(words) not in (3, 4) or words[0] != "mcp":
        raise McpCommandError(f"Your mcp line had {len(words) - 1} words after mcp. {USAGE}")
    arguments: Any = {}
    if len(words) == 4:
        try:
            arguments = json.loads(words[3])
        except json.JSONDecodeError as exc:
            raise McpCommandError(
                f"The arguments of your mcp line are not valid JSON ({exc.msg}). {USAGE}"
            ) from None
    if not isinstance(arguments, dict):
        raise McpCommandError(f"The arguments of your mcp line must be a JSON object. {USAGE}")
    return McpCall(server=words[1], tool=words[2], arguments=arguments)
