"""Events: one typed, versioned stream of what happened in a run.

Every event type is a pydantic model below (its fields are the event's `data`); `EventLog`
writes each event to the run's JSONL file first, then hands it on. Listeners never run on the
thread that emits: each has its own queue and thread (`EventStream`), so a slow listener (a
terminal, an SSE client, a database) does not slow the agent, and one that raises is reported
and dropped without touching the run. docs/events.md describes each type;
`pullsmith events schema` prints their JSON Schema.

A transient event (`EventLog.transient`: `model.delta`, a piece of a reply as it streams) is
never written: it goes the same way to the listeners that asked for such events
(`subscribe(..., transient=True)`) and to no other, with id 0 and no place in the numbering.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

# Bumped when a field is removed or changes meaning; added fields keep the version.
SCHEMA_VERSION = 1


class Payload(BaseModel):
    """The data of one event type. `attempt` is set on the events of a best-of-N attempt."""

    model_config = ConfigDict(extra="forbid")
    type: ClassVar[str] = ""
    attempt: int | None = None


class TaskStarted(Payload):
    type: ClassVar[str] = "task.started"
    instruction: str
    repo: str
    base: str
    model: str
    protocol: str
    edit_forms: list[str]
    sandbox: str
    price: dict[str, Any] | None = None
    max_cost: float | None = None


class WorkspaceCreated(Payload):
    type: ClassVar[str] = "workspace.created"
    path: str
    branch: str
    base_commit: str
    user_tree_dirty: bool = False


class SetupStarted(Payload):
    type: ClassVar[str] = "setup.started"
    command: str
    network: bool
    secrets: list[str]
    timeout_s: float


class SetupRan(Payload):
    type: ClassVar[str] = "setup.ran"
    command: str
    exit_code: int
    seconds: float
    output: str
    timed_out: bool = False
    left_out: list[str] = []


class StartedTests(Payload):
    type: ClassVar[str] = "tests.started"
    phase: str
    command: str


class RanTests(Payload):
    type: ClassVar[str] = "tests.ran"
    phase: str
    command: str
    exit_code: int
    seconds: float
    output: str
    timed_out: bool = False
    cpu_seconds: float | None = None
    same_as: int | None = None
    from_attempt: int | None = None


class ModelReply(Payload):
    type: ClassVar[str] = "model.reply"
    turn: int
    text: str
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    cache_write_tokens: int = 0
    cost_usd: float | None = None


class CommandStarted(Payload):
    type: ClassVar[str] = "command.started"
    turn: int
    command: str


class CommandFinished(Payload):
    type: ClassVar[str] = "command.finished"
    turn: int
    command: str
    exit_code: int
    seconds: float
    output: str
    truncated: bool = False
    timed_out: bool = False
    cancelled: bool = False


class McpCalled(Payload):
    """The agent called a tool of an MCP server (see pullsmith.mcp) and got this back."""

    type: ClassVar[str] = "mcp.called"
    turn: int
    server: str
    tool: str
    arguments: dict[str, Any]
    ok: bool
    output: str
    seconds: float


class FormatErrorEvent(Payload):
    type: ClassVar[str] = "format.error"
    turn: int
    message: str


class FinishRejected(Payload):
    type: ClassVar[str] = "finish.rejected"
    turn: int
    reason: str


class AgentFinished(Payload):
    type: ClassVar[str] = "agent.finished"
    turn: int
    summary: str


class LimitReachedEvent(Payload):
    type: ClassVar[str] = "limit.reached"
    turn: int
    reason: str


class ContextCompacted(Payload):
    """The older turns were replaced by a summary to fit the model's context window."""

    type: ClassVar[str] = "context.compacted"
    turn: int
    trigger: str
    dropped_turns: int
    dropped_messages: int
    kept_turns: int
    tokens_before: int
    tokens_after: int
    window: int | None = None
    summary: str
    fallback: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class EditMade(Payload):
    type: ClassVar[str] = "edit"
    form: str
    ok: bool
    detail: str = ""


class DiffShrunk(Payload):
    """Before the commit, the hunks whose revert kept the visible tests passing were dropped
    (pullsmith.shrink); or nothing was tried, and `reason` says why."""

    type: ClassVar[str] = "diff.shrunk"
    status: str
    reason: str
    hunks: int = 0
    dropped: list[dict[str, Any]] = []
    kept: int = 0
    untried: int = 0
    test_runs: int = 0
    seconds: float = 0.0
    test_events: list[int] = []


