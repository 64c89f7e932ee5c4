"""Events: one stream of what happened, written as JSONL and fanned out to listeners."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Listener = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    task_id: str
    ts: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls(**json.loads(line))


class EventLog:
    """Append-only event writer; every event is flushed before listeners see it."""

    def __init__(self, task_id: str, path: Path | None = None) -> None:
        self.task_id = task_id
        self.path = path
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._next_id = 1
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._next_id = len(read_events(path)) + 1
            self._file = path.open("a", encoding="utf-8")

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, type: str, **data: Any) -> Event:
        with self._lock:
            event = Event(
                id=self._next_id, type=type, task_id=self.task_id, ts=time.time(), data=data
            )
            self._next_id += 1
            if self._file is not None:
                self._file.write(event.to_json() + "\n")
                self._file.flush()
        for listener in self._listeners:
            listener(event)
        return event

    def close(self) -> None:
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
        except (json.JSONDecodeError, TypeError):
            continue
    return events
