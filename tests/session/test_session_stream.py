"""The streamed reply at the terminal: a real `pullsmith session` in tmux against a loopback
OpenAI-compatible server that streams slowly (tests/fake_openai_stream.py, 127.0.0.1 only).
The reply's text is on the screen while the server still holds the rest of it; the finished
reply is then shown as usual; Ctrl-C during a streamed reply closes the stream."""

from __future__ import annotations

import io
import threading

import pytest
from fake_openai_stream import FakeStreamingServer, Scripted
from rich.console import Console
from session_helpers import FIX, PULLSMITH, TmuxSession, make_repo, session_env, tmux_works

from pullsmith.events import Event
from pullsmith.models.replay import text_pieces
from pullsmith.session.view import SessionView

needs_tmux = pytest.mark.skipif(
    not tmux_works(), reason="tmux is not installed (make test installs it)"
)


def delta(turn: int, text: str) -> Event:
    return Event(id=0, type="model.delta", task_id="t", ts=0.0, data={"turn": turn, "text": text})


def test_the_view_shows_the_pieces_then_the_reply_or_what_was_cut(tmp_path):
    out = io.StringIO()
    view = SessionView(
        Console(file=out, force_terminal=True, color_system=None, highlight=False, width=60),
        tmp_path,
    )
    view(delta(1, "Looking at "))
    view(delta(1, "the code.\n```bash\nls"))
    shown = out.getvalue()
    assert "Looking at" in shown and "the code." in shown
    reply = {"turn": 1, "text": "Looking at the code.\n```bash\nls\n```", "seconds": 1.0}
    view(Event(id=5, type="model.reply", task_id="t", ts=0.0, data=reply))
    assert out.getvalue().endswith("● Looking at the code.\n")
    assert "cut short" not in out.getvalue()
    view(delta(2, "Now I will "))
    view(
        Event(
            id=6, type="limit.reached", task_id="t", ts=0.0, data={"turn": 1, "reason": "cancelled"}
        )
    )
    rest = out.getvalue()
    assert "Now I will" in rest and "(reply cut short)" in rest and "stopped: interrupted" in rest


@needs_tmux
def test_the_reply_grows_on_the_screen_as_it_streams(tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    repo = make_repo(tmp_path / "inventory")
    held = threading.Event()
    server = FakeStreamingServer(
        [
            # Chunk 0 is the role, 1-2 the first pieces; the server waits before piece 3.
            Scripted(
                pieces=[
                    "Let me look at ",
                    "the export code ",
                    "before I change it.\n",
                    "```bash\ncat inventory/export.py\n```",
                ],
                gate=held,
                gate_at=3,
            ),
            Scripted(pieces=text_pieces(FIX, 8), delay=0.02),
            Scripted(pieces=['```bash\nfinish "to_csv writes every row"\n```']),
            # The second request: a long reply, slowly, cut short by Ctrl-C.
            Scripted(pieces=[f"thinking {i}. " for i in range(3000)], delay=0.05),
        ]
    )
    env = session_env(tmp_path / "data")
    term = TmuxSession(
        [
            PULLSMITH,
            "session",
            "--approval",
            "never",
            "--base-url",
            server.base_url,
            "--model",
            "fake-streamer",
        ],
        repo,
        env,
    )
    try:
        term.expect("›")
        term.type("The CSV export drops the last row; fix it.")
        # The first two pieces are on the screen while the rest is still held back.
        seen = term.expect("Let me look at the export code")
        assert "$ cat inventory/export.py" not in term.screen()
        assert "before I change it" not in term.screen()
        held.set()
        term.expect("$ cat inventory/export.py")
        # Then the finished reply as it is always shown (in place of the streamed text): its
        # first line, then the command.
        screen = term.screen()
        assert "● Let me look at the export code before I change it.\n$ cat inventory" in screen
        assert screen.count("Let me look at the export code") == 1
        seen = term.expect("passed · checkpoint")
        assert "done: to_csv writes every row" in seen
        assert "● The loop stops one row early." in seen
        term.expect("›")

        term.type("now explain the fix at length")
        term.expect("thinking 3.")
        term.keys("C-c")
        # What had streamed stays, marked, then the interruption and the turn's end.
        term.expect("(reply cut short)")
        term.expect("interrupting the turn")
        seen = term.expect("cancelled · checkpoint", timeout=30)
        assert "thinking" not in seen
        assert server.hung_up.wait(10), "the stream was not closed"
        term.expect("›")
        term.type("/quit")
        term.expect("EXITED 0")
    finally:
        term.close()
        server.close()
    # Four requests, each streamed; nothing is asked after the cancel.
    assert [r.get("stream") for r in server.requests] == [True, True, True, True]