class RepairTried(Payload):
    """Before the agent's turns, the model was asked for one function the failing tests most
    likely reach, fixed (agent/repair.py): what came of it. `outcome` "passed" keeps the
    change (`test_event` is the passing run) and the agent does not run; any other outcome
    was put back."""

    type: ClassVar[str] = "repair.tried"
    path: str
    function: str
    rank: int
    outcome: str
    # The how-manieth ask of this function (1: at the attempt's temperature; later ones at
    # repair_temperature).
    sample: int = 1
    # "function": asked for it whole; "lines": for a SEARCH/REPLACE block of the lines to
    # change (a function over `repair_lines_over` lines).
    form: str = "function"
    detail: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    test_event: int | None = None
    # The reply's text, clipped (REPAIR_REPLY_CHARS), so an answer that was not applied can be
    # read afterwards.
    reply: str = ""


class SummaryWritten(Payload):
    """The summary of the commit and the PR: written by the model once more with the final
    diff and the test results in front of it (`source` "diff"), or its finish summary
    (`source` "finish") when that was off, failed (`error`) or was not asked (`reason`: the
    tests fail after the change, so it is not one to merge)."""

    type: ClassVar[str] = "summary.written"
    source: str
    summary: str
    finish_summary: str = ""
    error: str | None = None
    reason: str = ""
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None


class CommitCreated(Payload):
    type: ClassVar[str] = "commit.created"
    commit: str
    branch: str


class AttemptFinished(Payload):
    type: ClassVar[str] = "attempt.finished"
    status: str
    exit_reason: str
    summary: str = ""
    branch: str = ""
    commit: str | None = None
    diff_stat: str = ""
    diff: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    worktree: str = ""
    error: str | None = None
    cache_write_tokens: int = 0
    cost_usd: float | None = None


class AttemptsStarted(Payload):
    type: ClassVar[str] = "attempts.started"
    attempts: int
    until_pass: bool


class AttemptScored(Payload):
    type: ClassVar[str] = "attempt.scored"
    task_id: str
    branch: str
    commit: str | None = None
    status: str
    exit_reason: str
    tests_pass: bool
    failing_tests: int
    changed_lines: int
    turns: int
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    model_seconds: float
    wall_seconds: float
    run_dir: str
    error: str | None = None
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    # The attempt finished before this one whose final diff this one's is identical to.
    repeats_attempt: int | None = None


class AttemptsSelected(Payload):
    type: ClassVar[str] = "attempts.selected"
    of: int
    branch: str
    status: str
    reason: str


class ErrorEvent(Payload):
    type: ClassVar[str] = "error"
    message: str


class WarningEvent(Payload):
    """Something went wrong that the run survives (its PR could not be recorded, ...)."""

    type: ClassVar[str] = "warning"
    message: str


class PullRequestChanged(Payload):
    """Base of pr.opened and pr.updated."""

    number: int
    title: str
    head: str
    base: str
    checks: str
    state: str


class PullRequestOpened(PullRequestChanged):
    type: ClassVar[str] = "pr.opened"


class PullRequestUpdated(PullRequestChanged):
    type: ClassVar[str] = "pr.updated"


class PullRequestPublished(Payload):
    type: ClassVar[str] = "pr.published"
    number: int
    url: str
    created: bool = True
    draft: bool = False
    checks: str = ""


class TaskFinished(Payload):
    """The last event of a task: everything its summary shows."""

    type: ClassVar[str] = "task.finished"
    status: str
    exit_reason: str
    summary: str = ""
    error: str | None = None
    branch: str = ""
    commit: str | None = None
    diff_stat: str = ""
    worktree: str = ""
    run_dir: str = ""
    test_command: str | None = None
    tests_command: str | None = None
    tests_exit_code: int | None = None
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    wall_seconds: float = 0.0
    chosen_attempt: int = 1
    attempts: list[dict[str, Any]] = []
    pull_request: int | None = None
    cache_write_tokens: int = 0
    cost_usd: float | None = None


class ListenerFailed(Payload):
    type: ClassVar[str] = "listener.failed"
    listener: str
    error: str


class ModelDelta(Payload):
    """A piece of the reply of turn `turn` as the model streams it (transient: never written;
    the whole reply is the turn's `model.reply`)."""

    type: ClassVar[str] = "model.delta"
    turn: int
    text: str


EVENT_TYPES: dict[str, type[Payload]] = {
    cls.type: cls
    for cls in (
        TaskStarted,
        WorkspaceCreated,
        SetupStarted,
        SetupRan,
        StartedTests,
        RanTests,
        ModelReply,
        CommandStarted,
        CommandFinished,
        McpCalled,
        FormatErrorEvent,
        FinishRejected,
        AgentFinished,
        LimitReachedEvent,
        ContextCompacted,
        EditMade,
        RepairTried,
        DiffShrunk,
        SummaryWritten,
        CommitCreated,
        AttemptFinished,
        AttemptsStarted,
        AttemptScored,
        AttemptsSelected,
        ErrorEvent,
        WarningEvent,
        PullRequestOpened,
        PullRequestUpdated,
        PullRequestPublished,
        TaskFinished,
        ListenerFailed,
    )
}


