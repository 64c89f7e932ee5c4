"""The agent loop: ask the model, run the one command it wrote, show it the result, repeat.

`Agent.step` is one turn read straight down. Everything that ends a turn early is an exception
carrying what the model is told instead, and `Agent.run` handles them all in one place:
FormatError (a malformed reply, or `Repeated`: the same reply again), `CommandFailed` (a finish
after a failed command), `FinishRejected` (the verifier's objection), `Finished`, and
`LimitReached` (turns, time, tokens, cost, context window, stuck, or `Cancelled`).

When the conversation nears the model's context window, the older turns are compacted into a
summary the model writes (see compaction.py) and the run goes on; only a conversation that
still does not fit afterwards stops with "context window full". `compact()` does it on request.

A front end at a terminal may set `approve`, asked before each command (and again when a
sandboxed command failed, whether to run it outside the sandbox); a refusal is `CommandRefused`,
an interruption carrying the user's reason to the model. `run(..., history=...)` continues an
earlier conversation (an interactive session's next request) instead of starting one. With
`stream`, each reply is streamed as it is generated, its pieces passed to the listeners as
transient `model.delta` events; a cancel closes the stream at the next piece.

Two protocols carry the commands (see protocol.py): "text", a fenced ```bash block per reply
answered by a user message, and "tools", a native `shell` or `finish` tool call answered by a
`tool` message (a format error answers the bad call, or is a user message when the reply made
no call). Limits, repeat detection, verification on finish and the after-command hook behave the
same in both; the history is append-only in both (llama.cpp reuses its prompt cache).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pullsmith.agent.compaction import Compaction, CompactionError, compact, message_chars
from pullsmith.agent.prompts import mcp_observation, observation
from pullsmith.agent.protocol import ActionProtocol, FormatError, assistant_message, protocol_for
from pullsmith.events import EventLog
from pullsmith.mcp.tools import McpCall, McpResult
from pullsmith.models.base import Message, Model, Reply, Usage
from pullsmith.models.prices import Pricing
from pullsmith.models.replay import TRANSCRIPT_FILE
from pullsmith.sandbox.base import CommandResult, Sandbox

# Checks the work when the model says it is done: None means accepted, a string is what the
# model is told instead (for example the failing test output).
Verifier = Callable[[], str | None]
# Looks at the workspace after a command and returns a note for the model, or None.
AfterCommand = Callable[[str, CommandResult], str | None]
# Makes one call of an MCP tool (pullsmith.mcp.client.McpHub.call); never raises.
CallMcp = Callable[[McpCall], McpResult]


@dataclass(frozen=True)
class Decision:
    """A front end's answer about one command: run it (outside the sandbox?) or refuse it,
    with the reason the model is told."""

    run: bool = True
    outside_sandbox: bool = False
    reason: str = ""


# Asked before a command runs (`failed` is None), and after a sandboxed command failed (`failed`
# is its result; a Decision to run outside the sandbox runs it again there). May block for as
# long as the person takes to answer.
Approve = Callable[[str, CommandResult | None], Decision]

# What answers the last reply of an earlier conversation when a new request continues it.
CONTINUED = "(This is where the previous request ended.)"


class Interruption(Exception):
    """Ends a turn early; `message` is what the model is told about its reply."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CommandFailed(Interruption):
    """The reply finished after a command that failed."""


class CommandRefused(Interruption):
    """The person at the terminal refused to let the command run; `message` gives their
    reason to the model."""

    def __init__(self, command: str, reason: str, after_failure: str = "") -> None:
        why = reason.strip() or "no reason given"
        first = command.strip().splitlines()[0] if command.strip() else command
        text = (
            f"{after_failure}\nThe user would not run it outside the sandbox ({why})."
            if after_failure
            else f"The user refused to run `{first[:200]}` ({why}). It did not run. "
            "Take that into account and do something else."
        )
        super().__init__(text)
        self.command = command
        self.reason = why


class CommandBlocked(Interruption):
    """The command was not run: `check_command` said why (a rewrite that would wreck a file)."""


