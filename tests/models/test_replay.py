"""`--model replay:RUN`: a recorded run's replies played back, with no model behind them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import EXAMPLES, bwrap_works, git
from fake_openai_stream import Scripted, send_stream

from pullsmith.config import Settings, load_settings
from pullsmith.errors import UserError
from pullsmith.models import ModelError, ReplayModel, open_model
from pullsmith.models.replay import is_replay, load_recordings

SYSTEM = {"role": "system", "content": "You fix bugs."}
USER = {"role": "user", "content": "Task: fix it"}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def tool_call_message(call_id: str, name: str, arguments: dict, text: str | None = None) -> dict:
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
    }


def write_history(run_dir: Path, *messages: dict, protocol: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "history.json"
    path.write_text(json.dumps([SYSTEM, USER, *messages], indent=1), encoding="utf-8")
    if protocol is not None:
        started = {"v": 1, "id": 1, "type": "task.started", "task_id": run_dir.name, "ts": 0.0}
        started["data"] = {"model": "m", "protocol": protocol}
        (run_dir / "events.jsonl").write_text(json.dumps(started) + "\n", encoding="utf-8")
    return path


def conversation(*replies: str) -> list[dict]:
    """A conversation as the agent shows it: its replies so far, each answered."""
    messages = [SYSTEM, USER]
    for text in replies:
        messages += [assistant(text), {"role": "user", "content": "exit code 0"}]
    return messages


# --------------------------------------------------------------------------------------------
# one recording


def test_text_replies_come_back_in_order_whatever_the_model_is_shown(tmp_path):
    path = write_history(
        tmp_path / "run",
        assistant("```bash\nls\n```"),
        {"role": "user", "content": "exit code 0"},
        assistant('```bash\nfinish "done"\n```'),
    )
    model = ReplayModel(str(path))
    assert model.name == f"replay:{path}"
    first = model.complete(conversation(), temperature=0.9, stop=["\n```\n"], seed=3)
    assert first.text == "```bash\nls\n```"
    assert first.tool_calls == [] and first.finish_reason == "stop"
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (0, 0)
    second = model.complete(conversation("something else entirely"))
    assert second.text == '```bash\nfinish "done"\n```'
    with pytest.raises(ModelError) as caught:
        model.complete(conversation("a", "b"))
    assert str(caught.value) == (
        f"the replay of {path} has no more recorded replies (it had 2); the run went further "
        "than the recording did."
    )
    model.close()


def test_tool_calls_come_back_in_the_reply_shape(tmp_path):
    path = write_history(
        tmp_path / "run",
        tool_call_message("call_a", "shell", {"command": "ls"}, text="Looking."),
        {"role": "tool", "tool_call_id": "call_a", "content": "exit code 0"},
        tool_call_message("call_b", "finish", {"summary": "done"}),
    )
    model = ReplayModel(str(path))
    tools = [{"type": "function", "function": {"name": "shell"}}]
    first = model.complete(conversation(), tools=tools)
    assert first.text == "Looking."
    assert first.tool_calls == [
        {"id": "call_a", "name": "shell", "arguments": json.dumps({"command": "ls"})}
    ]
    second = model.complete(conversation("x"), tools=tools)
    assert second.text == ""  # the recorded content was null
    assert second.tool_calls == [
        {"id": "call_b", "name": "finish", "arguments": json.dumps({"summary": "done"})}
    ]
    assert second.finish_reason == "stop"


def test_a_tools_recording_in_a_text_run_says_which_protocol_to_pass(tmp_path):
    path = write_history(tmp_path / "run", tool_call_message("c", "shell", {"command": "ls"}))
    with pytest.raises(ModelError, match=r"rerun with --protocol tools\.$"):
        ReplayModel(str(path)).complete(conversation(), stop=["\n```\n"])


def test_the_recorded_protocol_comes_from_the_run_log(tmp_path):
    run = tmp_path / "run"
    write_history(run, assistant('```bash\nfinish "x"\n```'), protocol="text")
    with pytest.raises(ModelError, match=r"recorded with the text protocol .* --protocol text\."):
        ReplayModel(str(run)).complete(conversation(), tools=[{"type": "function"}])


def test_spec_is_a_run_id_a_run_directory_or_a_history_file(tmp_path):
    runs = tmp_path / "runs"
    history = write_history(runs / "20250101-000000-abcd", assistant("one"))
    for spec in ("20250101-000000-abcd", str(history.parent), str(history)):
        model = ReplayModel(spec, runs_dir=runs)
        assert model.complete(conversation()).text == "one", spec
        assert model.name == f"replay:{spec}"


def test_a_repeated_fresh_conversation_with_one_recording_is_a_model_error(tmp_path):
    model = ReplayModel(str(write_history(tmp_path / "run", assistant("one"))))
    assert model.complete(conversation()).text == "one"
    with pytest.raises(ModelError, match="the run made more attempts than the recording did"):
        model.complete(conversation())


# --------------------------------------------------------------------------------------------
# best-of-N: one recording per attempt


def best_of_n(runs: Path, run_id: str, attempts: dict[int, list[str]], listed: int | None = None):
    """A best-of-N run directory: result.json lists the first `listed` attempts."""
    for number, replies in attempts.items():
        write_history(runs / f"{run_id}-{number}", *(assistant(r) for r in replies))
    parent = runs / run_id
    parent.mkdir(parents=True, exist_ok=True)
    (parent / "events.jsonl").write_text("", encoding="utf-8")
    entries = [
        {"attempt": n, "run_dir": str(runs / f"{run_id}-{n}")}
        for n in sorted(attempts)[: listed if listed is not None else len(attempts)]
    ]
    (parent / "result.json").write_text(
        json.dumps({"task_id": f"{run_id}-1", "attempt": 1, "attempts": entries}),
        encoding="utf-8",
    )
    return parent


def test_attempts_replay_one_recording_each_in_order(tmp_path):
    runs = tmp_path / "runs"
    best_of_n(runs, "r", {1: ["1a", "1b"], 2: ["2a", "2b", "2c"]})
    model = ReplayModel("r", runs_dir=runs)
    assert [r.path.parent.name for r in model.recordings] == ["r-1", "r-2"]
    assert model.complete(conversation()).text == "1a"
    assert model.attempt == 1
    # Attempt 1 ends after one reply (say it got stuck); attempt 2 starts a fresh conversation.
    assert model.complete(conversation()).text == "2a"
    assert model.attempt == 2
    assert model.complete(conversation("2a")).text == "2b"
    assert model.complete(conversation("2a", "2b")).text == "2c"
    with pytest.raises(ModelError) as caught:
        model.complete(conversation("2a", "2b", "2c"))
    assert str(caught.value) == (
        "the replay of r has no more recorded replies for attempt 2 (it had 3); the run went "
        "further than the recording did."
    )
    with pytest.raises(ModelError, match=r"no recording left .* \(it holds 2 attempts\)"):
        model.complete(conversation())


def test_a_moved_run_finds_its_attempts_beside_it_and_unlisted_ones_too(tmp_path):
    runs = tmp_path / "runs"
    # Attempt 3's model failed, so result.json lists only 1 and 2; its recording still counts.
    best_of_n(runs, "r", {1: ["1a"], 2: ["2a"], 3: ["3a"]}, listed=2)
    moved = tmp_path / "elsewhere"
    shutil.move(runs, moved)
    model = ReplayModel(str(moved / "r"))
    assert [r.path.parent for r in model.recordings] == [moved / f"r-{n}" for n in (1, 2, 3)]
    assert [model.complete(conversation()).text for _ in range(3)] == ["1a", "2a", "3a"]


def test_an_attempt_that_never_reached_the_model_is_skipped(tmp_path):
    runs = tmp_path / "runs"
    best_of_n(runs, "r", {1: [], 2: ["2a"]})
    model = ReplayModel("r", runs_dir=runs)
    assert model.complete(conversation()).text == "2a"


# --------------------------------------------------------------------------------------------
# specs that name nothing to replay


def test_a_missing_run_says_where_it_looked_and_what_to_pass(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(UserError) as caught:
        ReplayModel("20250101-000000-dead", runs_dir=runs)
    message = str(caught.value)
    assert "there is no recorded run '20250101-000000-dead' to replay" in message
    assert str(runs / "20250101-000000-dead") in message
    assert "pass replay: with a run id" in message and message.endswith("history.json.")
    with pytest.raises(UserError, match="names no run"):
        ReplayModel("  ", runs_dir=runs)


def test_a_run_without_history_and_a_broken_history_are_user_errors(tmp_path):
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    (empty / "result.json").write_text(json.dumps({"attempts": []}))
    with pytest.raises(UserError, match="holds no recorded conversation to replay"):
        ReplayModel(str(empty))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="can not be read as a recorded conversation"):
        ReplayModel(str(broken))
    (tmp_path / "object.json").write_text(json.dumps({"role": "assistant"}))
    with pytest.raises(UserError, match="is not a recorded conversation"):
        ReplayModel(str(tmp_path / "object.json"))
    with pytest.raises(UserError, match="holds no assistant reply to replay"):
        ReplayModel(str(write_history(tmp_path / "silent")))


def test_load_recordings_reads_a_whole_run(tmp_path):
    runs = tmp_path / "runs"
    best_of_n(runs, "r", {1: ["1a"], 2: ["2a", "2b"]})
    assert [len(r.replies) for r in load_recordings("r", runs)] == [1, 2]


# --------------------------------------------------------------------------------------------
# settings and open_model


def test_replay_settings_use_no_local_model_and_keep_their_name(tmp_path):
    settings = Settings(model="replay:abc", data_dir=tmp_path)
    assert settings.uses_local_model is False
    assert settings.model_name == "replay:abc"
    assert is_replay("replay:abc") and not is_replay("gpt-4.1") and not is_replay(None)
    assert Settings(data_dir=tmp_path).uses_local_model is True


def test_open_model_replays_a_run_id_from_the_runs_dir(tmp_path, monkeypatch):
    import pullsmith.models.local as local

    def no_server(*args, **kwargs):
        raise AssertionError("a replay must not start or look for a model server")

    monkeypatch.setattr(local, "ensure_model", no_server)
    monkeypatch.setattr(local, "start_local_server", no_server)
    monkeypatch.setattr(local, "find_running_server", no_server)
    settings = load_settings({"model": "replay:run-1", "data_dir": str(tmp_path)}, cwd=tmp_path)
    write_history(settings.runs_dir / "run-1", assistant("recorded"))
    model = open_model(settings)
    assert isinstance(model, ReplayModel) and model.name == "replay:run-1"
    assert model.complete(conversation()).text == "recorded"
    model.close()


# --------------------------------------------------------------------------------------------
# end to end: record a run through the CLI, then replay it on a fresh copy with no server

SANDBOX = "bwrap" if bwrap_works() else "none"
INSTRUCTION = (
    "The CSV export drops the last row of the inventory. Fix to_csv so every row is exported."
)
FIXED_LOOP = "    for row in rows:\n        lines.append(format_row(row))\n"
BUGGY_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"
FIXED_EXPORT = (
    (EXAMPLES / "inventory" / "inventory" / "export.py").read_text().replace(BUGGY_LOOP, FIXED_LOOP)
)
FIX = (
    "to_csv stops one row early.\n```bash\ncat > inventory/export.py <<'EOF'\n"
    + FIXED_EXPORT
    + "EOF\n```"
)
RUN_TESTS = "```bash\npython -m pytest -q\n```"
FINISH = '```bash\nfinish "to_csv exports every row"\n```'
BAD_EDIT = "I will fix it.\n```bash\necho '# looked at this' >> inventory/export.py\n```"
FALSE_FINISHES = [
    '```bash\nfinish "The export is fixed"\n```',
    '```bash\nfinish "Fixed the export, really"\n```',
    '```bash\nfinish "Every row is exported now"\n```',
]
# Settings from the developer's environment that would send these runs elsewhere.
OUTSIDE = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "PULLSMITH_MODEL",
    "PULLSMITH_PROTOCOL",
    "PULLSMITH_LOCAL_SERVER_URL",
    "PULLSMITH_DATABASE_URL",
    "PULLSMITH_DATA_DIR",
    "PULLSMITH_TEST_COMMAND",
    "PULLSMITH_GITHUB_API_URL",
    "PULLSMITH_GITHUB_REPO",
)


def scripted(reply: str | dict, number: int) -> Scripted:
    """A scripted reply (text, or {"tool_calls": [(name, arguments), ...]}) to stream."""
    if isinstance(reply, str):
        return Scripted([reply], completion_tokens=5)
    calls = [
        {"id": f"call_{number}_{n}", "name": name, "arguments": [json.dumps(args)]}
        for n, (name, args) in enumerate(reply["tool_calls"])
    ]
    return Scripted(tool_calls=calls, completion_tokens=5)


class ScriptedServer:
    """OpenAI-shaped chat completions answering with the next scripted reply.

    A reply is text, or a dict {"tool_calls": [(name, arguments), ...]} for native tool calls.
    """

    def __init__(self, replies: list[str | dict]) -> None:
        self.replies = list(replies)
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                reply = server.replies.pop(0) if server.replies else FINISH
                if request.get("stream"):
                    send_stream(self, request, scripted(reply, server.requests))
                    return
                message: dict = {"role": "assistant", "content": reply}
                if isinstance(reply, dict):
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"call_{server.requests}_{n}",
                                "type": "function",
                                "function": {"name": name, "arguments": json.dumps(args)},
                            }
                            for n, (name, args) in enumerate(reply["tool_calls"])
                        ],
                    }
                body = json.dumps(
                    {
                        "id": f"chatcmpl-{server.requests}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": request["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls"
                                if isinstance(reply, dict)
                                else "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def fresh_example(directory: Path) -> Path:
    """The example repository as it starts: its files, freshly committed."""
    repo = directory / "inventory"
    shutil.copytree(EXAMPLES / "inventory", repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def exec_json(repo: Path, *args: str, env: dict | None = None) -> tuple[int, list[dict], str]:
    """`pullsmith exec --json` as a user runs it: (exit code, events, stderr)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pullsmith.cli import main; main()",
            "exec",
            "--json",
            "--sandbox",
            SANDBOX,
            "--repo",
            str(repo),
            *args,
            INSTRUCTION,
        ],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def chosen_outcome(events: list[dict]) -> dict:
    """The attempt.finished data of the attempt the run ended with."""
    selected = [e for e in events if e["type"] == "attempts.selected"]
    finished = [e for e in events if e["type"] == "attempt.finished"]
    if selected:
        chosen = selected[-1]["data"]["attempt"]
        finished = [e for e in finished if e["data"].get("attempt") == chosen]
    return finished[-1]["data"]


