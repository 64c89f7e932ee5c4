"""The Anthropic provider: Claude through the official `anthropic` SDK's Messages API.

The agent keeps its conversation in the OpenAI wire format (models/base.py); this module
translates it on every call:

- system messages become the `system` blocks;
- user messages become user turns of text blocks, `tool` messages become `tool_result` blocks
  of a user turn (consecutive ones are merged: the API wants user and assistant turns to
  alternate, and every `tool_use` answered in the very next user turn);
- assistant messages become assistant turns of a text block and `tool_use` blocks;
- OpenAI function schemas become Anthropic tools (`name`, `description`, `input_schema`).

Prompt caching: `cache_control` marks the end of the system prompt (the tools and the system
prompt, the same on every turn), the end of the history the previous call sent (so this call
reads it back from the cache whatever the API's lookback reaches) and the end of this call's
prompt (written for the next turn). The history is append-only, so a long run pays for each
prefix once and reads it at the cached price after.

Replies are streamed (`messages.stream`) and collected whole into one `Reply`; with `on_text`
each text delta is passed on as it arrives (a retry after some were passed on passes no more:
the Reply holds the text that counts). Streaming keeps a long reply from hitting the SDK's limit on unstreamed requests
and lets an overload that arrives mid-stream be retried like one at the start. Overload (529),
rate limits (429), other 5xx and dropped connections are retried with exponential backoff
(honouring `retry-after`; a request that timed out is not retried); what cannot be retried
becomes the same one-sentence `ModelError`s the OpenAI provider gives.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import anthropic

from pullsmith.models.base import Message, Reply, Usage
from pullsmith.models.openai_compat import ModelError
from pullsmith.text import one_line

EPHEMERAL = {"type": "ephemeral"}
# What stands in for an empty assistant turn: the API refuses empty content.
EMPTY_REPLY = "(no reply)"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "refusal": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}
RETRIED_STATUS = (408, 409, 429)
RETRIED_TYPES = ("overloaded_error", "rate_limit_error", "api_error")


def anthropic_base_url(base_url: str | None) -> str | None:
    """The SDK's base URL for `--base-url`: the SDK adds /v1/messages itself, so a URL given
    with a trailing /v1 (as OpenAI-style URLs are) loses it."""
    if base_url is None:
        return None
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class AnthropicModel:
    """Claude through the Messages API, with native tool use, prompt caching and retries."""

    def __init__(
        self,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float = 0.2,
        seed: int | None = None,
        max_reply_tokens: int = 2048,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stream: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = model
        self.base_url = anthropic_base_url(base_url)
        self.temperature = temperature
        self.seed = seed  # the Messages API takes no seed; kept for the interface
        self.max_reply_tokens = max_reply_tokens
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stream = stream
        self.retried = 0  # how many calls were retried, for the curious
        self._sleep = sleep
        if not api_key:
            raise ModelError(
                f"no Anthropic API key was found for model '{model}'; set ANTHROPIC_API_KEY "
                "(or anthropic_api_key in the config file)."
            )
        # Retries are ours (below): they also cover an overload that arrives mid-stream.
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, timeout=timeout_s, max_retries=0
        )

    def complete(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        started = time.monotonic()
        request = self.request(messages, temperature=temperature, tools=tools, stop=stop)
        message = self._call(request, tools, on_text)
        return reply_from(message, time.monotonic() - started)

    def request(
        self,
        messages: list[Message],
        *,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of `messages.create`/`messages.stream` for this conversation."""
        system, turns = to_anthropic(messages)
        # The SDK's Messages API takes no temperature (nor seed) for current Claude models:
        # `temperature` is accepted for the Model protocol and left out of the request.
        kwargs: dict[str, Any] = {
            "model": self.name,
            "max_tokens": self.max_reply_tokens,
            "messages": turns,
        }
        if system:
            kwargs["system"] = system
        if tools:
            kwargs["tools"] = [to_anthropic_tool(tool) for tool in tools]
        if stop:
            # The API refuses stop sequences that are only whitespace.
            sequences = [s for s in stop if s.strip()]
            if sequences:
                kwargs["stop_sequences"] = sequences
        return kwargs

    def _call(
        self,
        request: dict[str, Any],
        tools: list[dict[str, Any]] | None,
        on_text: Callable[[str], None] | None = None,
    ) -> Any:
        attempt = 0
        passed_on = False  # whether on_text was given some of an attempt's text
        while True:
            try:
                if not self.stream and on_text is None:
                    return self._client.messages.create(**request)
                with self._client.messages.stream(**request) as stream:
                    if on_text is not None and not passed_on:
                        for text in stream.text_stream:
                            passed_on = True
                            on_text(text)
                    return stream.get_final_message()
            except anthropic.AnthropicError as exc:
                if attempt >= self.retries or not _retryable(exc):
                    raise self._error(exc, tools) from None
                attempt += 1
                self.retried += 1
                self._sleep(self._delay(exc, attempt))

    def _delay(self, exc: Exception, attempt: int) -> float:
        """Seconds before retry `attempt` (1-based): `retry-after` when the server sent one,
        else exponential backoff with jitter, capped at `max_backoff_s`."""
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(header)))
            except ValueError:
                pass
        base = self.backoff_s * 2 ** (attempt - 1)
        return min(self.max_backoff_s, base * (0.5 + random.random() / 2))

    def _error(self, exc: Exception, tools: list[dict[str, Any]] | None) -> Exception:
        """The one-sentence ModelError for a failed request (other errors pass unchanged)."""
        where = self.base_url or "the Anthropic API"
        if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
            return ModelError(
                f"{where} rejected the API key; set a valid ANTHROPIC_API_KEY "
                "(or anthropic_api_key in the config file)."
            )
        if isinstance(exc, anthropic.NotFoundError):
            return ModelError(
                f"{where} does not know the model '{self.name}'; pass --model with one it serves."
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ModelError(
                f"the model server at {where} could not be reached or stopped answering; "
                "check that it is running and retry."
            )
        if isinstance(exc, anthropic.APIStatusError):
            if _retryable(exc):
                return ModelError(
                    f"{where} stayed overloaded or rate-limited (HTTP {exc.status_code}) through "
                    f"{self.retries} retries: {one_line(_message(exc))}; retry later."
                )
            advice = (
                "if it does not support tool calls, rerun with --protocol text"
                if tools
                else "retry later or pick another model"
            )
            return ModelError(
                f"{where} answered HTTP {exc.status_code}: {one_line(_message(exc))}; {advice}."
            )
        return exc

    def close(self) -> None:
        self._client.close()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, anthropic.APITimeoutError):
        return False  # it already waited the whole timeout; waiting again helps no one
    if isinstance(exc, anthropic.APIConnectionError):
        return True
    if not isinstance(exc, anthropic.APIStatusError):
        return False
    # An error event inside a stream arrives on a 200 response; its body names the error.
    kind = _error_type(exc)
    if kind in RETRIED_TYPES:
        return True
    return exc.status_code in RETRIED_STATUS or exc.status_code >= 500