class FinishRejected(Interruption):
    """The verifier refused a finish: `reason` in its words, `message` clipped for the model."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Repeated(FormatError):
    """The reply was exactly an earlier one; it counts as a malformed reply."""

    def __init__(self) -> None:
        super().__init__(
            "You sent exactly this reply before, and it did not finish the task. "
            "Look at the last output again and try something different."
        )


class Finished(Exception):
    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


class LimitReached(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cancelled(LimitReached):
    """The `cancel` event was set, or the sandbox says it cancelled the command."""

    def __init__(self) -> None:
        super().__init__("cancelled")


@dataclass(frozen=True)
class AgentLimits:
    max_turns: int = 20
    max_time_s: float = 1200.0
    max_tokens: int = 400_000
    context_tokens: int | None = None
    reply_tokens: int = 2048
    format_errors: int = 3
    finish_retries: int = 2
    observation_chars: int = 4000
    # The task's budget in US dollars (None: none), and what earlier attempts of the task
    # already spent. Checked before each model call, so the last call may go over by one
    # reply's cost; it needs a known price (the Agent's `pricing`).
    max_cost: float | None = None
    cost_before: float = 0.0
    # End the run at this many exact repeats in a row (None: repeats only count as format
    # errors). A small model that repeats itself rarely recovers (3 of 46 runs measured), so
    # when another attempt will follow, a fresh start is the better use of the time.
    stuck_repeats: int | None = None
    # Near the context window, compact the older turns into a summary instead of stopping,
    # keeping this many of the last turns verbatim.
    compact: bool = True
    keep_turns: int = 2


@dataclass
class Outcome:
    finished: bool
    exit_reason: str
    summary: str = ""
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    model_seconds: float = 0.0
    # What this run's model calls cost in US dollars; None when the price is unknown.
    cost_usd: float | None = None
    compactions: int = 0


def clip(text: str, limit: int) -> str:
    """Keep the head and the tail of long text and say how much was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"


