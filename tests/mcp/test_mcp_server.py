"""`pullsmith mcp-server` driven by the MCP SDK's own client over stdio, and `pullsmith mcp list`.

The task runs on the replay model: a hand-written recording of the example repository's fix
(no model is asked), through the Engine as `exec` runs it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
from click.testing import CliRunner
from conftest import git
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp_helpers import EXPORT, INSTRUCTION, SANDBOX, fix_from, server_table, write_config

from pullsmith.cli import main_group

FIX = (
    "The loop stops one row early.\n```bash\ncat > inventory/export.py <<'EOF'\n"
    + fix_from("```\nfor row in rows:\n```")
    + "EOF\n```"
)
RUN_TESTS = "```bash\npython -m pytest -q\n```"
FINISH = '```bash\nfinish "to_csv writes every row"\n```'


def write_history(run_dir: Path, replies: list[str]) -> Path:
    """A recording for `replay:`: a history.json holding these assistant replies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    messages = [{"role": "system", "content": "(by hand)"}, {"role": "user", "content": "task"}]
    for reply in replies:
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "ok"}]
    (run_dir / "history.json").write_text(json.dumps(messages), encoding="utf-8")
    return run_dir


async def drive_server(cwd: Path, calls: list[tuple[str, dict]]) -> dict:
    """Start `pullsmith mcp-server`, initialize, list its tools, make `calls` in order."""
    env = {**os.environ, "PULLSMITH_SANDBOX": SANDBOX}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from pullsmith.cli import main; main()", "mcp-server"],
        env=env,
        cwd=cwd,
    )
    seen: dict = {"results": [], "progress": []}
    with open(cwd / "server-stderr.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                seen["init"] = await session.initialize()
                seen["tools"] = (await session.list_tools()).tools
                for name, arguments in calls:
                    progress: list[tuple[float, str | None]] = []

                    async def on_progress(value, total, message, progress=progress):
                        progress.append((value, message))

                    result = await session.call_tool(
                        name, arguments, read_timeout_seconds=300, progress_callback=on_progress
                    )
                    seen["results"].append(result)
                    seen["progress"].append(progress)
    return seen


def test_mcp_server_runs_a_task_through_the_engine_and_reports_progress(example_repo, tmp_path):
    recording = write_history(tmp_path / "recorded", [FIX, RUN_TESTS, FINISH])
    calls = [
        (
            "run_task",
            {"instruction": INSTRUCTION, "repo": str(example_repo), "model": f"replay:{recording}"},
        ),
        ("run_task", {"instruction": INSTRUCTION, "repo": "relative/path"}),
        ("follow_up", {"pull_request": 99, "instruction": "more", "model": "replay:x"}),
    ]
    seen = anyio.run(drive_server, tmp_path, calls)
    assert seen["init"].server_info.name == "pullsmith"
    tools = {tool.name: tool for tool in seen["tools"]}
    assert set(tools) == {"run_task", "follow_up"}
    schema = tools["run_task"].input_schema
    assert set(schema["required"]) == {"instruction", "repo"}
    assert {"base", "attempts", "model"} <= set(schema["properties"])
    assert set(tools["follow_up"].input_schema["required"]) == {"pull_request", "instruction"}

    ran, relative, follow_up = seen["results"]
    assert not ran.is_error, ran.content
    out = ran.structured_content
    assert out["status"] == "passed" and out["tests"] == "passed"
    assert out["branch"] == f"pullsmith/{out['task_id']}"
    assert "inventory/export.py" in out["diff_stat"] and "1 file changed" in out["diff_stat"]
    assert isinstance(out["pull_request"], int) and out["summary"] == "to_csv writes every row"
    assert json.loads(ran.content[0].text) == out  # the same, as text for clients without it
    # The branch really holds the fix.

    assert "for row in rows:" in git(
        "show", f"{out['branch']}:inventory/export.py", cwd=example_repo
    )
    assert git("show", "HEAD:inventory/export.py", cwd=example_repo) == EXPORT

    # Progress came from the run's event stream, one notification per step, in order.
    progress = seen["progress"][0]
    messages = [message for _, message in progress]
    assert messages[0].startswith(f"started on {example_repo}")
    assert any(m.startswith("turn 1: `cat > inventory/export.py") for m in messages), messages
    opened = f"pull request #{out['pull_request']} opened (tests "
    assert any(m.startswith(opened) for m in messages), messages
    assert messages[-1] == "finished: passed"
    assert [value for value, _ in progress] == list(range(1, len(progress) + 1))

    # Errors are tool errors of one sentence.
    # (The SDK puts "Error executing tool NAME: " before the sentence.)
    assert relative.is_error and relative.content[0].text.endswith(
        ": repo must be an absolute path or a git URL, not 'relative/path'."
    )
    assert follow_up.is_error
    (line,) = follow_up.content[0].text.splitlines()
    assert "99" in line and line.endswith(".")


def test_mcp_list_starts_each_server_and_shows_its_tools(tmp_path, monkeypatch):
    write_config(
        tmp_path,
        server_table("fixes"),
        server_table("trusty", trusted=True, enabled_tools=["lookup"]),
        server_table("dying", "--die"),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PULLSMITH_SANDBOX", SANDBOX)
    result = CliRunner().invoke(main_group, ["mcp", "list"])
    assert result.exit_code == 1, result.output  # one server did not start
    lines = result.stdout.splitlines()
    assert lines[0] == f"fixes (in the {SANDBOX} sandbox): 3 tool(s)"
    assert lines[1].startswith("  lookup — Look up the fix for a known bug")
    assert {
        "  read_text — Read a text file and return what it holds.",
        "  sleep — Sleep for a while, then say so.",
    } <= set(lines)
    assert "trusty (trusted): 1 tool(s)" in lines
    (failure,) = result.stderr.splitlines()
    assert failure.startswith("pullsmith: MCP server dying did not start (")
    assert "refusing to start" in failure


def test_mcp_list_without_servers_says_how_to_add_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main_group, ["mcp", "list"])
    assert result.exit_code == 0
    assert "No MCP servers are configured; add an [mcp_servers.NAME] table" in result.output
