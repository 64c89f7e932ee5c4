"""The interactive session at a terminal: prompt_toolkit for input, Rich for output.

Everything that touches the terminal happens on the main thread: the engine's listeners and
the agent's approval hook only put items on one queue, which the main thread renders or
answers while it waits for the turn; the model's reply is streamed into the view as it is
generated (see view.py). Ctrl-C during a turn cancels the run (the command is
killed; the model is told with the next request); at the prompt it clears the line; Ctrl-D
(or /quit) leaves, the session saved for `pullsmith resume`.
"""

from __future__ import annotations

import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from pullsmith.agent.loop import Decision
from pullsmith.config import Settings
from pullsmith.errors import UserError
from pullsmith.events import Event
from pullsmith.sandbox.base import CommandResult
from pullsmith.session import slash
from pullsmith.session.approval import ApprovalPolicy, Ask
from pullsmith.session.core import Session
from pullsmith.session.view import SessionView


@dataclass
class _Question:
    ask: Ask
    answer: Future[Decision]


class LineInput:
    """Lines from the person: prompt_toolkit with history and multi-line input (Esc then Enter
    adds a line) at a terminal, plain lines otherwise."""

    def __init__(self, history_file: Path) -> None:
        self._session = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import FileHistory
            from prompt_toolkit.key_binding import KeyBindings

            bindings = KeyBindings()

            @bindings.add("escape", "enter")
            def _newline(event) -> None:  # noqa: ANN001
                event.current_buffer.insert_text("\n")

            history_file.parent.mkdir(parents=True, exist_ok=True)
            self._session = PromptSession(
                history=FileHistory(str(history_file)), key_bindings=bindings
            )

    def read(self, prompt: str = "› ") -> str:
        """The next line; KeyboardInterrupt on Ctrl-C, EOFError on Ctrl-D."""
        if self._session is None:
            return input(prompt)
        return self._session.prompt(prompt, multiline=False)

    def ask(self, prompt: str) -> str:
        """A one-off answer (not kept in the history)."""
        if self._session is None:
            return input(prompt)
        from prompt_toolkit import prompt as ask

        return ask(prompt)


