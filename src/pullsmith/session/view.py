"""The session's view of the event stream: each command, its output (collapsed when long) and
exit code, each edit as a coloured diff, the tests, and how the turn ended.

Events are rendered on the session's main thread (the terminal's), in the order they come.
The diff of an edit is the worktree's change since the last one shown, read when the command's
`command.finished` event is rendered.

A streamed reply (transient `model.delta` events) grows live in a Rich `Live` region that is
refreshed only here, on the main thread (no refresh thread of its own): its last lines as they
arrive, replaced by the normal rendering once the reply's `model.reply` comes. A stream cut
short (a cancel, a failed model) leaves what had arrived on the screen.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text

from pullsmith.events import Event

OUTPUT_HEAD = 3
OUTPUT_TAIL = 6
DIFF_LINES = 80
# The rows of a streamed reply shown while it grows (its last ones).
STREAM_ROWS = 12


def worktree_tree(worktree: Path) -> str | None:
    """The tree of everything in `worktree` now (new files too), built in a scratch index."""
    index = subprocess.run(
        ["git", "rev-parse", "--git-path", "index"],
        cwd=worktree,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pullsmith-view-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        real = Path(index) if Path(index).is_absolute() else worktree / index
        if real.is_file():
            Path(tmp, "index").write_bytes(real.read_bytes())
        add = subprocess.run(
            ["git", "add", "--all", "--", "."], cwd=worktree, env=env, capture_output=True
        )
        if add.returncode != 0:
            return None
        out = subprocess.run(
            ["git", "write-tree"], cwd=worktree, env=env, capture_output=True, text=True
        )
        return out.stdout.strip() or None


def tree_diff(worktree: Path, old: str, new: str) -> str:
    return subprocess.run(
        ["git", "diff-tree", "-r", "-p", "--no-color", "--no-renames", old, new],
        cwd=worktree,
        capture_output=True,
        text=True,
        check=False,
    ).stdout


class SessionView:
    """Renders one turn's events; `context_tokens` is the last reply's prompt + completion."""

    def __init__(self, console: Console, worktree: Path) -> None:
        self.console = console
        self.worktree = worktree
        self.context_tokens = 0
        self._tree: str | None = None
        self._live: Live | None = None
        self._streamed = ""
        self._stream_turn: int | None = None
        self._muted = False

    def begin(self) -> None:
        """Call before a turn: edits are shown against the worktree as it is now."""
        self._tree = worktree_tree(self.worktree)
        self._muted = False

    def interrupted(self) -> None:
        """The person interrupted the turn: what streamed so far stays on the screen, and no
        more of it is shown (the stream closes at its next piece)."""
        self.end_stream(keep=True)
        self._muted = True

    def __call__(self, event: Event) -> None:
        if event.type != "model.delta":
            # The reply's own event replaces the live text; any other means it was cut short.
            self.end_stream(keep=event.type != "model.reply")
        handler = getattr(self, "on_" + event.type.replace(".", "_"), None)
        if handler is not None:
            handler(event.data)

    def on_model_delta(self, d: dict[str, Any]) -> None:
        if self._muted:
            return
        if d["turn"] != self._stream_turn:
            self.end_stream(keep=True)
            self._stream_turn = d["turn"]
        self._streamed += d["text"]
        if self._live is None:
            self._live = Live(
                console=self.console,
                auto_refresh=False,  # refreshed below, on this (the main) thread only
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._live.update(self._stream_text(), refresh=True)

    def end_stream(self, keep: bool = False) -> None:
        """Close the live region of a streamed reply; with `keep`, print what had arrived (a
        stream cut short keeps its text on the screen)."""
        live, self._live = self._live, None
        text, self._streamed, self._stream_turn = self._streamed, "", None
        if live is None:
            return
        live.stop()
        if keep and text.strip():
            self.console.print(self._stream_text(text))
            self.console.print("  [dim](reply cut short)[/]")

    def _stream_text(self, text: str | None = None) -> Text:
        """The last STREAM_ROWS rows of the streamed text, wrapped here to the terminal's
        width (so the live region knows its height)."""
        width = max(20, self.console.width - 3)
        rows: list[str] = []
        for line in (self._streamed if text is None else text).expandtabs(4).split("\n"):
            rows += [line[i : i + width] for i in range(0, len(line), width)] or [""]
        return Text("● " + "\n  ".join(rows[-STREAM_ROWS:]), style="italic dim")

    def on_model_reply(self, d: dict[str, Any]) -> None:
        self.context_tokens = int(d.get("prompt_tokens") or 0) + int(
            d.get("completion_tokens") or 0
        )
        thought = d["text"].split("```")[0].strip()
        if thought:
            self.console.print("● " + escape(thought.splitlines()[0][:200]), style="italic")

    def on_command_started(self, d: dict[str, Any]) -> None:
        lines = d["command"].splitlines() or [""]
        self.console.print("[bold cyan]$[/] " + escape(lines[0]), highlight=False)
        for line in lines[1:4]:
            self.console.print("  " + escape(line), highlight=False)
        if len(lines) > 4:
            self.console.print(f"  [dim]… {len(lines) - 4} more lines[/]")

    def on_command_finished(self, d: dict[str, Any]) -> None:
        rows = d["output"].rstrip().splitlines()
        if len(rows) > OUTPUT_HEAD + OUTPUT_TAIL + 1:
            hidden = len(rows) - OUTPUT_HEAD - OUTPUT_TAIL
            rows = [*rows[:OUTPUT_HEAD], f"… {hidden} lines hidden …", *rows[-OUTPUT_TAIL:]]
        for row in rows:
            self.console.print("  " + escape(row), style="dim", highlight=False)
        style = "green" if d["exit_code"] == 0 else "red"
        extra = " · timed out" if d.get("timed_out") else ""
        extra += " · stopped" if d.get("cancelled") else ""
        self.console.print(f"  [{style}]exit {d['exit_code']}[/] · {d['seconds']:.1f} s{extra}")
        self._show_edit()

    def _show_edit(self) -> None:
        tree = worktree_tree(self.worktree)
        if tree is None or self._tree is None or tree == self._tree:
            self._tree = tree or self._tree
            return
        diff = tree_diff(self.worktree, self._tree, tree)
        self._tree = tree
        if not diff.strip():
            return
        lines = diff.splitlines()
        if len(lines) > DIFF_LINES:
            lines = [*lines[:DIFF_LINES], f"… {len(lines) - DIFF_LINES} more lines (/diff)"]
        self.console.print(Syntax("\n".join(lines), "diff", theme="ansi_dark", word_wrap=True))

    def on_edit(self, d: dict[str, Any]) -> None:
        if not d["ok"]:
            self.console.print(f"  [yellow]edit ({escape(d['form'])}) failed[/]")

    def on_tests_ran(self, d: dict[str, Any]) -> None:
        labels = {"before": "tests before", "edit": "tests", "check": "tests", "after": "tests"}
        ok = d["exit_code"] == 0
        verdict = "[green]pass[/]" if ok else f"[red]fail (exit {d['exit_code']})[/]"
        self.console.print(
            f"  {labels.get(d['phase'], 'tests')}: {verdict} · $ {escape(d['command'])}",
            highlight=False,
        )

    def on_format_error(self, d: dict[str, Any]) -> None:
        self.console.print(f"  [yellow]malformed reply:[/] {escape(d['message'][:200])}")

    def on_finish_rejected(self, d: dict[str, Any]) -> None:
        self.console.print("  [yellow]the model said it was done, but the tests still fail[/]")

    def on_agent_finished(self, d: dict[str, Any]) -> None:
        self.console.print(f"[bold]done:[/] {escape(d['summary'] or '(no summary)')}")

    def on_limit_reached(self, d: dict[str, Any]) -> None:
        reason = "interrupted" if d["reason"] == "cancelled" else d["reason"]
        self.console.print(f"[yellow]stopped: {escape(reason)}[/]")

    def on_context_compacted(self, d: dict[str, Any]) -> None:
        self.context_tokens = int(d.get("tokens_after") or 0)
        self.console.print(
            f"[yellow]context nearly full:[/] compacted {d['dropped_turns']} older turn(s) into a "
            f"summary (~{d['tokens_before']:,} → ~{d['tokens_after']:,} tokens)"
        )

    def on_error(self, d: dict[str, Any]) -> None:
        self.console.print(f"[red]error:[/] {escape(d['message'])}")

    def on_warning(self, d: dict[str, Any]) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(d['message'])}")

    def on_commit_created(self, d: dict[str, Any]) -> None:
        self.console.print(f"[dim]checkpoint {d['commit'][:10]} on {escape(d['branch'])}[/]")
