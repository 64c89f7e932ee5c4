"""A fake Anthropic Messages API on 127.0.0.1, speaking the real wire format.

POST /v1/messages answers with the next scripted assistant turn (text and `tool_use` blocks),
as JSON or, when the request asks to stream, as the API's server-sent events (message_start,
content_block_start/delta/stop, message_delta, message_stop). It checks what the real API
checks that matters here — the API key (401), the model (404), user and assistant turns
alternating, every `tool_use` answered by a `tool_result` in the next user turn, at most four
cache breakpoints (400) — and can answer with 529 overloads first.

Prompt caching is simulated the way the API documents it: a prefix is cached when a
`cache_control` breakpoint ends it and it holds at least MIN_CACHED tokens; a later request
reads the longest cached prefix that ends at one of its breakpoints or at most LOOKBACK blocks
before one, and writes the rest up to its last breakpoint. Tokens are counted as 4 characters
of the block's JSON each, so the counts are the fake's, not Claude's tokenizer's; the
accounting (which prefix is read, which written) is the API's.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-ant-test-key"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5")
MIN_CACHED = 1024
LOOKBACK = 20
MAX_BREAKPOINTS = 4


def tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj, sort_keys=True, ensure_ascii=False)) // 4)


def text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def tool_use(call_id: str, name: str, **arguments: Any) -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def turn_problem(body: dict) -> str | None:
    """What the real API would refuse in the conversation, or None."""
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    for index, message in enumerate(messages):
        if index and message["role"] == messages[index - 1]["role"]:
            return f"messages: roles must alternate between user and assistant (at {index})"
        content = message["content"]
        if isinstance(content, list) and not content:
            return f"messages.{index}: content must not be empty"
        blocks = content if isinstance(content, list) else [text_block(content)]
        for block in blocks:
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{index}: text content blocks must be non-empty"
        if message["role"] != "assistant":
            continue
        ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        if not ids:
            continue
        following = messages[index + 1]["content"] if index + 1 < len(messages) else []
        answered = [
            b.get("tool_use_id")
            for b in (following if isinstance(following, list) else [])
            if b.get("type") == "tool_result"
        ]
        if sorted(answered) != sorted(ids):
            return (
                f"messages.{index + 1}: tool_use ids were found without tool_result blocks "
                f"immediately after: {', '.join(i for i in ids if i not in answered)}"
            )
    return None


def prompt_blocks(body: dict) -> list[tuple[dict, bool]]:
    """The prompt in cache order (tools, system, messages) as (block, has a breakpoint)."""
    blocks: list[tuple[dict, bool]] = []
    for tool in body.get("tools") or []:
        blocks.append(({"tool": tool}, "cache_control" in tool))
    system = body.get("system") or []
    for block in [text_block(system)] if isinstance(system, str) else system:
        blocks.append(({"system": block}, "cache_control" in block))
    for message in body["messages"]:
        content = message["content"]
        for block in [text_block(content)] if isinstance(content, str) else content:
            blocks.append(({message["role"]: block}, "cache_control" in block))
    return blocks


def _strip(block: dict) -> dict:
    """A block as the cache keys it: its content, not its breakpoint marker."""
    ((key, inner),) = block.items()
    return {key: {k: v for k, v in inner.items() if k != "cache_control"}}


class PromptCache:
    """The server's prompt cache: prefix digest -> tokens."""

    def __init__(self) -> None:
        self.entries: dict[str, int] = {}
        self.lock = threading.Lock()

    def account(self, body: dict) -> tuple[int, int, int]:
        """(uncached input, cache read, cache write) tokens of a request; caches its prefixes."""
        blocks = prompt_blocks(body)
        digests, totals = [], []
        digest, total = hashlib.sha256(), 0
        for block, _ in blocks:
            stripped = _strip(block)
            digest.update(json.dumps(stripped, sort_keys=True).encode())
            total += tokens(stripped)
            digests.append(digest.copy().hexdigest())
            totals.append(total)
        breakpoints = [i for i, (_, marked) in enumerate(blocks) if marked]
        with self.lock:
            read = 0
            for point in breakpoints:
                for position in range(point, max(-1, point - LOOKBACK - 1), -1):
                    if digests[position] in self.entries:
                        read = max(read, totals[position])
                        break
            written = 0
            if breakpoints:
                last = breakpoints[-1]
                if totals[last] >= MIN_CACHED and digests[last] not in self.entries:
                    written = totals[last] - read
                for point in breakpoints:
                    if totals[point] >= MIN_CACHED:
                        self.entries[digests[point]] = totals[point]
        return total - read - written, read, written