# The transient event types: passed to the listeners that ask for them, never in a log file.
TRANSIENT_TYPES: dict[str, type[Payload]] = {cls.type: cls for cls in (ModelDelta,)}


def payload_for(type: str, data: dict[str, Any]) -> Payload:
    """The typed payload of an event; ValueError for an unknown type or a wrong field."""
    cls = EVENT_TYPES.get(type) or TRANSIENT_TYPES.get(type)
    if cls is None:
        raise ValueError(f"unknown event type {type!r}")
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ValueError(f"bad {type} event: {exc}") from None


@dataclass(frozen=True)
class Event:
    """One event as written to the log: an envelope around a typed payload's data."""

    id: int
    type: str
    task_id: str
    ts: float
    data: dict[str, Any] = field(default_factory=dict)
    v: int = SCHEMA_VERSION

    @property
    def transient(self) -> bool:
        """Whether this is a transient event (never written; see EventLog.transient)."""
        return self.id == TRANSIENT_ID

    @property
    def payload(self) -> Payload:
        """The typed data; fields a newer pullsmith added (same schema version) are skipped."""
        cls = EVENT_TYPES.get(self.type) or TRANSIENT_TYPES.get(self.type)
        known = cls.model_fields if cls is not None else {}
        return payload_for(self.type, {k: v for k, v in self.data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "type": self.type,
            "task_id": self.task_id,
            "ts": self.ts,
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            id=int(data["id"]),
            type=str(data["type"]),
            task_id=str(data["task_id"]),
            ts=float(data["ts"]),
            data=dict(data.get("data") or {}),
            v=int(data.get("v", SCHEMA_VERSION)),
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls.from_dict(json.loads(line))


Listener = Callable[[Event], None]
_STOP = object()
# The id of every transient event: written events are numbered from 1.
TRANSIENT_ID = 0


class EventStream:
    """Fans events out to listeners, each on a thread of its own with its own queue.

    `publish` only enqueues, so it never waits for a listener. A listener that raises is
    dropped and `on_failure(name, message)` is told (the EventLog turns that into a
    `listener.failed` event); the others go on.
    """

    def __init__(self, on_failure: Callable[[str, str], None] | None = None) -> None:
        self._queues: list[queue.SimpleQueue[Any]] = []
        # The queues of the listeners that also get transient events.
        self._transient: set[queue.SimpleQueue[Any]] = set()
        self._threads: list[threading.Thread] = []
        self._on_failure = on_failure
        self._lock = threading.Lock()

    def subscribe(
        self, listener: Listener, name: str | None = None, transient: bool = False
    ) -> None:
        """Have `listener` see the events published from now on (the transient ones too when
        `transient`)."""
        label = name or getattr(listener, "__qualname__", None) or type(listener).__name__
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        thread = threading.Thread(
            target=self._pump, args=(listener, label, inbox), name=f"events-{label}", daemon=True
        )
        with self._lock:
            self._queues.append(inbox)
            if transient:
                self._transient.add(inbox)
            self._threads.append(thread)
        thread.start()

    def publish(self, event: Event) -> None:
        with self._lock:
            inboxes = list(self._queues)
            if event.transient:
                inboxes = [inbox for inbox in inboxes if inbox in self._transient]
        for inbox in inboxes:
            inbox.put(event)

    def _pump(self, listener: Listener, label: str, inbox: queue.SimpleQueue[Any]) -> None:
        while True:
            item = inbox.get()
            if item is _STOP:
                return
            try:
                listener(item)
            except Exception as exc:
                with self._lock:
                    if inbox in self._queues:
                        self._queues.remove(inbox)
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                if self._on_failure is not None:
                    self._on_failure(label, detail)
                return

    def close(self, timeout: float | None = None) -> None:
        """Let every listener finish what it was sent (up to `timeout` seconds in all)."""
        with self._lock:
            inboxes, threads = list(self._queues), list(self._threads)
            self._queues.clear()
        for inbox in inboxes:
            inbox.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)


class EventLog:
    """The append-only log of one run: each event is written and flushed to `path` first,
    then passed to `forward` (synchronously: another log, or a relay to another process) and
    to the listeners subscribed here (asynchronously, see EventStream).

    Opening an existing log continues its numbering, so a follow-up or the engine's closing
    events extend the same file.
    """

    def __init__(
        self,
        task_id: str,
        path: Path | None = None,
        forward: Callable[[Event], None] | None = None,
        attempt: int | None = None,
    ) -> None:
        self.task_id = task_id
        self.path = path
        self.attempt = attempt
        self._forward = forward
        self._stream: EventStream | None = None
        self.failures: list[ListenerFailed] = []
        # Held while an event is written and handed on, so listeners see the file's order;
        # re-entrant because a failing forward is reported from inside.
        self._lock = threading.RLock()
        self._next_id = 1
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._next_id = len(read_events(path)) + 1
            self._file = path.open("a", encoding="utf-8")

    def subscribe(
        self, listener: Listener, name: str | None = None, transient: bool = False
    ) -> None:
        """Have `listener` see every later event, on a thread of its own; the transient ones
        (see `transient`) too only when it asks for them."""
        if self._stream is None:
            self._stream = EventStream(on_failure=self._listener_failed)
        self._stream.subscribe(listener, name, transient)

    def emit(self, kind: str | Payload, /, **data: Any) -> Event:
        """Record an event: a Payload, or a type name and its fields (checked the same way)."""
        payload = kind if isinstance(kind, Payload) else payload_for(kind, data)
        if self.attempt is not None and payload.attempt is None:
            payload = payload.model_copy(update={"attempt": self.attempt})
        body = payload.model_dump(mode="json", exclude_none=False)
        if body.get("attempt") is None:
            body.pop("attempt", None)
        with self._lock:
            event = Event(
                id=self._next_id, type=payload.type, task_id=self.task_id, ts=time.time(), data=body
            )
            self._next_id += 1
            if self._file is not None:
                self._file.write(event.to_json() + "\n")
                self._file.flush()
            self._hand_on(event)
        return event

    def transient(self, kind: str | Payload, /, **data: Any) -> Event:
        """Pass on an event that is never written (a TRANSIENT_TYPES one, checked as `emit`
        checks): to `forward`, and to the listeners that asked for transient events. It has id
        0 and takes no number, so the file and its numbering are as if it never happened."""
        payload = kind if isinstance(kind, Payload) else payload_for(kind, data)
        if payload.type not in TRANSIENT_TYPES:
            raise ValueError(f"{payload.type!r} is not a transient event type")
        if self.attempt is not None and payload.attempt is None:
            payload = payload.model_copy(update={"attempt": self.attempt})
        body = payload.model_dump(mode="json", exclude_none=True)
        event = Event(
            id=TRANSIENT_ID, type=payload.type, task_id=self.task_id, ts=time.time(), data=body
        )
        with self._lock:
            self._hand_on(event)
        return event

    def relay(self, event: Event) -> None:
        """Pass on an event that another process already wrote to this log's file (or a
        transient one, which was never written)."""
        with self._lock:
            if not event.transient:
                self._next_id = max(self._next_id, event.id + 1)
            self._hand_on(event)

    def _hand_on(self, event: Event) -> None:
        if self._forward is not None:
            try:
                self._forward(event)
            except Exception as exc:  # a broken relay must not end the run
                self._forward = None
                self._listener_failed("forward", f"{type(exc).__name__}: {exc}")
        if self._stream is not None:
            self._stream.publish(event)

    def _listener_failed(self, name: str, message: str) -> None:
        failure = ListenerFailed(listener=name, error=message)
        if self.path is None:
            # A log without a file only fans out events written elsewhere; numbering one of
            # its own would clash with theirs, so the owner writes it (see `failures`).
            self.failures.append(failure)
        else:
            self.emit(failure)

    def reopen(self) -> None:
        """Continue writing after another process appended to the file."""
        if self.path is None:
            return
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._next_id = max(self._next_id, len(read_events(self.path)) + 1)
            self._file = self.path.open("a", encoding="utf-8")

    def close(self, timeout: float | None = None) -> None:
        """Close the file after the listeners had the chance to see every event."""
        if self._stream is not None:
            self._stream.close(timeout)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: Path) -> list[Event]:
    """Read a run log back; a torn last line (crash mid-write) is skipped."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(line))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError):
            continue
    return events


def events_schema() -> dict[str, Any]:
    """The JSON Schema of the log's lines: the envelope, and each type's data."""
    defs: dict[str, Any] = {}
    variants = []
    for name, cls in EVENT_TYPES.items():
        schema = cls.model_json_schema()
        defs.update(schema.pop("$defs", {}))
        schema["title"] = name
        schema["description"] = (cls.__doc__ or "").strip() or None
        if schema["description"] is None:
            schema.pop("description")
        variants.append(
            {
                "type": "object",
                "properties": {"type": {"const": name}, "data": schema},
                "required": ["type", "data"],
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pullsmith event",
        "description": f"One line of a run's events.jsonl (schema version {SCHEMA_VERSION}).",
        "type": "object",
        "properties": {
            "v": {"type": "integer", "const": SCHEMA_VERSION},
            "id": {"type": "integer", "minimum": 1},
            "type": {"enum": list(EVENT_TYPES)},
            "task_id": {"type": "string"},
            "ts": {"type": "number", "description": "Unix time in seconds."},
            "data": {"type": "object"},
        },
        "required": ["v", "id", "type", "task_id", "ts", "data"],
        "oneOf": variants,
        **({"$defs": defs} if defs else {}),
    }
