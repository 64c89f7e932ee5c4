"""A recorded run played back as a model: `--model replay:SPEC`.

SPEC names a run: its id (a directory under `settings.runs_dir`), the path of its run
directory, or the path of a `history.json`. The replay answers every `complete()` with the
next assistant reply of that run's recorded conversation, whatever it is shown, so a run can be
reproduced (against the same repository) without paying for the model again.

A best-of-N run keeps no conversation of its own: its `result.json` lists the attempts, each
with a `run_dir` holding that attempt's `history.json`. The replay plays those recordings in
order; a conversation that holds no assistant message yet is a new attempt, and moves the
replay on to the next recording.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError
from pullsmith.models.base import COMPACTION_REQUEST, Message, Reply, Usage
from pullsmith.models.openai_compat import ModelError

REPLAY_PREFIX = "replay:"
HISTORY_FILE = "history.json"
# Written next to history.json once a run compacted its conversation: every message in the
# order the model saw it, the summary request and its reply included, so a replay answers
# each `complete()` of the run (history.json holds the conversation as compacted).
TRANSCRIPT_FILE = "transcript.json"

__all__ = [
    "HISTORY_FILE",
    "TRANSCRIPT_FILE",
    "REPLAY_PREFIX",
    "Recording",
    "ReplayModel",
    "is_replay",
    "load_recordings",
    "read_recording",
    "text_pieces",
]


def is_replay(model: str | None) -> bool:
    """Whether a model setting asks for a replay (`replay:SPEC`)."""
    return bool(model) and str(model).startswith(REPLAY_PREFIX)


@dataclass(frozen=True)
class Recording:
    """One recorded conversation: the assistant replies of one `history.json`, in order.

    `protocol` is the one the recorded run used ("text" or "tools") when its events.jsonl says
    so, or when its replies make native tool calls; "" when unknown.
    """

    path: Path
    replies: tuple[Reply, ...]
    protocol: str = ""
    # The replies to compaction requests (COMPACTION_REQUEST), apart from the others: a replay
    # answers such a request with the next of these, wherever its own run compacts.
    summaries: tuple[Reply, ...] = ()


def _text(content: Any) -> str:
    """The text of a message's content: a string, None, or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def _tool_calls(message: Message) -> list[dict[str, Any]]:
    """The wire-format `tool_calls` of an assistant message as {"id", "name", "arguments"}."""
    calls = []
    for index, call in enumerate(message.get("tool_calls") or []):
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        arguments = function.get("arguments")
        calls.append(
            {
                "id": call.get("id") or f"call_{index}",
                "name": str(function.get("name") or ""),
                "arguments": arguments
                if isinstance(arguments, str)
                else json.dumps(arguments if arguments is not None else {}),
            }
        )
    return calls


def _recorded_protocol(run_dir: Path) -> str:
    """The protocol of the run's first `task.started` event in its events.jsonl, or ""."""
    try:
        with open(run_dir / "events.jsonl", encoding="utf-8") as log:
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("type") == "task.started":
                    protocol = (event.get("data") or {}).get("protocol")
                    return protocol if protocol in ("text", "tools") else ""
    except OSError:
        return ""
    return ""


def read_recording(path: Path) -> Recording:
    """The assistant replies of one history file (UserError when it is not a conversation);
    the run's transcript.json instead when it compacted its conversation."""
    if path.name == HISTORY_FILE and (path.parent / TRANSCRIPT_FILE).is_file():
        path = path.parent / TRANSCRIPT_FILE
    try:
        messages = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{path} can not be read as a recorded conversation ({exc}); pass the history.json "
            "of a pullsmith run, its run directory or its run id."
        ) from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UserError(
            f"{path} is not a recorded conversation (a JSON list of messages); pass the "
            "history.json of a pullsmith run, its run directory or its run id."
        )
    replies: list[Reply] = []
    summaries: list[Reply] = []
    for index, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        reply = Reply(text=_text(m.get("content")), tool_calls=_tool_calls(m), finish_reason="stop")
        asked = messages[index - 1].get("content") if index else None
        (summaries if asked == COMPACTION_REQUEST else replies).append(reply)
    protocol = _recorded_protocol(path.parent)
    if not protocol and any(reply.tool_calls for reply in replies):
        protocol = "tools"
    return Recording(
        path=path, replies=tuple(replies), protocol=protocol, summaries=tuple(summaries)
    )