class FakeAnthropic:
    """The fake server: `replies` are assistant turns (lists of content blocks), in order.

    `overloads` answers that many requests with 529 first; `overload_mid_stream` sends that
    many streamed answers' overload as an error event after message_start, as the API can.
    `reply_for(request)` may replace the script (it returns the blocks of the next turn).
    """

    def __init__(
        self,
        replies: list[list[dict]] | None = None,
        overloads: int = 0,
        overload_mid_stream: int = 0,
        reply_for: Callable[[dict], list[dict]] | None = None,
    ) -> None:
        self.replies = list(replies or [])
        self.overloads = overloads
        self.overload_mid_stream = overload_mid_stream
        self.reply_for = reply_for
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.usages: list[dict[str, int]] = []
        self.statuses: list[int] = []
        self.cache = PromptCache()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                server.handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- answers -------------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.statuses.append(status)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("request-id", f"req_{len(self.requests)}")
        if status in (429, 529):
            handler.send_header("retry-after", "0")
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, kind: str, text: str) -> None:
        self._send(handler, status, {"type": "error", "error": {"type": kind, "message": text}})

    def handle(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        headers = self.headers[-1]
        # The SDK sends the key as x-api-key or, in newer versions, as a bearer token.
        keys = {headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer ")}
        if API_KEY not in keys:
            return self._error(handler, 401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in headers:
            return self._error(handler, 400, "invalid_request_error", "anthropic-version missing")
        if body.get("model") not in MODELS:
            return self._error(handler, 404, "not_found_error", f"model: {body.get('model')}")
        if self.overloads > 0:
            self.overloads -= 1
            return self._error(handler, 529, "overloaded_error", "Overloaded")
        marked = sum(1 for _, has in prompt_blocks(body) if has)
        problem = turn_problem(body) or (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {marked}."
            if marked > MAX_BREAKPOINTS
            else None
        )
        if problem:
            return self._error(handler, 400, "invalid_request_error", problem)
        if body.get("stream") and self.overload_mid_stream > 0:
            self.overload_mid_stream -= 1
            return self._overloaded_stream(handler, body)
        if self.reply_for is not None:
            content = self.reply_for(body)
        elif self.replies:
            content = self.replies.pop(0)
        else:
            return self._error(handler, 400, "invalid_request_error", "the script ran out")
        uncached, read, written = self.cache.account(body)
        usage = {
            "input_tokens": uncached,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": tokens(content),
        }
        self.usages.append(usage)
        stop = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        message = {
            "id": f"msg_{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream"):
            return self._stream(handler, message)
        return self._send(handler, 200, message)

    def _open_stream(self, handler: BaseHTTPRequestHandler) -> Callable[[str, dict], None]:
        self.statuses.append(200)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True

        def event(kind: str, data: dict) -> None:
            handler.wfile.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        return event

    def _overloaded_stream(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        """A stream that starts, then fails with an overload (the request is not billed)."""
        event = self._open_stream(handler)
        usage = {"input_tokens": 0, "output_tokens": 0}
        start = {
            "id": f"msg_{len(self.requests)}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        event("message_start", {"type": "message_start", "message": start})
        error = {"type": "overloaded_error", "message": "Overloaded"}
        event("error", {"type": "error", "error": error})

    def _stream(self, handler: BaseHTTPRequestHandler, message: dict) -> None:
        event = self._open_stream(handler)

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage}}
        start["usage"]["output_tokens"] = 1
        event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                text = block["text"]
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
            else:
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {**block, "input": {}},
                    },
                )
                raw = json.dumps(block["input"])
                for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": usage,
            },
        )
        event("message_stop", {"type": "message_stop"})