class SessionApp:
    """Runs one session (or several, with /new) until the person leaves."""

    def __init__(
        self,
        settings: Settings,
        approval: str,
        session: Session | None = None,
        repo: Path | None = None,
        console: Console | None = None,
    ) -> None:
        self.settings = settings
        self.policy = ApprovalPolicy(approval)
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.input = LineInput(settings.data_dir / "session-input-history")
        self.repo = repo
        self.inbox: queue.Queue[Event | _Question] = queue.Queue()
        self.cancelling = False
        self.session = session or Session.start(settings, repo or Path.cwd(), approve=self.approve)
        self.session.approve = self.approve
        self.view = SessionView(self.console, self.session.worktree)

    # --- the approval hook (called on the agent's thread) -----------------------------

    def approve(self, command: str, failed: CommandResult | None) -> Decision:
        verdict = self.policy.check(command, failed)
        if isinstance(verdict, Decision):
            return verdict
        answer: Future[Decision] = Future()
        self.inbox.put(_Question(verdict, answer))
        return answer.result()

    def _settle(self) -> None:
        """Render the events the listener is still bringing (the reply that asked for the
        command) before a question is put."""
        while True:
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                return
            if isinstance(item, _Question):  # only one can be pending; put it back
                self.inbox.put(item)
                return
            self.view(item)

    def _answer(self, question: _Question) -> None:
        self._settle()
        self.view.end_stream(keep=True)
        if self.cancelling:
            question.answer.set_result(Decision(run=False, reason="the user interrupted the turn"))
            return
        try:
            question.answer.set_result(self._ask(question.ask))
        except BaseException:
            question.answer.set_result(Decision(run=False, reason="the user interrupted the turn"))
            raise

    def _ask(self, ask: Ask) -> Decision:
        self.console.print(f"[bold yellow]approval:[/] {escape(ask.question)}")
        for line in ask.command.strip().splitlines()[:12]:
            self.console.print("  [bold]" + escape(line) + "[/]", highlight=False)
        self.console.print(
            "  [1] run once   [2] always allow this command in this session   [3] refuse"
        )
        while True:
            choice = self.input.ask("approve [1/2/3]: ").strip()
            if choice in ("1", "2", "3"):
                break
            self.console.print("type 1, 2 or 3")
        if choice == "3":
            reason = self.input.ask("reason (told to the model): ").strip()
            self.console.print(f"[yellow]refused[/]: {escape(reason or 'no reason given')}")
            return self.policy.answer(ask, "refuse", reason)
        return self.policy.answer(ask, "always" if choice == "2" else "once")

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._banner()
        try:
            while True:
                self._status_line()
                try:
                    line = self.input.read()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not line.strip():
                    continue
                try:
                    command = slash.parse(line)
                    if command is None:
                        self.request(slash.request_text(line))
                    elif not self.do(command):
                        break
                except UserError as exc:
                    self.console.print(f"[red]{escape(exc.message)}[/]")
        finally:
            self.session.close()
            self.console.print(
                f"session saved: `pullsmith resume {self.session.record.id}` continues it."
            )

    def _banner(self) -> None:
        record = self.session.record
        turns = f" · {len(record.turns)} turns so far" if record.turns else ""
        self.console.print(
            f"[bold]pullsmith session[/] {record.id} · branch [cyan]{escape(record.branch)}[/]"
            f"{turns}\n[dim]worktree {escape(record.worktree)} (your tree is untouched until "
            "/apply) · /help lists the commands · Esc Enter adds a line · Ctrl-D quits[/]"
        )

    def _status_line(self) -> None:
        settings = self.session.settings
        window = str(settings.n_ctx) if settings.uses_local_model else "?"
        self.console.print(
            f"[dim]model {escape(settings.model_name)} · context {self.view.context_tokens}/"
            f"{window} · {self.session.tokens()} tokens so far · sandbox "
            f"{settings.sandbox} · approval {self.policy.mode}[/]"
        )

    def request(self, text: str) -> None:
        self.view.begin()
        self.cancelling = False
        handle = self.session.submit(text, [self.inbox.put], stream=True)
        while True:
            try:
                item = self.inbox.get(timeout=0.1)
            except queue.Empty:
                if handle.done() and self.inbox.empty():
                    break
                continue
            except KeyboardInterrupt:
                self._interrupt(handle)
                continue
            try:
                if isinstance(item, _Question):
                    self._answer(item)
                else:
                    self.view(item)
            except KeyboardInterrupt:
                self._interrupt(handle)
        self.view.end_stream(keep=True)
        result = handle.result()
        turn = self.session.finish_turn(handle.task, result)
        if result.status == "error":
            self.console.print(f"[red]{escape(result.error or 'the run failed')}[/]")
        verdict = {"passed": "green", "failed": "red", "error": "red"}.get(result.status, "yellow")
        self.console.print(
            f"[{verdict}]{result.status}[/] · checkpoint {turn.end[:10]} · {result.turns} model "
            f"turns · {result.usage.total_tokens} tokens"
        )

    def _interrupt(self, handle) -> None:  # noqa: ANN001
        if not self.cancelling:
            self.view.interrupted()
            self.console.print("[yellow]interrupting the turn…[/]")
        self.cancelling = True
        handle.cancel()

    # --- slash commands ----------------------------------------------------------------

    def do(self, command: slash.Slash) -> bool:
        """Carry out a slash command; False when the session should end."""
        session = self.session
        if command.name == "quit":
            return False
        if command.name == "help":
            for line in slash.help_lines():
                self.console.print(escape(line))
        elif command.name == "diff":
            diff = session.diff()
            if diff.strip():
                self.console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))
            else:
                self.console.print("no changes yet.")
        elif command.name == "undo":
            turn = session.undo()
            self.view.context_tokens = 0
            self.console.print(
                f"undone: {escape(turn.request)!r}; back at {turn.start[:10]} (files and the "
                "model's history)."
            )
        elif command.name == "apply":
            stat = session.apply()
            self.console.print(
                f"applied to {escape(session.record.repo)} as uncommitted edits:\n"
                + escape(stat.rstrip())
            )
        elif command.name == "pr":
            number = session.open_pr()
            self.console.print(
                f"pull request #{number} records the session (`pullsmith pr show {number}`)."
            )
        elif command.name == "test":
            self._test()
        elif command.name == "compact":
            self.console.print("[dim]asking the model for a summary of the older turns…[/]")
            done = session.compact()
            self.view.context_tokens = 0
            how = (
                f" ({done.fallback}; pullsmith wrote it from the commands)" if done.fallback else ""
            )
            self.console.print(
                f"compacted {done.dropped_turns} turn(s) into a summary{how}, kept the task and the "
                f"last {done.kept_turns} turn(s): {done.chars_before:,} → {done.chars_after:,} "
                f"characters.\n[dim]{escape(done.summary)}[/]"
            )
        elif command.name == "model":
            session.use_model(command.arg)
            self.console.print(f"model {escape(command.arg)} from the next request on.")
        elif command.name == "status":
            record = session.record
            self.console.print(
                f"session {record.id} · {escape(record.state)} · {len(record.turns)} turns\n"
                f"branch {escape(record.branch)} from {escape(record.base_ref)} "
                f"({record.base_commit[:10]}) · checkpoint {record.tip[:10]}\n"
                f"worktree {escape(record.worktree)}"
            )
            self._status_line()
        elif command.name == "new":
            session.close()
            self.session = Session.start(
                self.settings, session.repo, base=None, approve=self.approve
            )
            self.view = SessionView(self.console, self.session.worktree)
            self.policy = ApprovalPolicy(self.policy.mode)
            self._banner()
        return True

    def _test(self) -> None:
        command = self.session.test_command()
        self.console.print(f"[bold cyan]$[/] {escape(command)}")
        cancel = threading.Event()
        done: Future[CommandResult] = Future()

        def run() -> None:
            try:
                done.set_result(self.session.run_tests(command, cancel))
            except BaseException as exc:
                done.set_exception(exc)

        threading.Thread(target=run, name="session-tests", daemon=True).start()
        while True:
            try:
                result = done.result(timeout=0.2)
                break
            except TimeoutError:
                continue
            except KeyboardInterrupt:
                cancel.set()
        self.view.on_command_finished(
            {
                "output": result.output,
                "exit_code": result.exit_code,
                "seconds": result.duration_s,
                "timed_out": result.timed_out,
            }
        )
