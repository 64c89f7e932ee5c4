"""The `pullsmith mcp …` commands and `pullsmith mcp-server` (front ends: nothing imports them)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pullsmith.cli_options import settings_from_flags


@click.group("mcp")
def mcp_group() -> None:
    """The MCP servers whose tools pullsmith's runs offer the model."""


@mcp_group.command("list")
def mcp_list_command() -> None:
    """Start each configured MCP server as a run would, and list its tools.

    Servers that are not trusted start in the sandbox, with the current directory as their
    workspace. A server that does not start is one line on stderr, and the exit code is 1.
    """
    from pullsmith.mcp.client import McpHub, launcher_for
    from pullsmith.sandbox import make_sandbox
    from pullsmith.sandbox.policy import agent_policy

    settings = settings_from_flags()
    if not settings.mcp_servers:
        click.echo(
            "No MCP servers are configured; add an [mcp_servers.NAME] table to pullsmith.toml "
            "or to the user config (see the README)."
        )
        return
    workspace = Path.cwd()
    untrusted = [server for server in settings.mcp_servers if not server.trusted]
    box = None
    if untrusted:
        box = make_sandbox(
            settings.sandbox, workspace, agent_policy(settings), image=settings.sandbox_image
        )
    try:
        hub = McpHub(settings.mcp_servers, launcher_for(box, workspace))
        with hub:
            for server in settings.mcp_servers:
                if server.name not in hub.started:
                    continue
                where = "trusted" if server.trusted else f"in the {settings.sandbox} sandbox"
                tools = [tool for tool in hub.tools if tool.server == server.name]
                click.echo(f"{server.name} ({where}): {len(tools)} tool(s)")
                for tool in tools:
                    description = " ".join(tool.description.split())
                    if len(description) > 100:
                        description = description[:99] + "…"
                    click.echo(f"  {tool.name}" + (f" — {description}" if description else ""))
            for failure in hub.failures:
                click.echo(f"pullsmith: {failure}", err=True)
    finally:
        if box is not None:
            box.close()
    if hub.failures:
        sys.exit(1)


@click.command("mcp-server")
def mcp_server_command() -> None:
    """Serve pullsmith over MCP on stdin and stdout: the run_task and follow_up tools.

    Tasks run through the engine as `pullsmith exec` runs them, with this directory's
    pullsmith.toml and the user config; each step is a progress notification.
    """
    from pullsmith.mcp.server import serve

    serve()