def _error_type(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("type") or "")


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(error.get("message") or exc.message)


# --- translation ---------------------------------------------------------------------------


def to_anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function schema as an Anthropic tool."""
    function = tool.get("function", tool)
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, json.JSONDecodeError):
        # Claude's own calls are always objects; a malformed one from elsewhere is kept whole.
        return {"arguments": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def to_anthropic(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The OpenAI-format conversation as Anthropic `system` blocks and `messages` turns, with
    the cache breakpoints described in the module's docstring."""
    system = [
        {"type": "text", "text": _text(m.get("content"))}
        for m in messages
        if m.get("role") in ("system", "developer") and _text(m.get("content"))
    ]
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text(message.get("content"))
            if text.strip():
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function.get("name", ""),
                        "input": _tool_input(function.get("arguments")),
                    }
                )
            add("assistant", blocks or [{"type": "text", "text": EMPTY_REPLY}])
        elif role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message["tool_call_id"],
                        "content": _text(message.get("content")) or "(no output)",
                    }
                ],
            )
        else:
            add("user", [{"type": "text", "text": _text(message.get("content")) or "(empty)"}])
    _mark_cache(system, turns)
    return system, turns


def _mark_cache(system: list[dict[str, Any]], turns: list[dict[str, Any]]) -> None:
    """At most three of the API's four cache breakpoints: the system prompt's end, the end of
    the prompt the previous call sent (the last user turn before the last assistant turn) and
    the end of this prompt."""
    if system:
        system[-1]["cache_control"] = dict(EPHEMERAL)
    users = [i for i, turn in enumerate(turns) if turn["role"] == "user"]
    marked = users[-2:] if len(users) >= 2 else users
    for index in marked:
        content = turns[index]["content"]
        content[-1] = {**content[-1], "cache_control": dict(EPHEMERAL)}


def reply_from(message: Any, seconds: float) -> Reply:
    """A Messages API response as a Reply: its text, tool calls, stop reason and usage."""
    texts, calls = [], []
    for block in getattr(message, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            texts.append(block.text)
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.id,
                    "name": block.name,
                    "arguments": json.dumps(block.input, ensure_ascii=False),
                }
            )
    return Reply(
        text="".join(texts),
        usage=usage_from(getattr(message, "usage", None)),
        tool_calls=calls,
        duration_s=seconds,
        finish_reason=STOP_REASONS.get(str(getattr(message, "stop_reason", "") or ""), ""),
    )


def usage_from(usage: Any) -> Usage:
    """Anthropic's usage as a Usage: its `input_tokens` leave out the cached ones, so the
    prompt is input + cache reads + cache writes."""
    if usage is None:
        return Usage()
    uncached = int(getattr(usage, "input_tokens", 0) or 0)
    read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
    written = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return Usage(
        prompt_tokens=uncached + read + written,
        completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        cached_tokens=read,
        cache_write_tokens=written,
    )
