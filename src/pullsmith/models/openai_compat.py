"""The OpenAI-compatible provider: OpenAI, vLLM, Ollama, llama.cpp's server, OpenRouter, ..."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai

from pullsmith.errors import UserError
from pullsmith.models.base import Message, Reply, Usage
from pullsmith.text import one_line


class ModelError(UserError):
    """The model could not answer; the run stops but keeps what it did."""


def _cached_tokens(usage: Any, raw: Any) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached:
        return int(cached)
    # llama.cpp's server reports the reused prefix under timings.cache_n instead.
    timings = (getattr(raw, "model_extra", None) or {}).get("timings") or {}
    return int(timings.get("cache_n") or 0)


class OpenAIModel:
    """Chat completions through the official SDK against any compatible base URL."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.2,
        seed: int | None = None,
        max_reply_tokens: int = 2048,
        timeout_s: float = 600.0,
        extra_body: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> None:
        self.name = model
        # Stream every request, read or not: the client's timeout is then the longest silence
        # between two pieces, not the whole reply, which a slow local server can take longer
        # to write than that (and the SDK would send it again, twice, from the start).
        self.stream = stream
        self.base_url = base_url
        self.temperature = temperature
        self.seed = seed
        self.max_reply_tokens = max_reply_tokens
        self.extra_body = extra_body or {}
        # Set when the server refused `stop` (some reasoning models do); then it is left out.
        self.stop_unsupported = False
        self._client = openai.OpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=timeout_s,
            max_retries=2,
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
        if on_text is None and self.stream:
            on_text = _ignore
        kwargs: dict[str, Any] = {
            "model": self.name,
            "messages": messages,
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": self.max_reply_tokens,
        }
        seed = self.seed if seed is None else seed
        if seed is not None:
            kwargs["seed"] = seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if tools:
            kwargs["tools"] = list(tools)
            kwargs["tool_choice"] = "auto"
        if stop and not self.stop_unsupported:
            kwargs["stop"] = list(stop)
        if on_text is not None:
            # Usage comes in a last chunk of its own (llama.cpp adds its timings there too).
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        try:
            raw = self._create(kwargs)
        except openai.BadRequestError as exc:
            if "stop" not in kwargs or "stop" not in str(exc.message).lower():
                raise self._error(exc, tools) from None
            # The server does not take stop sequences: go on without them (the reply is only
            # longer; the protocol ignores what follows the first block).
            self.stop_unsupported = True
            del kwargs["stop"]
            try:
                raw = self._create(kwargs)
            except openai.OpenAIError as again:
                raise self._error(again, tools) from None
        except openai.OpenAIError as exc:
            raise self._error(exc, tools) from None
        if on_text is not None:
            return self._collect(raw, on_text, tools, started)
        choice = raw.choices[0] if raw.choices else None
        message = choice.message if choice else None
        text = (message.content if message else None) or ""
        usage = Usage()
        if raw.usage is not None:
            usage = Usage(
                prompt_tokens=raw.usage.prompt_tokens or 0,
                completion_tokens=raw.usage.completion_tokens or 0,
                cached_tokens=_cached_tokens(raw.usage, raw),
            )
        return Reply(
            text=text,
            usage=usage,
            tool_calls=_tool_calls(message),
            duration_s=time.monotonic() - started,
            finish_reason=(choice.finish_reason if choice else None) or "",
        )

    def _create(self, kwargs: dict[str, Any]) -> Any:
        return self._client.chat.completions.create(**kwargs)

    def _collect(
        self,
        stream: Any,
        on_text: Callable[[str], None],
        tools: list[dict[str, Any]] | None,
        started: float,
    ) -> Reply:
        """The Reply a streamed response adds up to, each text delta given to `on_text` as it
        arrives. Whatever `on_text` raises (a cancel) closes the stream and propagates."""
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish_reason = ""
        usage = Usage()
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens or 0,
                        completion_tokens=chunk.usage.completion_tokens or 0,
                        cached_tokens=_cached_tokens(chunk.usage, chunk),
                    )
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    if delta is None:
                        continue
                    for call in delta.tool_calls or []:
                        _add_call_delta(calls, call)
                    if delta.content:
                        text.append(delta.content)
                        on_text(delta.content)
        except openai.OpenAIError as exc:
            raise self._error(exc, tools) from None
        except httpx.HTTPError:
            raise self._error(openai.APIConnectionError(request=_NO_REQUEST), tools) from None
        finally:
            stream.close()
        return Reply(
            text="".join(text),
            usage=usage,
            tool_calls=[
                {
                    "id": call["id"] or f"call_{index}",
                    "name": call["name"],
                    "arguments": call["arguments"],
                }
                for index, call in enumerate(calls[i] for i in sorted(calls))
                if call["function"]
            ],
            duration_s=time.monotonic() - started,
            finish_reason=finish_reason,
        )

    def _error(self, exc: Exception, tools: list[dict[str, Any]] | None) -> Exception:
        """The one-sentence ModelError for a failed request (other errors pass unchanged)."""
        where = self.base_url or "the OpenAI API"
        if isinstance(exc, openai.AuthenticationError):
            return ModelError(
                f"{where} rejected the API key; set a valid OPENAI_API_KEY "
                "(or api_key in the config file)."
            )
        if isinstance(exc, openai.NotFoundError):
            return ModelError(
                f"{where} does not know the model '{self.name}'; pass --model with one it serves."
            )
        if isinstance(exc, openai.APIConnectionError):
            return ModelError(
                f"the model server at {where} could not be reached or stopped answering; "
                "check that it is running and retry."
            )
        if isinstance(exc, openai.APIStatusError):
            advice = (
                "if it does not support tool calls, rerun with --protocol text"
                if tools
                else "retry later or pick another model"
            )
            return ModelError(
                f"{where} answered HTTP {exc.status_code}: {one_line(exc.message)}; {advice}."
            )
        return exc

    def close(self) -> None:
        self._client.close()


def _ignore(_text: str) -> None:
    """The pieces of a reply streamed only so that a long one is not timed out."""


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    """The function calls of a response message as {"id", "name", "arguments"} dicts."""
    calls = []
    for index, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        if function is None:  # a custom (non-function) tool call; pullsmith declares none
            continue
        calls.append(
            {
                # Some servers leave the id out; every call needs one to be answered.
                "id": getattr(call, "id", None) or f"call_{index}",
                "name": function.name or "",
                "arguments": function.arguments or "",
            }
        )
    return calls


# Stands for the request of a stream that broke off (the SDK's error wants one).
_NO_REQUEST = httpx.Request("POST", "http://127.0.0.1/")


def _add_call_delta(calls: dict[int, dict[str, Any]], delta: Any) -> None:
    """Add one streamed piece of a tool call: the first names it, the rest extend its
    arguments (pieces of one call share its `index`)."""
    index = delta.index if getattr(delta, "index", None) is not None else len(calls)
    call = calls.setdefault(index, {"id": "", "name": "", "arguments": "", "function": False})
    if delta.id:
        call["id"] = delta.id
    function = getattr(delta, "function", None)
    if function is None:
        return
    call["function"] = True
    if function.name:
        call["name"] += function.name
    if function.arguments:
        call["arguments"] += function.arguments
