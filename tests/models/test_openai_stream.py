"""Streamed replies through the real provider over HTTP: a loopback server sending SSE chunks
the way OpenAI and llama.cpp do (tests/fake_openai_stream.py, 127.0.0.1 only), and the agent
turning the pieces into transient `model.delta` events that no log file holds."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from fake_openai_stream import FakeStreamingServer, Scripted

from pullsmith.agent.compaction import compact
from pullsmith.agent.loop import Agent, AgentLimits, Cancelled, Outcome
from pullsmith.agent.prompts import tools_system_prompt
from pullsmith.agent.protocol import TOOLS, protocol_for
from pullsmith.agent.summary import write_summary
from pullsmith.events import Event, EventLog, read_events
from pullsmith.models.openai_compat import ModelError, OpenAIModel
from pullsmith.sandbox import make_sandbox

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve():
    servers: list[FakeStreamingServer] = []

    def start(*replies: Scripted) -> tuple[FakeStreamingServer, OpenAIModel]:
        server = FakeStreamingServer(list(replies))
        servers.append(server)
        return server, OpenAIModel(model="gpt-4.1-mini", base_url=server.base_url, api_key="k")

    yield start
    for server in servers:
        server.close()


def test_the_pieces_arrive_in_order_and_add_up_to_the_reply(serve):
    server, model = serve(Scripted(pieces=["Let ", "me ", "look.\n```bash\n", "ls\n```"]))
    seen: list[str] = []
    reply = model.complete(HI, on_text=seen.append, stop=["\n```\n"])
    assert seen == ["Let ", "me ", "look.\n```bash\n", "ls\n```"]
    assert reply.text == "Let me look.\n```bash\nls\n```"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (50, 7)
    assert reply.usage.cached_tokens == 20  # llama.cpp's timings.cache_n, in the last chunk
    assert reply.finish_reason == "stop" and reply.tool_calls == []
    request = server.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["stop"] == ["\n```\n"]


def test_without_on_text_nothing_is_streamed(serve):
    server, model = serve(Scripted(pieces=["plain ", "answer"]))
    reply = model.complete(HI)
    assert reply.text == "plain answer" and reply.usage.completion_tokens == 7
    assert "stream" not in server.requests[0] and "stream_options" not in server.requests[0]


def test_a_streaming_model_streams_even_when_nobody_reads_the_pieces(serve):
    # The bundled model's requests: the client's timeout is then the silence between pieces.
    server, _ = serve(Scripted(pieces=["plain ", "answer"]))
    model = OpenAIModel(model="local", base_url=server.base_url, api_key="k", stream=True)
    reply = model.complete(HI)
    assert reply.text == "plain answer" and reply.usage.completion_tokens == 7
    assert server.requests[0]["stream"] is True


def test_a_summary_past_its_deadline_is_stopped_while_it_is_written(serve):
    server, model = serve(Scripted(pieces=[f"changed {i}. " for i in range(400)], delay=0.01))
    seen: list[str] = []

    def deadline(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 2:
            raise TimeoutError("the task's time budget was used up while the summary was written")

    with pytest.raises(TimeoutError):
        write_summary(model, HI, deadline)
    assert server.requests[0]["stream"] is True
    assert server.hung_up.wait(10)


def test_a_compaction_stopped_while_it_streams_falls_back_to_pullsmiths_own_summary(serve):
    server, model = serve(Scripted(pieces=[f"summary {i}. " for i in range(400)], delay=0.01))
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "```bash\ncat setup.py\n```"},
        {"role": "user", "content": "exit code 0\n```\nfrom setuptools import setup\n```"},
    ]

    def stop(_piece: str) -> None:
        raise Cancelled()

    done = compact(model, messages, protocol_for("text"), on_text=stop)
    assert done.fallback.startswith("the summary request failed")
    assert "cat setup.py" in done.messages[2]["content"]
    assert server.hung_up.wait(10)


def test_tool_calls_streamed_in_pieces_are_put_together(serve):
    calls = [
        {"id": "call_1", "name": "shell", "arguments": ['{"comm', 'and": "py', 'test -q"}']},
        {"id": "call_2", "name": "finish", "arguments": ['{"summary": ', '"done"}']},
    ]
    streamed = Scripted(pieces=["Running ", "the tests."], tool_calls=calls)
    plain = Scripted(pieces=["Running ", "the tests."], tool_calls=calls)
    server, model = serve(streamed, plain)
    seen: list[str] = []
    reply = model.complete(HI, tools=TOOLS, on_text=seen.append)
    again = model.complete(HI, tools=TOOLS)
    assert seen == ["Running ", "the tests."]
    assert reply.tool_calls == [
        {"id": "call_1", "name": "shell", "arguments": '{"command": "pytest -q"}'},
        {"id": "call_2", "name": "finish", "arguments": '{"summary": "done"}'},
    ]
    assert reply.finish_reason == "tool_calls"
    # The same reply, not streamed, says exactly the same.
    assert (again.text, again.tool_calls, again.finish_reason) == (
        reply.text,
        reply.tool_calls,
        reply.finish_reason,
    )
    assert again.usage == reply.usage


def test_what_on_text_raises_closes_the_stream(serve):
    pieces = [f"word{i} " for i in range(400)]
    server, model = serve(Scripted(pieces=pieces, delay=0.01))
    seen: list[str] = []

    class Stop(Exception):
        pass

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            raise Stop()

    with pytest.raises(Stop):
        model.complete(HI, on_text=on_text)
    assert seen == pieces[:3]
    # The server finds its client gone long before the 400 pieces are sent.
    assert server.hung_up.wait(10)


def test_a_stream_that_breaks_off_is_one_sentence(serve):
    server, model = serve(Scripted(pieces=["a", "b"]))
    server.close()  # nobody answers at all
    with pytest.raises(ModelError) as info:
        model.complete(HI, on_text=lambda piece: None)
    assert "could not be reached or stopped answering" in str(info.value)


def test_the_agent_streams_each_reply_as_transient_events_only(tmp_path: Path, serve):
    tool = {"id": "call_1", "name": "shell", "arguments": ['{"command": ', '"echo hi"}']}
    finish = {"id": "call_2", "name": "finish", "arguments": ['{"summary": "said hi"}']}
    server, model = serve(
        Scripted(pieces=["Say ", "hi."], tool_calls=[tool]),
        Scripted(pieces=["Done", "."], tool_calls=[finish]),
    )
    log_path = tmp_path / "events.jsonl"
    events = EventLog("t1", log_path)
    live: list[Event] = []
    written: list[Event] = []
    events.subscribe(live.append, "live", transient=True)
    events.subscribe(written.append, "plain")
    sandbox = make_sandbox("none", tmp_path)
    agent = Agent(model, sandbox, events, protocol="tools", stream=True)
    try:
        outcome = agent.run(tools_system_prompt(), "Say hi.")
    finally:
        sandbox.close()
        events.close()
    assert outcome.finished and outcome.summary == "said hi"
    deltas = [(e.data["turn"], e.data["text"]) for e in live if e.type == "model.delta"]
    assert deltas == [(1, "Say "), (1, "hi."), (2, "Done"), (2, ".")]
    assert all(e.id == 0 and e.transient for e in live if e.type == "model.delta")
    # Each turn's pieces come before its model.reply, which is as it always was.
    kinds = [e.type for e in live]
    assert kinds.index("model.reply") == 2 and kinds.count("model.delta") == 4
    assert all(e.type != "model.delta" for e in written)
    logged = read_events(log_path)
    assert [e.type for e in logged] == [e.type for e in written]
    assert [e.id for e in logged] == list(range(1, len(logged) + 1))
    assert "model.delta" not in log_path.read_text()
    reply = next(e for e in logged if e.type == "model.reply")
    assert reply.data["text"] == "Say hi." and reply.data["cached_tokens"] == 20
    assert json.loads(reply.data["tool_calls"][0]["arguments"]) == {"command": "echo hi"}


def run_agent(model: OpenAIModel, events: EventLog, tmp_path: Path, **options: Any) -> Outcome:
    """One run of the agent, unsandboxed in `tmp_path`; the log is closed after it."""
    sandbox = make_sandbox("none", tmp_path)
    try:
        return Agent(model, sandbox, events, **options).run("system", "go")
    finally:
        sandbox.close()
        events.close()


def test_a_cancel_during_a_streamed_reply_closes_the_stream(tmp_path: Path, serve):
    server, model = serve(Scripted(pieces=[f"thinking {i}. " for i in range(400)], delay=0.01))
    events = EventLog("t1", tmp_path / "events.jsonl")
    cancel = threading.Event()

    def listener(event: Event) -> None:
        if event.type == "model.delta":
            cancel.set()  # Ctrl-C while the reply streams

    events.subscribe(listener, transient=True)
    outcome = run_agent(model, events, tmp_path, stream=True, cancel=cancel)
    assert outcome.exit_reason == "cancelled" and outcome.turns == 0
    assert server.hung_up.wait(10)
    logged = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert logged == ["limit.reached"]


def test_the_time_limit_ends_a_reply_while_it_is_written(tmp_path: Path, serve):
    # Not streaming for listeners: the reply streams anyway, so the limit can stop it. The whole
    # reply would take 400 x 0.02 s = 8 s; the limit is 1 s.
    server, model = serve(Scripted(pieces=[f"thinking {i}. " for i in range(400)], delay=0.02))
    events = EventLog("t1", tmp_path / "events.jsonl")
    outcome = run_agent(model, events, tmp_path, limits=AgentLimits(max_time_s=1.0))
    assert outcome.exit_reason == "time limit reached (1 s)" and outcome.turns == 0
    assert server.requests[0]["stream"] is True
    assert server.hung_up.wait(10)  # the server was told to stop generating
    logged = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert logged == ["limit.reached"]


def test_only_transient_types_are_transient(tmp_path: Path):
    log = EventLog("t1", tmp_path / "events.jsonl")
    with pytest.raises(ValueError):
        log.transient("model.reply", turn=1, text="x", seconds=0.1)
    log.emit("warning", message="one")
    view = EventLog("t1")
    got: list[Event] = []
    view.subscribe(got.append, transient=True)
    view.relay(log.transient("model.delta", turn=1, text="x"))
    view.relay(log.emit("warning", message="two"))
    view.close()
    log.close()
    assert [(e.id, e.type) for e in got] == [(0, "model.delta"), (2, "warning")]
    assert [e.id for e in read_events(tmp_path / "events.jsonl")] == [1, 2]
