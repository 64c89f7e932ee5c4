"""Shared pieces of the MCP tests: the lookup server's config and the example repository's fix."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from conftest import EXAMPLES, bwrap_works

HERE = Path(__file__).resolve().parent
LOOKUP_SERVER = HERE / "lookup_server.py"
SANDBOX = "bwrap" if bwrap_works() else "none"
INSTRUCTION = "The CSV export drops the last row; fix it."
BUGGY_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
EXPORT = (EXAMPLES / "inventory" / "inventory" / "export.py").read_text()


def server_table(name: str = "fixes", *extra_args: str, **keys: object) -> str:
    """A `[mcp_servers.NAME]` table that runs the lookup server with this interpreter."""
    lines = [
        f"[mcp_servers.{name}]",
        f"command = {json.dumps(sys.executable)}",
        f"args = {json.dumps([str(LOOKUP_SERVER), *extra_args])}",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, *tables: str) -> Path:
    path = directory / "pullsmith.toml"
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def fix_from(answer: str) -> str:
    """The fixed export.py, built from the loop header the lookup tool answered with: the
    scripted model can only fix the bug with what the MCP tool told it."""
    found = re.search(r"```\n(for [^\n]*:)\n```", answer)
    assert found, f"the MCP answer did not reach the model: {answer!r}"
    fixed = EXPORT.replace(
        BUGGY_LOOP, f"    {found.group(1)}\n        lines.append(format_row(row))\n"
    )
    assert fixed != EXPORT
    return fixed
