"""The Anthropic provider through the real `anthropic` SDK, against a fake Messages API.

The fake (tests/fake_anthropic.py) listens on 127.0.0.1 only and speaks the API's wire format:
tool_use / tool_result blocks, usage with cache_creation_input_tokens and
cache_read_input_tokens, streamed events, 529 overloads, 401 and 404 errors.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bwrap_works, git
from fake_anthropic import API_KEY, FakeAnthropic, text_block, tool_use

from pullsmith.agent.protocol import TOOLS, assistant_message, tool_message
from pullsmith.config import load_settings
from pullsmith.events import read_events
from pullsmith.models import open_model
from pullsmith.models.anthropic import AnthropicModel, anthropic_base_url, to_anthropic
from pullsmith.models.openai_compat import ModelError

SANDBOX = "bwrap" if bwrap_works() else "none"
MODEL = "claude-sonnet-4-5"
# Long enough (over the fake's 1,024-token minimum) for the system prompt to be cached.
SYSTEM = "You fix bugs in small repositories. " * 150


def model_for(server: FakeAnthropic, **kwargs) -> tuple[AnthropicModel, list[float]]:
    slept: list[float] = []
    model = AnthropicModel(
        MODEL, api_key=API_KEY, base_url=server.base_url, sleep=slept.append, **kwargs
    )
    return model, slept


def conversation() -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix the export."}]


# --- translation -------------------------------------------------------------------------


def test_the_openai_history_becomes_alternating_turns_with_tool_results():
    calls = [
        {"id": "toolu_a", "type": "function", "function": {"name": "shell", "arguments": "{}"}},
        {
            "id": "toolu_b",
            "type": "function",
            "function": {"name": "shell", "arguments": '{"command": "ls"}'},
        },
    ]
    messages = [
        {"role": "system", "content": "system prompt"},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "two calls", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_a", "content": "output a"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "not run: one call per turn"},
        {"role": "assistant", "content": "no call this time"},
        {"role": "user", "content": "Your reply had no tool call."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]
    system, turns = to_anthropic(messages)
    assert [b["text"] for b in system] == ["system prompt"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"] + [
        "assistant",
        "user",
    ]
    assistant = turns[1]["content"]
    assert assistant[0] == {"type": "text", "text": "two calls"}
    assert [(b["type"], b["id"], b["input"]) for b in assistant[1:]] == [
        ("tool_use", "toolu_a", {}),
        ("tool_use", "toolu_b", {"command": "ls"}),
    ]
    results = turns[2]["content"]
    assert [(b["type"], b["tool_use_id"], b["content"]) for b in results] == [
        ("tool_result", "toolu_a", "output a"),
        ("tool_result", "toolu_b", "not run: one call per turn"),
    ]
    # The API refuses empty content: an empty assistant turn gets a placeholder.
    assert turns[5]["content"] == [{"type": "text", "text": "(no reply)"}]


def test_cache_breakpoints_mark_the_system_prompt_and_the_last_two_prompts_ends():
    messages = [
        {"role": "system", "content": "system prompt"},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    system, turns = to_anthropic(messages)
    assert system[-1]["cache_control"] == {"type": "ephemeral"}
    marked = [
        (i, block["text"])
        for i, turn in enumerate(turns)
        for block in turn["content"]
        if "cache_control" in block
    ]
    assert marked == [(2, "b"), (4, "d")]
    assert 1 + len(marked) <= 4  # the API allows four breakpoints
    # The caller's messages are left as they were.
    assert "cache_control" not in str(messages)


def test_a_base_url_with_v1_loses_it_since_the_sdk_adds_it():
    assert anthropic_base_url("http://127.0.0.1:9/v1/") == "http://127.0.0.1:9"
    assert (
        anthropic_base_url("https://proxy.example/anthropic") == "https://proxy.example/anthropic"
    )
    assert anthropic_base_url(None) is None


# --- the wire ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_tool_use_replies_and_cache_usage_come_back_as_reply_fields(stream):
    replies = [
        [text_block("Looking first."), tool_use("toolu_1", "shell", command="cat export.py")],
        [tool_use("toolu_2", "finish", summary="done")],
    ]
    with FakeAnthropic(replies) as server:
        model, _ = model_for(server, stream=stream)
        messages = conversation()
        first = model.complete(messages, tools=TOOLS)
        assert first.text == "Looking first."
        assert first.finish_reason == "tool_calls"
        assert first.tool_calls == [
            {
                "id": "toolu_1",
                "name": "shell",
                "arguments": json.dumps({"command": "cat export.py"}),
            }
        ]
        messages += [assistant_message(first), tool_message("toolu_1", "def to_csv(): ...")]
        second = model.complete(messages, tools=TOOLS)
        model.close()
    assert second.tool_calls[0]["name"] == "finish"
    request = server.requests[1]
    assert request.get("stream", False) is stream
    assert [t["name"] for t in request["tools"]] == ["shell", "finish"]
    assert request["tools"][0]["input_schema"]["required"] == ["command"]
    answer = request["messages"][-1]["content"][0]
    assert answer["type"] == "tool_result" and answer["tool_use_id"] == "toolu_1"
    # Usage: the first call writes the prefix to the cache, the second reads it back.
    for reply, usage in zip((first, second), server.usages, strict=True):
        assert reply.usage.cached_tokens == usage["cache_read_input_tokens"]
        assert reply.usage.cache_write_tokens == usage["cache_creation_input_tokens"]
        assert reply.usage.prompt_tokens == (
            usage["input_tokens"]
            + usage["cache_read_input_tokens"]
            + usage["cache_creation_input_tokens"]
        )
        assert reply.usage.completion_tokens == usage["output_tokens"]
    assert first.usage.cached_tokens == 0 and first.usage.cache_write_tokens > 1024
    assert second.usage.cached_tokens == first.usage.cache_write_tokens


@pytest.mark.parametrize("stream", [True, False])
def test_on_text_gets_the_text_deltas_as_they_stream(stream):
    replies = [
        [text_block("Looking first."), tool_use("toolu_1", "shell", command="cat export.py")],
        [text_block("hello")],
    ]
    with FakeAnthropic(replies, overload_mid_stream=0) as server:
        model, _ = model_for(server, stream=stream)  # on_text streams either way
        seen: list[str] = []
        first = model.complete(conversation(), tools=TOOLS, on_text=seen.append)
        server.overload_mid_stream = 1  # the next one fails mid-stream once, then answers
        later: list[str] = []
        second = model.complete(conversation(), on_text=later.append)
        model.close()
    assert seen == ["Looking", " first."] and first.text == "Looking first."
    assert first.tool_calls[0]["name"] == "shell" and first.finish_reason == "tool_calls"
    assert all(request.get("stream") for request in server.requests)
    # The retried stream passes its text on once.
    assert later == ["he", "llo"] and second.text == "hello" and model.retried == 1


def test_what_on_text_raises_ends_the_request_unchanged():
    class Stop(Exception):
        pass

    def stop(piece: str) -> None:
        raise Stop()

    with FakeAnthropic([[text_block("hello")], [text_block("again")]]) as server:
        model, _ = model_for(server)
        with pytest.raises(Stop):
            model.complete(conversation(), on_text=stop)
        assert model.complete(conversation()).text == "again"
        model.close()
    assert model.retried == 0


def test_text_protocol_stop_sequences_are_sent_and_reported_as_stop():
    with FakeAnthropic([[text_block("```bash\nls\n")]]) as server:
        model, _ = model_for(server)
        reply = model.complete(conversation(), stop=["\n```\n", "  "])
    assert server.requests[0]["stop_sequences"] == ["\n```\n"]  # whitespace-only ones dropped
    assert "tools" not in server.requests[0]
    assert reply.finish_reason == "stop" and reply.tool_calls == []


def test_an_overload_is_retried_and_then_answered():
    with FakeAnthropic([[text_block("hello")]], overloads=1) as server:
        model, slept = model_for(server)
        reply = model.complete(conversation())
    assert reply.text == "hello"
    assert server.statuses == [529, 200]
    assert model.retried == 1
    assert slept == [0.0]  # the server's retry-after: 0


def test_an_overload_in_the_middle_of_a_stream_is_retried_too():
    with FakeAnthropic([[text_block("hello")]], overload_mid_stream=1) as server:
        model, slept = model_for(server)
        reply = model.complete(conversation())
    assert reply.text == "hello"
    assert len(server.requests) == 2 and model.retried == 1
    # No retry-after on a stream's error event: exponential backoff, capped.
    assert len(slept) == 1 and 0 < slept[0] <= model.backoff_s


def test_an_overload_that_lasts_is_one_sentence_after_the_retries():
    with FakeAnthropic([[text_block("never")]], overloads=10) as server:
        model, slept = model_for(server, retries=2)
        with pytest.raises(ModelError) as info:
            model.complete(conversation())
    assert len(server.requests) == 3 and len(slept) == 2
    message = info.value.message
    assert "stayed overloaded or rate-limited (HTTP 529) through 2 retries" in message
    assert message.count(". ") == 0 and message.endswith("retry later.")


def test_a_bad_key_is_one_sentence_naming_the_variable():
    with FakeAnthropic([[text_block("never")]]) as server:
        model = AnthropicModel(MODEL, api_key="sk-ant-wrong", base_url=server.base_url)
        with pytest.raises(ModelError) as info:
            model.complete(conversation())
    assert server.statuses == [401]  # not retried
    assert info.value.message == (
        f"{server.base_url} rejected the API key; set a valid ANTHROPIC_API_KEY "
        "(or anthropic_api_key in the config file)."
    )


def test_an_unknown_model_is_one_sentence_naming_it():
    with FakeAnthropic([[text_block("never")]]) as server:
        model = AnthropicModel("claude-nope-9", api_key=API_KEY, base_url=server.base_url)
        with pytest.raises(ModelError) as info:
            model.complete(conversation())
    assert server.statuses == [404]
    assert info.value.message == (
        f"{server.base_url} does not know the model 'claude-nope-9'; pass --model with one "
        "it serves."
    )


def test_an_unreachable_server_is_one_sentence_after_the_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slept: list[float] = []
    model = AnthropicModel(
        MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", sleep=slept.append
    )
    with pytest.raises(ModelError) as info:
        model.complete(conversation())
    assert len(slept) == model.retries
    assert info.value.message == (
        f"the model server at http://127.0.0.1:{port} could not be reached or stopped "
        "answering; check that it is running and retry."
    )


def test_a_refused_request_is_the_servers_message_in_one_sentence():
    with FakeAnthropic([[text_block("never")]]) as server:
        model, _ = model_for(server)
        # A tool_use left unanswered: the API answers 400 invalid_request_error.
        messages = [
            *conversation(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_x", "type": "function", "function": {"name": "shell"}}
                ],
            },
            {"role": "user", "content": "what now"},
        ]
        with pytest.raises(ModelError) as info:
            model.complete(messages, tools=TOOLS)
    assert server.statuses == [400]
    assert info.value.message.startswith(f"{server.base_url} answered HTTP 400: messages.")
    assert "toolu_x" in info.value.message
    assert info.value.message.endswith("rerun with --protocol text.")


# --- choosing the provider ---------------------------------------------------------------


def test_a_claude_name_or_the_provider_setting_opens_the_anthropic_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    by_name = load_settings({"model": MODEL}, cwd=tmp_path)
    assert by_name.provider_name == "anthropic" and not by_name.uses_local_model
    model = open_model(by_name)
    assert isinstance(model, AnthropicModel) and model.name == MODEL
    model.close()

    (tmp_path / "pullsmith.toml").write_text(
        'provider = "anthropic"\nbase_url = "http://127.0.0.1:9/v1"\n', encoding="utf-8"
    )
    by_setting = load_settings({}, cwd=tmp_path)
    model = open_model(by_setting)
    assert isinstance(model, AnthropicModel)
    assert model.name == "claude-sonnet-4-5" and model.base_url == "http://127.0.0.1:9"
    model.close()
    # provider = "openai" keeps a claude name on an OpenAI-compatible router.
    routed = load_settings({"model": MODEL, "provider": "openai", "base_url": "http://x/v1"})
    assert routed.provider_name == "openai" and not isinstance(open_model(routed), AnthropicModel)


def test_no_key_is_one_sentence_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ModelError) as info:
        open_model(load_settings({"model": MODEL}, cwd=tmp_path))
    assert info.value.message == (
        f"no Anthropic API key was found for model '{MODEL}'; set ANTHROPIC_API_KEY "
        "(or anthropic_api_key in the config file)."
    )


# --- a whole run: pullsmith exec with the tools protocol -----------------------------------

FIXED_LOOP = "    for row in rows:\n        lines.append(format_row(row))\n"
BUGGY_LOOP = "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n"


def fix_command(repo) -> str:
    fixed = (repo / "inventory" / "export.py").read_text().replace(BUGGY_LOOP, FIXED_LOOP)
    return f"cat > inventory/export.py <<'EOF'\n{fixed}EOF"


def run_exec(server: FakeAnthropic, repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from pullsmith.cli import main; main()",
            "exec",
            "--model",
            MODEL,
            "--base-url",
            server.base_url,
            "--sandbox",
            SANDBOX,
            "--repo",
            str(repo),
            *args,
            "The CSV export drops the last row. Fix to_csv so every row is exported.",
        ],
        env={**os.environ, "ANTHROPIC_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )


def test_exec_fixes_the_example_repo_through_the_anthropic_provider(example_repo):
    replies = [
        [tool_use("toolu_1", "shell", command="cat inventory/export.py")],
        [
            text_block("It stops one row early."),
            tool_use("toolu_2", "shell", command=fix_command(example_repo)),
        ],
        [tool_use("toolu_3", "finish", summary="to_csv exports every row")],
    ]
    with FakeAnthropic(replies, overloads=1) as server:
        run = run_exec(server, example_repo)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout and "cost $0.0" in run.stdout
    # Every request after the overload was answered; the tools protocol was chosen by name.
    assert server.statuses == [529, 200, 200, 200]
    assert all(r["tools"][0]["name"] == "shell" for r in server.requests)
    branch = next(
        b.strip(" *") for b in git("branch", cwd=example_repo).splitlines() if "pullsmith/" in b
    )
    assert FIXED_LOOP in git("show", f"{branch}:inventory/export.py", cwd=example_repo)

    log = next(line for line in run.stdout.splitlines() if line.startswith("run log: "))
    events = read_events(Path(log.removeprefix("run log: ")))
    replies_seen = [e.data for e in events if e.type == "model.reply"]
    assert len(replies_seen) == 3
    assert [r["cache_write_tokens"] for r in replies_seen] == [
        u["cache_creation_input_tokens"] for u in server.usages
    ]
    assert [r["cached_tokens"] for r in replies_seen] == [
        u["cache_read_input_tokens"] for u in server.usages
    ]
    assert replies_seen[1]["cached_tokens"] > 0  # the second turn read the first one's prefix
    assert all(r["cost_usd"] > 0 for r in replies_seen)
    started = next(e.data for e in events if e.type == "task.started")
    assert started["protocol"] == "tools" and started["price"]["input"] == 3.0
    finished = next(e.data for e in events if e.type == "task.finished")
    assert finished["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in replies_seen))
    assert finished["cache_write_tokens"] == sum(r["cache_write_tokens"] for r in replies_seen)


def test_exec_max_cost_ends_the_run_cleanly_at_the_budget(example_repo):
    replies = [[tool_use(f"toolu_{i}", "shell", command="ls")] for i in range(5)]
    with FakeAnthropic(replies) as server:
        run = run_exec(server, example_repo, "--max-cost", "0.001")
    # The first call costs more than $0.001: the budget is checked before the second.
    assert len(server.requests) == 1
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "stopped: cost limit reached ($0.0" in run.stdout
    assert "spent of the $0.001 budget" in run.stdout


def test_a_timed_out_request_is_not_retried(monkeypatch):
    with FakeAnthropic([[text_block("slow")]]) as server:
        model, slept = model_for(server)
        # The server takes longer to answer than the client waits.
        monkeypatch.setattr(server, "handle", lambda handler, body: time.sleep(3))
        model._client = model._client.with_options(timeout=0.5)
        with pytest.raises(ModelError, match="could not be reached or stopped answering"):
            model.complete(conversation())
    assert len(server.requests) == 1 and slept == []
