"""The service's tables in the store: its tasks (the durable queue) and their events.

They are defined on `pullsmith.store.Base`, and the store's migrations create them with the
others (revision 0002): a change here needs a new revision in pullsmith/migrations. A service task's id is the engine's task id: its run directory is `runs/<id>/`, its
branch `pullsmith/<id>`, and its events are the lines of that run's events.jsonl.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pullsmith.store import Base, utcnow

# Every state a service task can be in. The tests decide passed/failed; the rest of the
# result statuses say why they could not (see pullsmith.task.STATUSES).
QUEUED = "queued"
RUNNING = "running"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
ERROR = "error"
RESULT_STATES = ("passed", "failed", "passed-unfinished", "untested", ERROR, CANCELLED)
STATES = (QUEUED, RUNNING, *RESULT_STATES, INTERRUPTED)
FINISHED_STATES = frozenset((*RESULT_STATES, INTERRUPTED))


class ServiceTask(Base):
    """A task the service was asked to run, from the moment it was queued."""

    __tablename__ = "service_tasks"
    __table_args__ = (Index("ix_service_tasks_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    repo: Mapped[str] = mapped_column(Text, index=True)
    base: Mapped[str | None] = mapped_column(Text, nullable=True)
    instruction: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    until_pass: Mapped[bool] = mapped_column(Boolean, default=False)
    # The model settings it runs with (model, base_url, protocol, edit_forms), fixed when it was
    # queued so that a restart with other flags runs it as it was asked. Never an API key.
    model_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(32), default=QUEUED)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # How many times it was handed to the engine, and how many of those a stop of the service
    # interrupted (a task interrupted once is queued again; twice, it stays interrupted).
    tries: Mapped[int] = mapped_column(Integer, default=0)
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    # The AttemptResult's dict once the engine returned it.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A follow-up: the task whose pull request this one continues (same branch, more commits).
    follows: Mapped[str | None] = mapped_column(String(80), nullable=True)


class ServiceEvent(Base):
    """One event of a service task, stored before any client is sent it."""

    __tablename__ = "service_events"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("service_tasks.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    v: Mapped[int] = mapped_column(Integer, default=1)


class ServiceEnvironment(Base):
    """A repository's environment as the service keeps it (see pullsmith.service.environments).

    `secrets` holds the values the setup command gets, in the store as they were sent (the
    database is the service's own, in its data directory); the API only ever shows the names.
    """

    __tablename__ = "service_environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The repository as a task names it once checked (its top level, or its URL).
    repo: Mapped[str] = mapped_column(Text, unique=True)
    setup: Mapped[str] = mapped_column(Text)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    secrets: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    timeout_s: Mapped[float] = mapped_column(Float, default=600.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