def _attempt_dirs(run_dir: Path) -> list[Path]:
    """The attempt directories of a best-of-N run, in the order the attempts ran.

    They are the `run_dir`s its result.json lists (looked up next to `run_dir` when the run was
    moved), then any later numbered sibling (`<run id>-<n>`): an attempt whose model failed
    is not listed, but its recording goes as far as the run did.
    """
    dirs: list[Path] = []
    numbers: list[int] = []
    try:
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        result = {}
    attempts = result.get("attempts") if isinstance(result, dict) else None
    for entry in attempts if isinstance(attempts, list) else []:
        if not isinstance(entry, dict):
            continue
        number = entry.get("attempt")
        recorded = Path(str(entry.get("run_dir") or ""))
        candidates = [recorded] if entry.get("run_dir") else []
        if entry.get("run_dir"):
            candidates.append(run_dir.parent / recorded.name)
        if isinstance(number, int):
            candidates.append(run_dir.parent / f"{run_dir.name}-{number}")
            numbers.append(number)
        found = next((c for c in candidates if c.is_dir()), None)
        if found is not None and found not in dirs:
            dirs.append(found)
    number = max(numbers, default=0) + 1
    while (sibling := run_dir.parent / f"{run_dir.name}-{number}").is_dir():
        if sibling not in dirs:
            dirs.append(sibling)
        number += 1
    return dirs


def _what_to_pass(runs_dir: Path | None) -> str:
    where = f" (a directory under {runs_dir})" if runs_dir is not None else ""
    return f"pass replay: with a run id{where}, the path of a run directory, or a history.json"


def load_recordings(spec: str, runs_dir: Path | None = None) -> list[Recording]:
    """The recorded conversations SPEC names, in the order they were recorded.

    SPEC is the path of a history.json, the path of a run directory, or a run id under
    `runs_dir`. A UserError says what was looked for when nothing can be replayed.
    """
    spec = spec.strip()
    if not spec:
        raise UserError(f"--model replay: names no run; {_what_to_pass(runs_dir)}.")
    given = Path(spec).expanduser()
    if given.is_file():
        return [read_recording(given)]
    looked = [str(given)]
    if given.is_dir():
        run_dir = given
    elif runs_dir is not None and "/" not in spec and (runs_dir / spec).is_dir():
        run_dir = runs_dir / spec
    else:
        if runs_dir is not None and "/" not in spec:
            looked.append(str(runs_dir / spec))
        raise UserError(
            f"there is no recorded run {spec!r} to replay (looked for {' and '.join(looked)}); "
            f"{_what_to_pass(runs_dir)}."
        )
    if (run_dir / HISTORY_FILE).is_file():
        return [read_recording(run_dir / HISTORY_FILE)]
    recordings = [
        read_recording(d / HISTORY_FILE)
        for d in _attempt_dirs(run_dir)
        if (d / HISTORY_FILE).is_file()
    ]
    if not recordings:
        raise UserError(
            f"the run {run_dir} holds no recorded conversation to replay (looked for "
            f"{run_dir / HISTORY_FILE} and for the attempts its result.json lists); "
            f"{_what_to_pass(runs_dir)}."
        )
    return recordings


