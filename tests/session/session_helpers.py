"""Driving a real `pullsmith` session through a pseudo-terminal: tmux on a private server.

`TmuxSession` starts a command in a detached tmux session (its own `-L` socket, so nothing is
shared with other tmux users), types into it with send-keys and reads the screen with
capture-pane. `expect` waits for text that appears after what the previous `expect` matched.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import EXAMPLES, bwrap_works, git

SANDBOX = "bwrap" if bwrap_works() else "none"
PULLSMITH = str(Path(sys.executable).parent / "pullsmith")
FIXED_EXPORT = (
    (EXAMPLES / "inventory" / "inventory" / "export.py")
    .read_text()
    .replace(
        "    for i in range(len(rows) - 1):\n        lines.append(format_row(rows[i]))\n",
        "    for row in rows:\n        lines.append(format_row(row))\n",
    )
)
FIX = (
    "The loop stops one row early.\n```bash\ncat > inventory/export.py <<'EOF'\n"
    + FIXED_EXPORT
    + "EOF\n```"
)


def tmux_works() -> bool:
    return shutil.which("tmux") is not None


def make_repo(path: Path) -> Path:
    shutil.copytree(EXAMPLES / "inventory", path)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "initial", cwd=path)
    return path


def write_recording(run_dir: Path, replies: list[str]) -> Path:
    """A hand-written recording for `--model replay:RUN_DIR`: these assistant replies."""
    run_dir.mkdir(parents=True, exist_ok=True)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "(recorded by hand)"},
        {"role": "user", "content": "(the task)"},
    ]
    for reply in replies:
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "(observation)"},
        ]
    (run_dir / "history.json").write_text(json.dumps(messages))
    return run_dir


def session_env(data_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PULLSMITH_", "OPENAI_", "ANTHROPIC_", "TMUX"))
    }
    env.update(
        XDG_DATA_HOME=str(data_home),
        PULLSMITH_SANDBOX=SANDBOX,
        TERM="xterm-256color",
        GIT_AUTHOR_NAME="Test User",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="Test User",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    return env


class TmuxSession:
    """One command running in a terminal of tmux's, 200 columns wide."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.socket = f"pullsmith-test-{secrets.token_hex(4)}"
        self.name = "s"
        self.mark = 0
        self.env = env
        line = " ".join(shlex.quote(a) for a in argv)
        script = f"{line}; echo EXITED $?; sleep 600"
        self._tmux(
            "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", "-c", str(cwd), script
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def screen(self) -> str:
        """Everything the terminal showed, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-5000", "-t", self.name)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.name, "-l", text)
        self._tmux("send-keys", "-t", self.name, "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def expect(self, text: str, timeout: float = 90.0) -> str:
        """Wait for `text` after the previous match; the screen from there to it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            found = screen.find(text, self.mark)
            if found >= 0:
                seen = screen[self.mark : found + len(text)]
                self.mark = found + len(text)
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} did not appear; the screen after the last match:\n"
                    + screen[self.mark :]
                )
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True
        )
