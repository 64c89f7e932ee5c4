"""MCP in both directions.

`tools.py` (plain data, no SDK) and `client.py` (the run's servers, on a loop of their own)
let the agent use the tools of configured MCP servers; `server.py` is `pullsmith mcp-server`,
a front end that hands tasks to the Engine; `commands.py` holds the `mcp` commands.

Importing this package does not import the MCP SDK.
"""