def text_pieces(text: str, pieces: int = 4) -> list[str]:
    """`text` cut into up to `pieces` consecutive parts, as a streamed reply arrives; joined
    they are `text` again."""
    size = max(1, -(-len(text) // pieces))
    return [text[start : start + size] for start in range(0, len(text), size)]


class ReplayModel:
    """Answers with the recorded assistant replies of a run, in order, ignoring its input.

    Each Reply carries the recorded text and tool calls with finish_reason "stop". Its Usage
    is all zeros: a replay spends no tokens, and the recorded counts are the original run's, not
    this one's (estimates could also trip `max_tokens` where the recorded run did not).
    `duration_s` is 0.

    A conversation without an assistant message starts the next recording (the first call
    starts the first), so a best-of-N run replays attempt by attempt; recordings without any
    reply (an attempt that never reached the model) are skipped. When the replies run out,
    `complete` raises ModelError, as a model that stopped answering does.
    """

    def __init__(self, spec: str, runs_dir: Path | None = None) -> None:
        self.spec = spec
        self.name = REPLAY_PREFIX + spec
        self.recordings = load_recordings(spec, runs_dir)
        if not any(recording.replies for recording in self.recordings):
            raise UserError(
                f"the recorded run {spec!r} holds no assistant reply to replay (read "
                f"{', '.join(str(r.path) for r in self.recordings)}); replay a run whose model "
                "answered at least once."
            )
        self.calls = 0
        self._recording = -1  # index into self.recordings of the one playing
        self._position = 0  # the next reply of that recording
        self._summaries: dict[int, int] = {}  # summaries played, per recording
        self._lock = threading.Lock()

    @property
    def attempt(self) -> int:
        """Which recording plays (1-based; 0 before the first call)."""
        return self._recording + 1

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
        """The next recorded reply; `temperature`, `stop` and `seed` change nothing. With
        `on_text` its text is also given to it, in a few pieces, as a stream would."""
        with self._lock:
            if self._recording < 0 or not any(m.get("role") == "assistant" for m in messages):
                self._next_recording()
            recording = self.recordings[self._recording]
            if messages and messages[-1].get("content") == COMPACTION_REQUEST:
                return self._summary(recording)
            if self._position >= len(recording.replies):
                raise ModelError(
                    f"the replay of {self.spec} has no more recorded replies{self._of_attempt()} "
                    f"(it had {len(recording.replies)}); the run went further than the "
                    "recording did."
                )
            self._check_protocol(recording, tools)
            reply = recording.replies[self._position]
            self._position += 1
            self.calls += 1
        if on_text is not None:
            for piece in text_pieces(reply.text):
                on_text(piece)
        return Reply(
            text=reply.text,
            usage=Usage(),
            tool_calls=[dict(call) for call in reply.tool_calls],
            duration_s=0.0,
            finish_reason="stop",
        )

    def _summary(self, recording: Recording) -> Reply:
        """The next recorded summary; an empty reply once they run out (the agent then writes
        its own from the dropped commands)."""
        used = self._summaries.get(self._recording, 0)
        self._summaries[self._recording] = used + 1
        self.calls += 1
        text = recording.summaries[used].text if used < len(recording.summaries) else ""
        return Reply(text=text, usage=Usage(), finish_reason="stop")

    def _of_attempt(self) -> str:
        return f" for attempt {self.attempt}" if len(self.recordings) > 1 else ""

    def _next_recording(self) -> None:
        index = self._recording + 1
        while index < len(self.recordings) and not self.recordings[index].replies:
            index += 1
        if index >= len(self.recordings):
            count = len(self.recordings)
            raise ModelError(
                f"the replay of {self.spec} has no recording left for a new conversation (it "
                f"holds {count} attempt{'s' if count != 1 else ''}); the run made more "
                "attempts than the recording did."
            )
        self._recording, self._position = index, 0

    def _check_protocol(self, recording: Recording, tools: list[dict[str, Any]] | None) -> None:
        asked = "tools" if tools else "text"
        if recording.protocol and recording.protocol != asked:
            raise ModelError(
                f"the replay of {self.spec} was recorded with the {recording.protocol} protocol "
                f"but this run uses the {asked} protocol; rerun with --protocol "
                f"{recording.protocol}."
            )

    def close(self) -> None:
        """Nothing to release."""