class Agent:
    def __init__(
        self,
        model: Model,
        sandbox: Sandbox,
        events: EventLog,
        limits: AgentLimits | None = None,
        verify: Verifier | None = None,
        history_path: Path | None = None,
        after_command: AfterCommand | None = None,
        protocol: str | ActionProtocol = "text",
        cancel: threading.Event | None = None,
        pricing: Pricing | None = None,
        call_mcp: CallMcp | None = None,
        approve: Approve | None = None,
        outside_sandbox: Sandbox | None = None,
        stream: bool = False,
        check_command: Callable[[str], str | None] | None = None,
    ) -> None:
        self.wire = protocol_for(protocol) if isinstance(protocol, str) else protocol
        self.protocol = self.wire.name  # the name ("text" or "tools"), which prompts_for takes
        self.model = model
        self.sandbox = sandbox
        self.events = events
        self.limits = limits or AgentLimits()
        self.verify = verify
        self.after_command = after_command
        # Asked before a command runs; what it returns is why it must not (see CommandBlocked).
        self.check_command = check_command
        self.history_path = history_path
        self.cancel = cancel
        self.pricing = pricing
        self.call_mcp = call_mcp
        # The approval hook and where an approved command runs unconfined (see Approve).
        self.approve = approve
        self.outside_sandbox = outside_sandbox
        # Stream each reply: its pieces become transient `model.delta` events (see _delta).
        self.stream = stream
        self.messages: list[Message] = []
        # Every message in the order the model saw them, once a compaction replaced some of
        # `messages` (None before): saved as transcript.json next to the history for replays.
        self.transcript: list[Message] | None = None
        # Where this run's own messages start (after a continued conversation's).
        self._own_from = 0
        self.usage = Usage()
        self.turns = 0
        self.model_seconds = 0.0
        self.format_errors = 0
        self.repeats = 0
        self.finish_rejections = 0
        self._started = 0.0
        self._last_prompt_tokens = 0
        # Tokens per character of the last counted prompt, and whether the messages up to the
        # last reply are still the ones it counted (a compaction replaces them).
        self._tokens_per_char = 1 / 3
        self._measured = False
        self._counted_valid = True
        self.compactions = 0
        self._compacted_at_turn = -1
        # The last reply, until a message answers it (its tool calls each need a `tool` message).
        self._unanswered: Reply | None = None

    def run(self, system: str, first: str, history: list[Message] | None = None) -> Outcome:
        """Run until finished or stopped. With `history` (an earlier conversation), `system` is
        not used: the conversation goes on with `first` as the next user message, so the
        prompt's prefix stays as the model (and its cache) saw it."""
        self._started = time.monotonic()
        self.messages = []
        if history:
            self._append(*history)
            last = history[-1]
            if last.get("role") == "assistant":
                # Its tool calls (a finish, or a command cut short) each need an answer.
                for call in last.get("tool_calls") or []:
                    self._append({"role": "tool", "tool_call_id": call["id"], "content": CONTINUED})
            self._own_from = len(self.messages)
        else:
            self.add("system", system)
        self.add("user", first)
        while True:
            try:
                self.step()
            except FormatError as exc:  # a malformed reply, or a repeated one
                self.format_errors += 1
                self.events.emit("format.error", turn=self.turns, message=str(exc))
                if self.format_errors > self.limits.format_errors:
                    return self._outcome(False, "too many malformed replies")
                self.answer(str(exc))
            except FinishRejected as exc:
                self.events.emit("finish.rejected", turn=self.turns, reason=exc.reason)
                self.answer(exc.message)
            except Interruption as exc:
                self.answer(exc.message)
            except Finished as exc:
                self.events.emit("agent.finished", turn=self.turns, summary=exc.summary)
                return self._outcome(True, "finished", exc.summary)
            except LimitReached as exc:  # a limit, stuck, or cancelled
                self.events.emit("limit.reached", turn=self.turns, reason=exc.reason)
                return self._outcome(False, exc.reason)

    def step(self) -> None:
        """One turn: ask, record, parse, run, observe; whatever ends it early is raised."""
        self._check_limits()
        # Always streamed: for the listeners when `stream` is set, and so that the time limit
        # and a cancel can end a reply while it is written (on a slow machine one reply can take
        # minutes; streamed, the client's timeout is per piece, not per reply).
        reply = self.wire.ask(self.model, self.messages, self._temperature(), self._delta)
        repeated = self._said_before(reply)
        self._record(reply)
        action = self.wire.parse(reply)
        # A finish that was refused earlier may be right now that the code changed: the
        # verifier, not the repeat check, decides it.
        self._check_repeat(repeated and not action.finish)
        if action.mcp is not None:
            self.answer(self._observe_mcp(self.execute_mcp(action.mcp), action.note))
            return
        if action.command and self.check_command is not None:
            blocked = self.check_command(action.command)
            if blocked:
                raise CommandBlocked(blocked)
        result = self.execute(action.command) if action.command else None
        if not action.finish:
            assert result is not None  # every action but a finish has a command
            note = self.after_command(action.command, result) if self.after_command else None
            self.answer(self._observe(result, note, action.note))
            return
        if result is not None and result.exit_code != 0:
            raise CommandFailed(
                self._observe(result) + "\nThat command failed, so the task is not finished yet."
            )
        problem = self.verify() if self.verify else None
        if problem and self.finish_rejections < self.limits.finish_retries:
            self.finish_rejections += 1
            raise FinishRejected(problem, clip(problem, self.limits.observation_chars))
        raise Finished(action.summary)

    def execute(self, command: str) -> CommandResult:
        """Run `command` (asking `approve` first when set); raises CommandRefused or Cancelled."""
        outside = False
        if self.approve is not None:
            decision = self.approve(command, None)
            if not decision.run:
                raise CommandRefused(command, decision.reason)
            outside = decision.outside_sandbox and self.outside_sandbox is not None
        result = self._run(command, outside)
        if self.approve is None or outside or result.exit_code == 0 or self._cancelled():
            return result
        if self.outside_sandbox is None:
            return result
        again = self.approve(command, result)
        if again.run and again.outside_sandbox:
            return self._run(command, True)
        if not again.run and again.reason:
            raise CommandRefused(command, again.reason, after_failure=self._observe(result))
        return result

    def _run(self, command: str, outside: bool) -> CommandResult:
        self.events.emit("command.started", turn=self.turns, command=command)
        box = self.outside_sandbox if outside and self.outside_sandbox is not None else self.sandbox
        result = box.run(command)
        cancelled = bool(getattr(result, "cancelled", False))  # newer sandboxes say so
        self.events.emit(
            "command.finished",
            turn=self.turns,
            command=command,
            exit_code=result.exit_code,
            seconds=round(result.duration_s, 3),
            output=result.output,
            truncated=result.truncated,
            timed_out=result.timed_out,
            **({"cancelled": True} if cancelled else {}),
        )
        if cancelled or self._cancelled():
            raise Cancelled()
        return result

    def execute_mcp(self, call: McpCall) -> McpResult:
        """Make one MCP call (pullsmith makes it, not the sandbox) and emit `mcp.called`."""
        if self.call_mcp is None:
            result = McpResult(False, "This run has no MCP servers; use a command instead.")
        else:
            result = self.call_mcp(call)
        self.events.emit(
            "mcp.called",
            turn=self.turns,
            server=call.server,
            tool=call.tool,
            arguments=call.arguments,
            ok=result.ok,
            output=result.output,
            seconds=result.seconds,
        )
        if self._cancelled():
            raise Cancelled()
        return result

    def add(self, role: str, content: str) -> None:
        self._append({"role": role, "content": content})

    def answer(self, text: str) -> None:
        """Tell the model `text` about its last reply, as the protocol answers it.

        When the reply made tool calls, `text` is the `tool` message answering the first one and
        every other call is answered NOT_RUN (the API needs every call answered); otherwise
        `text` is a user message. Format errors take the same way.
        """
        reply, self._unanswered = self._unanswered, None
        if reply is None:
            self.add("user", text)
            return
        self._append(*self.wire.answer(reply, text))

    @property
    def cost_usd(self) -> float | None:
        """What the replies so far cost in US dollars; None without a known price."""
        return self.pricing.cost(self.usage) if self.pricing is not None else None

    def _temperature(self) -> float | None:
        # After a repeated reply, sample hotter: at low temperature a small model that
        # repeated itself once tends to repeat itself forever.
        return min(1.0, 0.5 + 0.2 * self.repeats) if self.repeats else None

    def _delta(self, text: str) -> None:
        """A piece of the reply being streamed: a transient event for the listeners (when
        streaming); a cancel, or the time limit passing, ends the reply here (the model closes
        its stream, and the server stops generating)."""
        self._guard(text)
        if self.stream:
            self.events.transient("model.delta", turn=self.turns + 1, text=text)

    def _guard(self, _text: str) -> None:
        """Given each piece of a reply (or of a compaction's summary) as it streams."""
        if self._cancelled():
            raise Cancelled()
        self._check_time()

    def _check_time(self) -> None:
        if time.monotonic() - self._started > self.limits.max_time_s:
            raise LimitReached(f"time limit reached ({self.limits.max_time_s:.0f} s)")

    def _said_before(self, reply: Reply) -> bool:
        message = assistant_message(reply)
        return any(_same_reply(m, message) for m in self.messages[self._own_from :])

    def _record(self, reply: Reply) -> None:
        """Count the reply, append it to the history and emit `model.reply`."""
        self.turns += 1
        self.usage.add(reply.usage)
        self.model_seconds += reply.duration_s
        self._last_prompt_tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens
        self._append(assistant_message(reply))
        self._counted_valid = True
        chars = self._counted_chars()
        if self._last_prompt_tokens and chars:
            self._tokens_per_char = self._last_prompt_tokens / chars
            self._measured = True
        self._unanswered = reply
        calls = {"tool_calls": reply.tool_calls} if reply.tool_calls else {}
        self.events.emit(
            "model.reply",
            turn=self.turns,
            text=reply.text,
            seconds=round(reply.duration_s, 3),
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            cached_tokens=reply.usage.cached_tokens,
            cache_write_tokens=reply.usage.cache_write_tokens,
            cost_usd=self.pricing.cost(reply.usage) if self.pricing is not None else None,
            **calls,
        )

    def _check_repeat(self, repeated: bool) -> None:
        self.repeats = self.repeats + 1 if repeated else 0
        stuck = self.limits.stuck_repeats
        if stuck is not None and self.repeats >= stuck:
            raise LimitReached("stuck: it sent the same reply again")
        if repeated:
            raise Repeated()

    def _append(self, *messages: Message) -> None:
        self.messages.extend(messages)
        if self.transcript is not None:
            self.transcript.extend(messages)
        self._save()

    def _observe(self, result: CommandResult, *notes: str | None) -> str:
        output = clip(result.output, self.limits.observation_chars)
        text = observation(result.exit_code, output, result.timed_out)
        return "\n".join([text, *(n for n in notes if n)])

    def _observe_mcp(self, result: McpResult, note: str) -> str:
        output = clip(result.output, self.limits.observation_chars)
        return "\n".join(t for t in (mcp_observation(result.ok, output), note) if t)

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _check_limits(self) -> None:
        if self._cancelled():
            raise Cancelled()
        limits = self.limits
        if self.turns >= limits.max_turns:
            raise LimitReached(f"turn limit reached ({limits.max_turns} turns)")
        self._check_time()
        if self.usage.total_tokens >= limits.max_tokens:
            raise LimitReached(f"token limit reached ({limits.max_tokens} tokens)")
        cost = self.cost_usd
        if limits.max_cost is not None and cost is not None:
            spent = limits.cost_before + cost
            if spent >= limits.max_cost:
                raise LimitReached(
                    f"cost limit reached (${spent:.4f} spent of the ${limits.max_cost:g} budget)"
                )
        if limits.context_tokens and not self._fits():
            if limits.compact and self._compacted_at_turn != self.turns:
                try:
                    self.compact("auto")
                except CompactionError:
                    pass
            if not self._fits():
                raise LimitReached(f"context window full ({limits.context_tokens} tokens)")

    def context_estimate(self) -> int:
        """The tokens the conversation takes now: the last counted prompt and its reply, plus
        ~3 characters a token for what came after (all of it estimated after a compaction, at
        the last prompt's tokens per character)."""
        total = sum(message_chars(m) for m in self.messages)
        if not self._counted_valid:
            return int(total * self._tokens_per_char)
        if not self._last_prompt_tokens:  # nothing counted yet, or a model that counts nothing
            return total // 3
        return self._last_prompt_tokens + (total - self._counted_chars()) // 3

    def _fits(self) -> bool:
        window = self.limits.context_tokens
        return not window or self.context_estimate() + self.limits.reply_tokens <= window

    def compact(self, trigger: str = "request") -> Compaction:
        """Replace the older turns by the model's summary (compaction.py); emits
        `context.compacted`. Raises CompactionError when there is nothing to drop."""
        before = self.context_estimate()
        current = self._own_from if self._own_from else None
        done = compact(
            self.model,
            self.messages,
            self.wire,
            current=current,
            keep_turns=self.limits.keep_turns,
            window=self.limits.context_tokens,
            tokens_per_char=self._tokens_per_char if self._measured else None,
            on_text=self._guard,
        )
        if self._own_from:
            own_end = done.at + done.dropped_messages
            self._own_from = (
                done.at
                if self._own_from < own_end
                else (self._own_from - done.dropped_messages + 2)
            )
        self.transcript = [*(self.transcript or self.messages), *done.request]
        self.messages = done.messages
        self._counted_valid = False
        self._save()
        self.usage.add(done.usage)
        self.model_seconds += done.seconds
        self.compactions += 1
        self._compacted_at_turn = self.turns
        self.events.emit(
            "context.compacted",
            turn=self.turns,
            trigger=trigger,
            dropped_turns=done.dropped_turns,
            dropped_messages=done.dropped_messages,
            kept_turns=done.kept_turns,
            tokens_before=before,
            tokens_after=self.context_estimate(),
            window=self.limits.context_tokens,
            summary=done.summary,
            fallback=done.fallback,
            seconds=done.seconds,
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens,
            cached_tokens=done.usage.cached_tokens,
        )
        return done

    def _counted_chars(self) -> int:
        # Everything up to and including the last assistant reply was counted by the model.
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index]["role"] == "assistant":
                return sum(message_chars(m) for m in self.messages[: index + 1])
        return 0

    def _outcome(self, finished: bool, reason: str, summary: str = "") -> Outcome:
        return Outcome(
            finished=finished,
            exit_reason=reason,
            summary=summary,
            turns=self.turns,
            usage=self.usage,
            model_seconds=round(self.model_seconds, 3),
            cost_usd=self.cost_usd,
            compactions=self.compactions,
        )

    def _save(self) -> None:
        if self.history_path is None:
            return
        _write_json(self.history_path, self.messages)
        if self.transcript is not None:
            _write_json(self.history_path.with_name(TRANSCRIPT_FILE), self.transcript)


def _write_json(path: Path, messages: list[Message]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(messages, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def _same_reply(earlier: Message, reply: Message) -> bool:
    """Whether an earlier message is the assistant saying `reply` again (call ids aside)."""

    def calls(message: Message) -> list[tuple[str, str]]:
        return [
            (c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or []
        ]

    return (
        earlier["role"] == "assistant"
        and (earlier.get("content") or "") == (reply.get("content") or "")
        and calls(earlier) == calls(reply)
    )