def commit_diff(repo: Path, commit: str) -> str:
    return git("diff", f"{commit}~1", commit, cwd=repo)


@pytest.fixture
def clean_env(monkeypatch):
    for name in OUTSIDE:
        monkeypatch.delenv(name, raising=False)


def record_and_replay(
    example_repo: Path, tmp_path: Path, replies: list, *args: str, replay_args=None
):
    """Record a run of `replies` on the example repo, replay it on a fresh copy; both outcomes."""
    with ScriptedServer(replies) as server:
        code, events, stderr = exec_json(
            example_repo,
            "--base-url",
            server.base_url,
            "--model",
            "scripted",
            *args,
            env={"OPENAI_API_KEY": "sk-test"},
        )
    assert code == 0, stderr
    run_id = events[0]["task_id"]
    recorded = chosen_outcome(events)
    assert recorded["commit"], recorded

    fresh = fresh_example(tmp_path / "fresh")
    again = args if replay_args is None else replay_args
    code, replayed_events, stderr = exec_json(fresh, "--model", f"replay:{run_id}", *again)
    assert code == 0, stderr
    started = next(e for e in replayed_events if e["type"] == "task.started")
    assert started["data"]["model"] == f"replay:{run_id}"
    replayed = chosen_outcome(replayed_events)
    assert replayed["commit"], replayed
    assert commit_diff(fresh, replayed["commit"]) == commit_diff(example_repo, recorded["commit"])
    assert replayed["turns"] == recorded["turns"]
    # The replay spent nothing, and said so.
    assert replayed["prompt_tokens"] == replayed["completion_tokens"] == 0
    return recorded, replayed, replayed_events


