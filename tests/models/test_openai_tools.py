"""Native tool calls through the real provider, over HTTP, against a fake OpenAI-compatible server.

The server listens on 127.0.0.1 only; it answers in OpenAI's documented chat.completion shape and
refuses (HTTP 400, as OpenAI does) a conversation where a tool call is left unanswered.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_openai_stream import Scripted, send_stream

from pullsmith.agent.loop import Agent
from pullsmith.agent.prompts import tools_system_prompt
from pullsmith.agent.protocol import NOT_RUN, TOOLS
from pullsmith.events import EventLog
from pullsmith.models.openai_compat import ModelError, OpenAIModel
from pullsmith.sandbox import bwrap_available, make_sandbox

SANDBOX = "bwrap" if bwrap_available() is None else "none"


def tool_call(call_id: str, name: str, **arguments: str) -> dict:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def unanswered_calls(messages: list[dict]) -> str | None:
    """What OpenAI would refuse: tool calls not answered by the tool messages right after."""
    for index, message in enumerate(messages):
        ids = [c["id"] for c in message.get("tool_calls") or []]
        following = messages[index + 1 : index + 1 + len(ids)]
        if [m.get("tool_call_id") for m in following] != ids:
            return f"tool calls {ids} must be answered by tool messages"
    return None


class FakeServer:
    """/v1/chat/completions answering with the scripted assistant messages, in order."""

    def __init__(
        self, replies: list[dict], status: int = 200, error: str = "", refuse_stop: bool = False
    ) -> None:
        self.replies = list(replies)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                problem = error or unanswered_calls(body["messages"])
                if refuse_stop and "stop" in body:
                    # What OpenAI answers for reasoning models, which take no stop sequences.
                    problem = "Unsupported parameter: 'stop' is not supported with this model."
                if status != 200 or problem or not server.replies:
                    message = problem or "the fake server ran out of replies"
                    payload = {"error": {"message": message, "type": "invalid_request_error"}}
                    self.send(status if status != 200 else 400, payload)
                    return
                message = server.replies.pop(0)
                if body.get("stream"):
                    calls = [
                        {
                            **c,
                            "name": c["function"]["name"],
                            "arguments": [c["function"]["arguments"]],
                        }
                        for c in message.get("tool_calls", [])
                    ]
                    reply = Scripted(
                        [message["content"]] if message.get("content") else [],
                        tool_calls=calls,
                        completion_tokens=5,
                        cached_tokens=40,
                    )
                    send_stream(self, body, reply)
                    return
                self.send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": None, **message},
                                "logprobs": None,
                                "finish_reason": "tool_calls"
                                if "tool_calls" in message
                                else "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 50,
                            "completion_tokens": 5,
                            "total_tokens": 55,
                            "prompt_tokens_details": {"cached_tokens": 40},
                        },
                    },
                )

            def send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def model(self) -> OpenAIModel:
        return OpenAIModel(model="gpt-4.1-mini", base_url=self.base_url, api_key="sk-test")

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_complete_sends_tools_and_returns_the_calls():
    replies = [
        {"content": "Looking.", "tool_calls": [tool_call("call_a", "shell", command="ls")]},
        {"content": "plain"},
        # Some servers leave the id out; the call still needs one to be answered.
        {"tool_calls": [{"type": "function", "function": {"name": "finish", "arguments": "{}"}}]},
    ]
    with FakeServer(replies) as server:
        model = server.model()
        reply = model.complete([{"role": "user", "content": "hi"}], tools=TOOLS)
        plain = model.complete([{"role": "user", "content": "hi"}])
        no_id = model.complete([{"role": "user", "content": "hi"}], tools=TOOLS)
        model.close()
    assert reply.text == "Looking."
    assert reply.tool_calls == [{"id": "call_a", "name": "shell", "arguments": '{"command": "ls"}'}]
    assert reply.usage.prompt_tokens == 50 and reply.usage.cached_tokens == 40
    assert server.requests[0]["tools"] == TOOLS and server.requests[0]["tool_choice"] == "auto"
    assert plain.text == "plain" and plain.tool_calls == []
    assert "tools" not in server.requests[1] and "tool_choice" not in server.requests[1]
    assert no_id.text == "" and no_id.tool_calls == [
        {"id": "call_0", "name": "finish", "arguments": "{}"}
    ]


def test_stop_sequences_and_the_seed_reach_the_server():
    with FakeServer([{"content": "```bash\nls"}]) as server:
        model = server.model()
        reply = model.complete([{"role": "user", "content": "hi"}], stop=["\n```\n"], seed=7)
        model.close()
    assert server.requests[0]["stop"] == ["\n```\n"] and server.requests[0]["seed"] == 7
    assert reply.finish_reason == "stop"


def test_a_server_refusing_stop_sequences_is_asked_again_without_them():
    replies = [{"content": "one"}, {"content": "two"}]
    with FakeServer(replies, refuse_stop=True) as server:
        model = server.model()
        first = model.complete([{"role": "user", "content": "hi"}], stop=["\n```\n"])
        second = model.complete([{"role": "user", "content": "hi"}], stop=["\n```\n"])
        model.close()
    assert (first.text, second.text) == ("one", "two")
    # Refused once, then left out for the rest of the run.
    assert ["stop" in r for r in server.requests] == [True, False, False]


def test_a_server_refusing_tools_says_to_use_the_text_protocol():
    with FakeServer([], status=400, error="tools param requires --jinja flag") as server:
        model = server.model()
        with pytest.raises(ModelError) as info:
            model.complete([{"role": "user", "content": "hi"}], tools=TOOLS)
        model.close()
    message = str(info.value)
    assert "HTTP 400" in message and "--jinja" in message
    assert message.endswith("rerun with --protocol text.")


def test_the_agent_edits_a_file_over_http_in_a_real_sandbox(tmp_path: Path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "area.py").write_text("def area(w, h):\n    return w + h\n")
    write = "cat > area.py <<'EOF'\ndef area(w, h):\n    return w * h\nEOF"
    replies = [
        {
            "content": "Fix the operator, then check.",
            "tool_calls": [
                tool_call("call_1", "shell", command=write),
                tool_call("call_2", "shell", command="cat area.py"),
            ],
        },
        {
            "tool_calls": [
                tool_call(
                    "call_3", "shell", command="python3 -c 'import area; print(area.area(3, 4))'"
                )
            ]
        },
        {"tool_calls": [tool_call("call_4", "finish", summary="area multiplies")]},
    ]
    sandbox = make_sandbox(SANDBOX, workspace)
    events = EventLog("t1", tmp_path / "events.jsonl")
    with FakeServer(replies) as server:
        model = server.model()
        try:
            agent = Agent(model, sandbox, events, protocol="tools")
            outcome = agent.run(tools_system_prompt(), "Fix area().")
        finally:
            model.close()
            sandbox.close()
    assert outcome.finished and outcome.summary == "area multiplies" and outcome.turns == 3
    assert outcome.usage.prompt_tokens == 150 and outcome.usage.cached_tokens == 120
    assert (workspace / "area.py").read_text() == "def area(w, h):\n    return w * h\n"
    assert len(server.requests) == 3
    for request in server.requests:
        assert request["tools"] == TOOLS and request["tool_choice"] == "auto"
    # The second turn carries the assistant message as the API sent it, then one tool message
    # per call: the first with the observation, the second not run.
    second = server.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "tool"]
    assert second[2] == {
        "role": "assistant",
        "content": "Fix the operator, then check.",
        "tool_calls": replies[0]["tool_calls"],
    }
    assert second[3]["tool_call_id"] == "call_1"
    assert second[3]["content"].startswith("exit code 0\n")
    assert "2 tool calls; I ran only the first" in second[3]["content"]
    assert second[4] == {"role": "tool", "tool_call_id": "call_2", "content": NOT_RUN}
    third = server.requests[2]["messages"]
    assert third[:5] == second  # append-only
    assert third[5] == {
        "role": "assistant",
        "content": None,
        "tool_calls": replies[1]["tool_calls"],
    }
    assert third[6]["role"] == "tool" and third[6]["tool_call_id"] == "call_3"
    assert third[6]["content"] == "exit code 0\n```\n12\n```"
