"""What a session keeps on disk: `<data dir>/sessions/<id>/session.json`, saved after every turn.

A session's runs are ordinary runs under `runs/` (their events and the model's history); the
record lists them in order with the checkpoint commit each left on the session's branch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pullsmith.errors import UserError


@dataclass
class Turn:
    """One request of the session: its run, and the branch before and after it."""

    run_id: str
    request: str
    status: str
    start: str
    end: str
    summary: str = ""
    tokens: int = 0
    at: float = field(default_factory=time.time)
    # Recorded in the session's pull request (/pr) already.
    recorded: bool = False


@dataclass
class SessionRecord:
    id: str
    repo: str
    base_ref: str
    base_commit: str
    branch: str
    worktree: str
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    turns: list[Turn] = field(default_factory=list)
    # Said to the model with the next request (an interrupted turn, ...).
    note: str = ""
    pr_number: int | None = None
    # The commit whose change /apply last brought into the user's tree.
    applied: str | None = None
    model: str = ""
    # The conversation as /compact left it, which the next request continues (None: the last
    # turn's); each compaction's figures, for /status.
    history: str | None = None
    compactions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tip(self) -> str:
        """The last checkpoint: where the session's branch is."""
        return self.turns[-1].end if self.turns else self.base_commit

    @property
    def first_request(self) -> str:
        return self.turns[0].request if self.turns else ""

    @property
    def state(self) -> str:
        if not self.turns:
            return "new"
        if self.applied == self.tip:
            return "applied"
        if self.pr_number is not None:
            return f"pr #{self.pr_number}"
        if self.turns[-1].status == "cancelled":
            return "interrupted"
        return self.turns[-1].status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionRecord:
        turns = [Turn(**t) for t in data.get("turns", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "turns"}
        return cls(turns=turns, **known)


def sessions_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "sessions"


def save(data_dir: Path, record: SessionRecord) -> Path:
    """Write the record atomically (a reader never sees half of it)."""
    record.updated = time.time()
    path = sessions_dir(data_dir) / record.id / "session.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def load(data_dir: Path, session_id: str) -> SessionRecord:
    path = sessions_dir(data_dir) / session_id / "session.json"
    if "/" in session_id or not path.is_file():
        raise UserError(
            f"there is no session {session_id!r}; `pullsmith resume` lists this repository's "
            "sessions."
        )
    try:
        return SessionRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"the session file {path} can not be read ({exc}).") from None


def sessions_of(data_dir: Path, repo: Path) -> list[SessionRecord]:
    """The sessions of `repo`, the most recently used first (unreadable files skipped)."""
    found = []
    root = sessions_dir(data_dir)
    for path in root.glob("*/session.json") if root.is_dir() else []:
        try:
            record = SessionRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if Path(record.repo) == Path(repo):
            found.append(record)
    return sorted(found, key=lambda r: r.updated, reverse=True)
