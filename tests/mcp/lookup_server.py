"""A small MCP server for the tests, written with the SDK (stdio).

`lookup(key)` answers from a table; the scripted models must use its answer to fix the example
repository. `read_text(path)` reads a file (to see what a sandbox hides), `sleep(seconds)`
sleeps (for call timeouts) and `fail()` raises (a tool error).

With `--hang` the server never answers `initialize`; with `--die` it exits at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

TABLE = {"export-loop": "for row in rows:"}

server = MCPServer("lookup")


@server.tool()
def lookup(key: str) -> str:
    """Look up the fix for a known bug by its key (e.g. export-loop)."""
    if key not in TABLE:
        raise ToolError(f"no entry for {key!r}; the keys are: {', '.join(TABLE)}")
    return TABLE[key]


@server.tool()
def read_text(path: str) -> str:
    """Read a text file and return what it holds."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"


@server.tool()
def sleep(seconds: float) -> str:
    """Sleep for a while, then say so."""
    time.sleep(seconds)
    return f"slept {seconds} s"


if __name__ == "__main__":
    if "--die" in sys.argv:
        print("lookup server: refusing to start", file=sys.stderr)
        sys.exit(3)
    if "--hang" in sys.argv:
        time.sleep(600)
    server.run()