def test_exec_replays_a_recorded_run_on_a_fresh_copy_without_a_server(
    example_repo, tmp_path, clean_env
):
    recorded, replayed, _ = record_and_replay(example_repo, tmp_path, [FIX, RUN_TESTS, FINISH])
    assert replayed["status"] == recorded["status"] == "passed"
    assert "for row in rows:" in replayed["diff"]


def test_exec_replays_native_tool_calls(example_repo, tmp_path, clean_env):
    fix = FIX.split("```bash\n", 1)[1].rsplit("\n```", 1)[0]
    replies = [
        {"tool_calls": [("shell", {"command": fix})]},
        {"tool_calls": [("finish", {"summary": "to_csv exports every row"})]},
    ]
    # The replay speaks the protocol its recording used without being told.
    recorded, replayed, events = record_and_replay(
        example_repo, tmp_path, replies, "--protocol", "tools", replay_args=()
    )
    assert replayed["status"] == recorded["status"] == "passed"
    started = next(e for e in events if e["type"] == "task.started")
    assert started["data"]["protocol"] == "tools"


def test_exec_replays_best_of_n_attempt_by_attempt(example_repo, tmp_path, clean_env):
    replies = [BAD_EDIT, *FALSE_FINISHES, FIX, RUN_TESTS, FINISH]
    args = ("--attempts", "3", "--until-pass")
    recorded, replayed, events = record_and_replay(example_repo, tmp_path, replies, *args)
    selected = [e for e in events if e["type"] == "attempts.selected"][-1]["data"]
    assert (selected["attempt"], selected["of"]) == (2, 2)
    assert replayed["status"] == "passed"
    # Attempt 1 replayed its own (bad) edit, not attempt 2's fix.
    first = [e for e in events if e["type"] == "attempt.finished" and e["data"]["attempt"] == 1]
    assert "# looked at this" in first[-1]["data"]["diff"]
