"""The work of a task, wherever it runs: its attempts, with every failure turned into a result.

`execute` needs only a Task and Settings (plain data) and an EventLog to write to, so a thread
of this process, a worker process or another machine can run it (see executors.py).
"""

from __future__ import annotations

import threading
import traceback

from pullsmith.agent.loop import Approve
from pullsmith.attempt import Attempt, read_result, run_dir_for, write_result
from pullsmith.best_of_n import BestOfN
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import ErrorEvent, EventLog
from pullsmith.models import Model
from pullsmith.models.openai_compat import ModelError
from pullsmith.task import AttemptResult, Task


def check_task(task: Task) -> None:
    """Refuse a task that can not run, before anything is done for it."""
    if task.attempts < 1:
        raise UserError(f"--attempts must be at least 1 (got {task.attempts}).")
    if task.attempts > 1 and task.follow_up is not None:
        raise UserError(
            "a follow-up continues one branch, so it runs as one attempt; drop --attempts."
        )
    if not task.instruction.strip():
        raise UserError('the task is empty; say what you want done, e.g. pullsmith exec "fix X".')
    if "\x00" in task.instruction:
        raise UserError("the task holds a NUL character, which git can not keep; leave it out.")


def execute(
    task: Task,
    settings: Settings,
    events: EventLog,
    model: Model | None = None,
    cancel: threading.Event | None = None,
    approve: Approve | None = None,
) -> AttemptResult:
    """Run the attempts of `task`; whatever goes wrong comes back as the result's error.

    `approve` is a terminal's approval hook for the agent's commands (one attempt only)."""
    cancel = cancel or threading.Event()
    run_dir = run_dir_for(settings, task.task_id)
    work: Attempt | BestOfN
    if task.attempts == 1:
        work = Attempt(
            task,
            settings,
            events,
            model,
            cancel,
            approve=approve,
            time_left_s=settings.task_time_s or None,
        )
    else:
        work = BestOfN(task, settings, events, model, cancel)
    try:
        return work.run()
    except UserError as exc:
        result = getattr(work, "result", None) or read_result(run_dir)
        if result is None:
            result = AttemptResult.failed_to_start(task, exc.message, str(run_dir))
            events.emit(ErrorEvent(message=exc.message))
        result.status, result.error = "error", exc.message
        result.error_kind = "model" if isinstance(exc, ModelError) else "run"
    except Exception as exc:  # a bug of ours: the run's record says so, the process goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
        message = (
            f"pullsmith failed inside the run ({type(exc).__name__}: {exc}); the traceback is in "
            f"{run_dir / 'traceback.txt'} — please report it."
        )
        result = getattr(work, "result", None) or AttemptResult.failed_to_start(
            task, message, str(run_dir)
        )
        result.status, result.error, result.error_kind = "error", message, "internal"
        events.emit(ErrorEvent(message=message))
    write_result(run_dir, result)
    return result
