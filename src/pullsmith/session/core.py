"""The session: requests through the Engine on one branch of its own, checkpoints, and the
slash commands' work (diff, undo, apply, pr, tests), without any terminal.

Each request is a Task that continues the session's branch as a follow-up does
(`pr/followup.py`): the same worktree, from the last checkpoint, keeping its worktree. The
model's conversation carries over: the task's `FollowUp.history` names the history.json of the
last turn's run, which the agent goes on with (the new request is its next user message), so
the prompt's prefix stays as the model saw it. Every turn ends as a checkpoint on the branch:
the attempt's commit, or (for a turn that was interrupted) a commit of what it left.
/undo moves the branch back to the previous checkpoint; the conversation is then that turn's.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

from pullsmith.agent.compaction import Compaction, CompactionError, compact
from pullsmith.agent.context import collect_agents_md, detect_test_command
from pullsmith.agent.loop import Approve
from pullsmith.agent.protocol import protocol_for
from pullsmith.attempt import TRAILER, read_result, run_dir_for
from pullsmith.config import Settings
from pullsmith.engine import Engine, RunHandle
from pullsmith.errors import UserError
from pullsmith.events import Listener
from pullsmith.executors import ThreadExecutor
from pullsmith.models import Model, open_model
from pullsmith.models.profiles import resolve_protocol
from pullsmith.pr import local
from pullsmith.sandbox import agent_policy, make_sandbox
from pullsmith.sandbox.base import CommandResult
from pullsmith.session.record import SessionRecord, Turn, load, save, sessions_dir
from pullsmith.store import Store
from pullsmith.task import AttemptResult, FollowUp, Task, new_task_id
from pullsmith.workspace import GitError, Workspace, git, resolve_repo, worktree_lock

INTERRUPTED_NOTE = (
    "Your previous request was interrupted by the user (Ctrl-C) before it finished; the command "
    "that was running, if any, was stopped. What it had changed is kept."
)


class Session:
    """One session: its record, its Engine (one thread, the approval hook) and settings."""

    def __init__(
        self, settings: Settings, record: SessionRecord, approve: Approve | None = None
    ) -> None:
        # A turn is a step of a conversation the user watches, not a pull request: its diff is
        # what the user asked for (no shrink reverting it behind their back, no direct repair
        # rewriting a function before the model reads the request) and its summary needs no
        # second model call.
        self.settings = dataclasses.replace(
            settings, shrink_diff=False, summary_from_diff=False, repair=False
        )
        self.record = record
        self.approve = approve
        self._engine: Engine | None = None
        self._executor: ThreadExecutor | None = None
        self._model: Model | None = None

    # --- starting and loading ---------------------------------------------------------

    @classmethod
    def start(
        cls,
        settings: Settings,
        repo: str | Path,
        base: str | None = None,
        approve: Approve | None = None,
    ) -> Session:
        """A new session on a new branch `pullsmith/session-…` from `base` (default HEAD)."""
        root = resolve_repo(Path(repo), settings.data_dir / "clones")
        session_id = f"session-{new_task_id()}"
        workspace = Workspace.create(root, session_id, settings.worktrees_dir, base=base)
        record = SessionRecord(
            id=session_id,
            repo=str(root),
            base_ref=workspace.base_ref,
            base_commit=workspace.base_commit,
            branch=workspace.branch,
            worktree=str(workspace.path),
            model=settings.model_name,
        )
        save(settings.data_dir, record)
        return cls(settings, record, approve)

    @classmethod
    def load(cls, settings: Settings, session_id: str, approve: Approve | None = None) -> Session:
        record = load(settings.data_dir, session_id)
        session = cls(settings, record, approve)
        session.ensure_worktree()
        return session

    def save(self) -> None:
        save(self.settings.data_dir, self.record)

    @property
    def repo(self) -> Path:
        return Path(self.record.repo)

    @property
    def worktree(self) -> Path:
        return Path(self.record.worktree)

    def ensure_worktree(self) -> None:
        """Check the session's worktree out again if it is gone (an attempt that failed before
        its first turn removes its checkout), at the session's branch."""
        if not self.repo.is_dir():
            raise UserError(f"the session's repository {self.repo} no longer exists.")
        branch_tip = local.branch_tip(self.repo, self.record.branch)
        if branch_tip is None:
            raise UserError(
                f"the session's branch {self.record.branch} no longer exists in {self.repo}; "
                "start a new session."
            )
        if (self.worktree / ".git").exists():
            return
        self.worktree.parent.mkdir(parents=True, exist_ok=True)
        with worktree_lock(self.repo):
            git("worktree", "prune", cwd=self.repo)
            try:
                git(
                    "-c",
                    "core.hooksPath=/dev/null",
                    "worktree",
                    "add",
                    "--quiet",
                    str(self.worktree),
                    self.record.branch,
                    cwd=self.repo,
                )
            except GitError as exc:
                raise UserError(
                    f"could not check the session's branch {self.record.branch} out again "
                    f"({exc.last_line})."
                ) from None

    def workspace(self, base_commit: str | None = None) -> Workspace:
        return Workspace.open(
            self.repo,
            self.worktree,
            self.record.branch,
            base_commit or self.record.base_commit,
            self.record.id,
            base_ref=self.record.base_ref,
        )

    # --- requests ---------------------------------------------------------------------

    def history_path(self) -> Path | None:
        """The conversation the next request continues: what /compact left, else the last
        turn's history.json."""
        if self.record.history and Path(self.record.history).is_file():
            return Path(self.record.history)
        for turn in reversed(self.record.turns):
            path = run_dir_for(self.settings, turn.run_id) / "history.json"
            if path.is_file():
                return path
        return None

    def task_for(self, request: str) -> Task:
        """The Task of the next request: a follow-up of the session's branch at its tip."""
        self.ensure_worktree()
        history = self.history_path()
        return Task(
            instruction=request,
            repo=self.record.repo,
            base=self.record.branch,
            keep_worktree=True,
            follow_up=FollowUp(
                branch=self.record.branch,
                start_commit=self.record.tip,
                worktree=self.record.worktree,
                briefing=self.record.note,
                base_ref=self.record.base_ref,
                history=str(history) if history is not None else None,
            ),
        )

    def engine(self) -> Engine:
        """The session's engine: one thread, the approval hook, no publisher (/pr records).

        A model other than the bundled one is opened once for the whole session (a replay
        then goes on through its recording from request to request); the bundled model's
        server is the executor's, started on first use and kept for the session."""
        if self._engine is None:
            self._model = None if self.settings.uses_local_model else open_model(self.settings)
            self._executor = ThreadExecutor(
                1,
                model=self._model,
                log_path=self.settings.data_dir / "session-model-server.log",
                approve=self.approve,
            )
            self._engine = Engine(self.settings, self._executor, publisher=None)
        return self._engine

    def submit(
        self, request: str, listeners: Iterable[Listener] = (), stream: bool = False
    ) -> RunHandle:
        """Start the next request through the engine; `finish_turn` records it when done.
        With `stream` the listeners also get each reply's pieces as it is generated
        (transient `model.delta` events)."""
        task = self.task_for(request)
        settings = dataclasses.replace(self.settings, stream_replies=True) if stream else None
        return self.engine().submit(task, listeners, settings=settings or self.settings)

    def finish_turn(self, task: Task, result: AttemptResult) -> Turn:
        """Record a finished request as a turn: its checkpoint is where the branch is now
        (what an interrupted or failed turn left is committed first)."""
        assert task.follow_up is not None
        start = task.follow_up.start_commit
        self.ensure_worktree()
        workspace = self.workspace(start)
        if result.status in ("cancelled", "error") and workspace.diff().strip():
            what = "interrupted" if result.status == "cancelled" else "stopped by an error"
            workspace.commit(f"checkpoint ({what}): {_title(task.instruction)}", trailer=TRAILER)
        end = local.branch_tip(self.repo, self.record.branch) or start
        turn = Turn(
            run_id=task.task_id,
            request=task.instruction,
            status=result.status,
            start=start,
            end=end,
            summary=result.summary,
            tokens=result.usage.total_tokens,
        )
        self.record.turns.append(turn)
        self.record.history = None  # the turn's own history.json goes on from the compaction
        self.record.note = INTERRUPTED_NOTE if result.status == "cancelled" else ""
        self.record.model = self.settings.model_name
        self.save()
        return turn

    # --- slash commands ---------------------------------------------------------------

    def diff(self) -> str:
        """The session's change so far: its base to the worktree."""
        self.ensure_worktree()
        return self.workspace().diff()

    def undo(self) -> Turn:
        """Go back to the checkpoint before the last turn: the files and the conversation."""
        if not self.record.turns:
            raise UserError("there is nothing to undo: the session has no turn yet.")
        self.ensure_worktree()
        turn = self.record.turns[-1]
        git("reset", "--quiet", "--hard", turn.start, cwd=self.worktree)
        git("clean", "--quiet", "-fd", cwd=self.worktree)
        self.record.turns.pop()
        self.record.note = ""
        self.record.history = None
        self.save()
        return turn

    def apply(self) -> str:
        """Bring the session's change into the user's working tree as uncommitted edits;
        the diff stat. Refuses, changing nothing, when it does not apply cleanly."""
        tip = self.record.tip
        patch = git(
            "diff",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            self.record.base_commit,
            tip,
            cwd=self.repo,
        )
        if not patch.strip():
            raise UserError("the session has changed nothing yet, so there is nothing to apply.")
        check = _git_apply(self.repo, patch, "--check")
        if check.returncode != 0:
            lines = [line for line in check.stderr.splitlines() if line.strip()]
            detail = lines[0].removeprefix("error: ") if lines else "it conflicts"
            raise UserError(
                f"the session's change does not apply to your working tree ({detail}); nothing "
                "was changed — commit or stash your edits to those files, or use /pr."
            )
        done = _git_apply(self.repo, patch)
        if done.returncode != 0:
            raise UserError(f"git apply failed ({done.stderr.strip()}); nothing was applied.")
        self.record.applied = tip
        self.save()
        return git("diff", "--stat=100", self.record.base_commit, tip, cwd=self.repo)

    def open_pr(self) -> int:
        """Record the session's turns as a local pull request (opened by the first, updated by
        the others, each with its run's evidence, as `exec` records a run); its number."""
        if self.record.tip == self.record.base_commit:
            raise UserError("the session has changed nothing yet, so there is no pull request.")
        number = self.record.pr_number
        with Store.open(self.settings) as store:
            for turn in self.record.turns:
                if turn.recorded:
                    continue
                result = read_result(run_dir_for(self.settings, turn.run_id))
                if result is None:
                    continue
                result.branch = self.record.branch
                if number is None:
                    result.base_commit = self.record.base_commit
                    result.base_ref = self.record.base_ref
                    result.commit = self.record.tip
                    task = Task(
                        instruction=turn.request,
                        repo=self.record.repo,
                        base=self.record.base_ref,
                        task_id=turn.run_id,
                    )
                    recorded = local.record_run(store, task, result)
                    if recorded.pull_request is not None:
                        number = recorded.pull_request.number
                else:
                    task = Task(
                        instruction=turn.request,
                        repo=self.record.repo,
                        task_id=turn.run_id,
                        follow_up=FollowUp(
                            branch=self.record.branch,
                            start_commit=turn.start,
                            worktree=self.record.worktree,
                            briefing="",
                            pr_number=number,
                        ),
                    )
                    local.record_run(store, task, result, pr_number=number)
                turn.recorded = True
            if number is None:
                raise UserError("no turn of the session has a run record to open a PR from.")
            local.refresh(store, store.pull_request(number), self.repo)
        self.record.pr_number = number
        self.save()
        return number

    def compact(self) -> Compaction:
        """/compact: replace the older turns of the conversation by the model's summary now;
        the next request continues the compacted conversation."""
        path = self.history_path()
        if path is None:
            raise UserError("there is nothing to compact yet: the session has no conversation.")
        messages = json.loads(path.read_text(encoding="utf-8"))
        self.engine()
        assert self._executor is not None
        settings = self._executor.model_settings(self.settings)
        model = self._model or open_model(settings)
        wire = protocol_for(resolve_protocol(settings.protocol, settings.model_name))
        try:
            done = compact(model, messages, wire)
        except CompactionError:
            raise UserError(
                "there is nothing to compact yet: the conversation is only the task and its "
                "last turns."
            ) from None
        finally:
            if model is not self._model:
                model.close()
        target = (
            sessions_dir(self.settings.data_dir)
            / self.record.id
            / (f"compacted-{len(self.record.compactions) + 1}.json")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(done.messages, ensure_ascii=False, indent=1), "utf-8")
        self.record.history = str(target)
        self.record.compactions.append(
            {
                "after_turn": len(self.record.turns),
                "dropped_turns": done.dropped_turns,
                "chars_before": done.chars_before,
                "chars_after": done.chars_after,
                "seconds": done.seconds,
                "fallback": done.fallback,
            }
        )
        self.save()
        return done

    def test_command(self) -> str:
        self.ensure_worktree()
        agents_md = collect_agents_md(self.worktree, None)
        command = self.settings.test_command or detect_test_command(self.worktree, agents_md)
        if not command:
            raise UserError(
                "no test command was found; set one with `Test command: `...`` in AGENTS.md or "
                "test_command in pullsmith.toml."
            )
        return command

    def run_tests(self, command: str, cancel: threading.Event | None = None) -> CommandResult:
        """Run `command` in the session's worktree, in the sandbox the agent's commands use."""
        box = make_sandbox(
            self.settings.sandbox,
            self.worktree,
            agent_policy(self.settings),
            image=self.settings.sandbox_image,
            cancel=cancel,
        )
        try:
            return box.run(command, timeout_s=self.settings.test_timeout_s)
        finally:
            box.close()

    def use_model(self, name: str) -> None:
        self.close()  # the next request opens the new model
        self.settings = dataclasses.replace(self.settings, model=name)
        self.record.model = self.settings.model_name
        self.save()

    def tokens(self) -> int:
        return sum(turn.tokens for turn in self.record.turns)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
            self._executor = None
        if self._model is not None:
            self._model.close()
            self._model = None


def _git_apply(repo: Path, patch: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *options, "-"],
        cwd=repo,
        input=patch,
        capture_output=True,
        text=True,
        check=False,
    )


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:59] + "…"
