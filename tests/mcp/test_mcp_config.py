"""`[mcp_servers.NAME]` tables: parsed into Settings.mcp_servers, wrong ones one sentence each."""

from __future__ import annotations

import pytest

from pullsmith.config import McpServer, load_settings, user_config_path
from pullsmith.errors import UserError


def settings_from(tmp_path, text: str):
    (tmp_path / "pullsmith.toml").write_text(text, encoding="utf-8")
    return load_settings(cwd=tmp_path)


def test_a_full_table_is_parsed(tmp_path):
    settings = settings_from(
        tmp_path,
        """
[mcp_servers.docs]
command = "npx"
args = ["-y", "@acme/docs-mcp"]
env = { DOCS_URL = "http://127.0.0.1:9000" }
cwd = "~/docs"
enabled_tools = ["search"]
startup_timeout = 5
call_timeout = 30.5
trusted = true

[mcp_servers.fixes]
command = "python"
""",
    )
    docs, fixes = settings.mcp_servers
    assert docs.name == "docs" and docs.command == "npx" and docs.args == ("-y", "@acme/docs-mcp")
    assert docs.env == (("DOCS_URL", "http://127.0.0.1:9000"),)
    assert docs.cwd is not None and not docs.cwd.startswith("~")
    assert docs.enabled_tools == ("search",) and docs.trusted
    assert (docs.startup_timeout_s, docs.call_timeout_s) == (5.0, 30.5)
    assert fixes == McpServer("fixes", "python")  # the defaults
    assert fixes.enabled_tools is None and not fixes.trusted
    assert "DOCS_URL" not in repr(docs) and "127.0.0.1:9000" not in repr(docs)


def test_the_nearer_file_replaces_a_server_of_the_same_name(tmp_path):
    user = user_config_path()
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text(
        '[mcp_servers.docs]\ncommand = "old"\n[mcp_servers.mine]\ncommand = "mine"\n',
        encoding="utf-8",
    )
    settings = settings_from(tmp_path, '[mcp_servers.docs]\ncommand = "new"\n')
    assert [(s.name, s.command) for s in settings.mcp_servers] == [
        ("mine", "mine"),
        ("docs", "new"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('mcp_servers = "x"', "'mcp_servers' in {path} must be a table of servers"),
        ("[mcp_servers]\ndocs = 1", "[mcp_servers.docs] in {path} must be a table with command"),
        ("[mcp_servers.docs]\nargs = []", "[mcp_servers.docs] in {path} needs command ="),
        (
            '[mcp_servers.docs]\ncommand = "x"\ncommandd = "y"',
            "sets unknown key 'commandd'; valid ones are: command, args, env, cwd",
        ),
        ('[mcp_servers.docs]\ncommand = "x"\nargs = "-y"', "'args' of [mcp_servers.docs]"),
        ('[mcp_servers.docs]\ncommand = "x"\nenv = { A = 1 }', "'env' of [mcp_servers.docs]"),
        (
            '[mcp_servers.docs]\ncommand = "x"\nstartup_timeout = 0',
            "'startup_timeout' of [mcp_servers.docs] in {path} must be a positive number",
        ),
        ('[mcp_servers.docs]\ncommand = "x"\ntrusted = "yes"', "must be true or false"),
        (
            '[mcp_servers."my docs"]\ncommand = "x"',
            "MCP server name 'my docs' in {path} may hold only letters",
        ),
    ],
)
def test_a_wrong_table_is_one_sentence(tmp_path, text, expected):
    with pytest.raises(UserError) as info:
        settings_from(tmp_path, text)
    message = info.value.message
    assert expected.format(path=tmp_path / "pullsmith.toml") in message
    assert "\n" not in message and message.endswith(".")
