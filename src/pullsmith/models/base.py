"""The model interface every provider implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]

# The user message that asks a model to summarize the conversation so far, sent when the
# conversation nears its context window (pullsmith.agent.compaction); a replay answers it
# with the run's recorded summaries, apart from its other replies.
COMPACTION_REQUEST = (
    "Your context window is nearly full, so the turns above (after the task) will be replaced "
    "by a summary. Write that summary now, in at most 150 words of plain text: what you found "
    "out about the bug, which files you changed and how, which commands and tests you ran and "
    "what they showed, and what is still left to do. Do not write a command or a code block."
)


@dataclass
class Usage:
    """Tokens of one reply, or a sum of them.

    `prompt_tokens` counts every token of the prompt, cached or not; `cached_tokens` of those
    were read from the provider's prompt cache and `cache_write_tokens` were written to it
    (Anthropic bills writes apart; OpenAI-compatible servers report none).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Reply:
    text: str
    usage: Usage = field(default_factory=Usage)
    # Native tool calls, each {"id", "name", "arguments"} with the arguments as raw JSON text.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    # Why generation ended, as the API says it: "stop" (end of turn or a stop sequence),
    # "length" (the reply-token limit), "tool_calls"; "" when unknown.
    finish_reason: str = ""


class Model(Protocol):
    """Anything that turns a conversation into the next assistant reply."""

    name: str

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
        """Return the next assistant reply for `messages` (at `temperature`, if given).

        `messages` are in the OpenAI wire format, including assistant messages with
        `tool_calls` and `tool` messages answering them. With `tools` (OpenAI function schemas)
        the model may answer with native tool calls, returned in `Reply.tool_calls`. `stop`
        sequences end the reply early (left out of its text) where the provider supports them;
        `seed` overrides the model's sampling seed for this call.

        With `on_text` the reply is streamed: each piece of its text is passed to `on_text` as
        it is generated, in order (together they are `Reply.text`; tool calls and usage come in
        the returned Reply). Whatever `on_text` raises (a cancel) ends the request, its stream
        closed, and propagates. Without it the provider answers as it always did. Callers pass
        `on_text` only when they want it, so a model that does not stream may leave it out.
        """
        ...

    def close(self) -> None:
        """Release what the model holds (a managed server, connections)."""
        ...
