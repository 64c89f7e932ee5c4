"""The streamed reply at the terminal: a real `pullsmith session` in tmux against a loopback
OpenAI-compatible server that streams slowly (tests/fake_openai_stream.py, 127.0.0.1 only).
The reply's text is on the screen while the server still holds the rest of it; the finished
reply is then shown as usual; Ctrl-C during a streamed reply closes the stream."""

from __future__ import annotations

import threading

import pytest
from fake_openai_stream import FakeStreamingServer, Scripted
from session_helpers import FIX, PULLSMITH, TmuxSession, make_repo, session_env, tmux_works

from pullsmith.models.replay import text_pieces

pytestmark = pytest.mark.skipif(
    not tmux_works(), reason="tmux is not installed (make test installs it)"
)


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
