"""Environments: a setup command with the network and secrets before the agent, which has neither."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from pathlib import Path

import pytest
from conftest import ScriptedModel, bwrap_works, git
from test_runner import rewrite_reply

from pullsmith.config import Environment, environment_from_table, load_settings
from pullsmith.engine import run_task
from pullsmith.errors import UserError
from pullsmith.events import read_events
from pullsmith.task import Task
from pullsmith.workspace import Workspace

SANDBOX = "bwrap" if bwrap_works() else "none"
SECRET = "s3cr3t-token-4711"
FINISH = '```bash\nfinish "fixed the export"\n```'


@pytest.fixture
def loopback_server():
    """An HTTP server on 127.0.0.1 standing in for a package index: answers 'index-ok'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"index-ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def fetch(url: str) -> str:
    return (
        'python3 -c "import urllib.request as u; '
        f"print('fetched', u.urlopen('{url}', timeout=5).read().decode())\""
    )


# --- configuration ----------------------------------------------------------------------------


def test_environment_table_reads_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_TOKEN", SECRET)
    (tmp_path / "pullsmith.toml").write_text(
        '[environment]\nsetup = "pip install -e ."\nnetwork = true\n'
        'secrets = ["DEPLOY_TOKEN"]\ntimeout = 90\n'
    )
    env = load_settings(cwd=tmp_path).environment
    assert env == Environment(
        setup="pip install -e .", network=True, secrets=(("DEPLOY_TOKEN", SECRET),), timeout_s=90
    )
    assert SECRET not in repr(env) and SECRET not in repr(load_settings(cwd=tmp_path))
    assert env.redact(f"token {SECRET} used") == "token [secret DEPLOY_TOKEN] used"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"setup": ""}, "needs setup"),
        ({"setup": "x", "netwrk": True}, "unknown key 'netwrk'"),
        ({"setup": "x", "network": "yes"}, "true or false"),
        ({"setup": "x", "secrets": "TOKEN"}, "list of environment variable names"),
        ({"setup": "x", "secrets": ["NOT-A-NAME"]}, "not an environment variable name"),
        ({"setup": "x", "secrets": ["MISSING_TOKEN"]}, "$MISSING_TOKEN is not set"),
        ({"setup": "x", "timeout": 0}, "positive number of seconds"),
    ],
)
def test_a_wrong_environment_table_is_one_sentence(table, words):
    with pytest.raises(UserError) as info:
        environment_from_table(table, "pullsmith.toml", environ={})
    message = info.value.message
    assert words in message and "\n" not in message and message.endswith(".")


# --- the workspace leaves setup's leftovers out of the change ---------------------------------


def test_what_setup_left_stays_out_of_the_diff_until_the_agent_changes_it(example_repo, tmp_path):
    ws = Workspace.create(example_repo, "t-setup", tmp_path / "wt")
    (ws.path / ".venv" / "lib").mkdir(parents=True)
    (ws.path / ".venv" / "lib" / "site.py").write_text("installed\n")
    (ws.path / "README.md").write_text("rewritten by setup\n")
    (ws.path / "AGENTS.md").unlink()
    ws = ws.after_setup()
    assert sorted(path for path, _ in ws.left_out) == [".venv", "AGENTS.md", "README.md"]
    assert ws.diff() == ""
    (ws.path / "notes.txt").write_text("the agent's file\n")
    assert "notes.txt" in ws.diff() and ".venv" not in ws.diff()
    # The agent edits a file setup had changed: it is part of the change again.
    (ws.path / "README.md").write_text("edited by the agent\n")
    commit = ws.commit("agent work")
    assert commit is not None
    files = git("show", "--name-status", "--format=", commit, cwd=example_repo).split()
    assert files == ["M", "README.md", "A", "notes.txt"]


# --- an attempt with an environment -----------------------------------------------------------


def test_setup_gets_network_and_secrets_and_the_agent_neither(
    example_repo, tmp_path, loopback_server
):
    env = Environment(
        setup=(
            f"{fetch(loopback_server)} && echo token=$DEPLOY_TOKEN && mkdir -p build "
            "&& echo artefact > build/out.txt"
        ),
        network=True,
        secrets=(("DEPLOY_TOKEN", SECRET),),
    )
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    settings = dataclasses.replace(settings, environment=env)
    probe = (
        "```bash\necho secret=[$DEPLOY_TOKEN]; "
        + fetch(loopback_server)
        + " 2>/dev/null || echo NO-NETWORK\n```"
    )
    model = ScriptedModel([probe, rewrite_reply(example_repo), FINISH])
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(example_repo))
    result = run_task(task, settings, model=model)

    assert result.status == "passed", result.error
    log = Path(result.run_dir) / "events.jsonl"
    assert SECRET not in log.read_text()
    events = read_events(log)
    types = [e.type for e in events]
    assert types.index("setup.started") < types.index("setup.ran") < types.index("tests.started")
    started = next(e for e in events if e.type == "setup.started").data
    assert started["network"] and started["secrets"] == ["DEPLOY_TOKEN"]
    ran = next(e for e in events if e.type == "setup.ran").data
    assert ran["exit_code"] == 0 and "fetched index-ok" in ran["output"]
    assert "token=[secret DEPLOY_TOKEN]" in ran["output"] and ran["left_out"] == ["build"]
    probe_output = next(e for e in events if e.type == "command.finished").data["output"]
    assert "secret=[]" in probe_output
    if SANDBOX == "bwrap":
        assert "NO-NETWORK" in probe_output and "index-ok" not in probe_output
    assert "build/" not in result.diff and "inventory/export.py" in result.diff
    committed = git("show", "--name-only", "--format=", result.commit, cwd=example_repo)
    assert committed.split() == ["inventory/export.py"]


def test_a_failing_setup_ends_the_attempt_with_one_sentence(example_repo, tmp_path):
    settings = load_settings({"sandbox": SANDBOX}, cwd=tmp_path)
    env = Environment(setup="echo resolving deps; echo 'no matching distribution' >&2; exit 3")
    settings = dataclasses.replace(settings, environment=env)
    model = ScriptedModel([])
    task = Task(instruction="The CSV export drops the last row; fix it.", repo=str(example_repo))
    result = run_task(task, settings, model=model)
    assert result.status == "error" and result.error_kind == "run"
    assert "setup command" in result.error and "exit code 3" in result.error
    assert "no matching distribution" in result.error and "\n" not in result.error
    assert model.seen == [], "the model is not asked anything when setup failed"
    events = read_events(Path(result.run_dir) / "events.jsonl")
    assert [e.type for e in events if e.type.startswith("setup.")] == ["setup.started", "setup.ran"]
    assert not any(e.type == "tests.started" for e in events)
