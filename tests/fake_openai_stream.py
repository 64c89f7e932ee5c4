"""A fake OpenAI-compatible server that streams, on 127.0.0.1 only.

`/v1/chat/completions` answers each request with the next scripted `Scripted` reply: as one
`chat.completion` JSON, or, when the request asks to stream, as server-sent events the way
OpenAI and llama.cpp's server send them — a `chat.completion.chunk` per piece of text, tool
calls in pieces (the first naming the call, the others extending its arguments), a last choice
chunk with the finish reason, then (with `stream_options.include_usage`) a chunk with no
choices holding the usage and llama.cpp's `timings`, then `data: [DONE]`.

A reply can wait `delay` seconds between pieces, and wait for `gate` (a threading.Event)
before the piece numbered `gate_at`, so a test can look at what arrived so far. The server
notes each request (`requests`) and whether the client hung up before the stream ended
(`hung_up`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Scripted:
    pieces: list[str] = field(default_factory=list)
    # Each call: {"id", "name", "arguments": [pieces of the JSON text]}.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 50
    completion_tokens: int = 7
    cached_tokens: int = 20
    delay: float = 0.0
    gate: threading.Event | None = None
    gate_at: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class FakeStreamingServer:
    def __init__(self, replies: list[Scripted]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.hung_up = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if not server.replies:
                    self.send_json(400, {"error": {"message": "the fake ran out of replies"}})
                    return
                reply = server.replies.pop(0)
                try:
                    if body.get("stream"):
                        self.stream(body, reply)
                    else:
                        self.send_json(200, completion(body, reply))
                except (BrokenPipeError, ConnectionResetError):
                    server.hung_up.set()

            def send_json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def stream(self, body: dict[str, Any], reply: Scripted) -> None:
                send_stream(self, body, reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_stream(handler: BaseHTTPRequestHandler, body: dict[str, Any], reply: Scripted) -> None:
    """Answer `body` (a request that asked to stream) with `reply` as server-sent events."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    for number, chunk in enumerate(chunks(body, reply)):
        if reply.gate is not None and number == reply.gate_at:
            reply.gate.wait(60)
        if number and reply.delay:
            time.sleep(reply.delay)
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.flush()
    handler.wfile.write(b"data: [DONE]\n\n")
    handler.wfile.flush()


def _usage(reply: Scripted) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _finish(reply: Scripted) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def completion(body: dict[str, Any], reply: Scripted) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for call in reply.tool_calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        "usage": _usage(reply),
        "timings": {"cache_n": reply.cached_tokens},
    }


def chunks(body: dict[str, Any], reply: Scripted) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in reply.pieces]
    for index, call in enumerate(reply.tool_calls):
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        out += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in call["arguments"]
        ]
    out.append(chunk({}, _finish(reply)))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [],
                "usage": _usage(reply),
                "timings": {"cache_n": reply.cached_tokens, "predicted_per_second": 20.0},
            }
        )
    return out
