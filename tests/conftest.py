from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from postgres_fixture import postgres_databases, postgres_url, store_url  # noqa: F401

from pullsmith.models.base import Reply, Usage
from pullsmith.models.replay import text_pieces

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class ScriptedModel:
    """Replays canned replies in order; records what it was shown.

    A reply is its text, a Reply, or a dict {"text": ..., "tool_calls": [{"id", "name",
    "arguments"}, ...]} for the tools protocol.
    """

    name = "scripted"

    def __init__(self, replies: list[str | dict | Reply]) -> None:
        self.replies = list(replies)
        self.seen: list[list[dict]] = []
        self.temperatures: list[float | None] = []
        self.tools: list[list[dict] | None] = []
        self.stops: list[list[str] | None] = []
        self.seeds: list[int | None] = []
        self.closed = False

    def complete(self, messages, temperature=None, tools=None, stop=None, seed=None, on_text=None):
        self.seen.append([dict(m) for m in messages])
        self.temperatures.append(temperature)
        self.tools.append(tools)
        self.stops.append(stop)
        self.seeds.append(seed)
        if not self.replies:
            raise AssertionError("the scripted model ran out of replies")
        reply = self.replies.pop(0)
        if not isinstance(reply, Reply):
            usage = Usage(prompt_tokens=100, completion_tokens=10)
            if isinstance(reply, dict):
                reply = Reply(
                    text=reply.get("text", ""),
                    usage=usage,
                    tool_calls=list(reply.get("tool_calls", [])),
                )
            else:
                reply = Reply(text=reply, usage=usage)
        if on_text is not None:  # streamed: the text in a few pieces, as a server sends it
            for piece in text_pieces(reply.text):
                on_text(piece)
        return reply

    def close(self) -> None:
        self.closed = True


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test's data, cache and config out of the real home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test User")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test User")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PULLSMITH_MODEL", "PULLSMITH_SANDBOX"):
        monkeypatch.delenv(var, raising=False)
    # Scripted models answer the agent's turns; the tests of the summary written from the final
    # diff (tests/test_summary.py) turn it on and script that reply too.
    monkeypatch.setenv("PULLSMITH_SUMMARY_FROM_DIFF", "false")
    # Likewise direct repair, which would ask before the agent's turns (tests/agent/
    # test_repair.py turns it on).
    monkeypatch.setenv("PULLSMITH_REPAIR", "false")
    return home


@pytest.fixture
def real_cache(monkeypatch):
    """Use the user's real cache (the assembled 1 GB GGUF of the bundled model is reused
    across runs instead of assembled for each test)."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if os.environ.get("PULLSMITH_TEST_CACHE_HOME"):
        monkeypatch.setenv("XDG_CACHE_HOME", os.environ["PULLSMITH_TEST_CACHE_HOME"])


@pytest.fixture
def example_repo(tmp_path) -> Path:
    """The demo's inventory repository, freshly committed in a temporary directory."""
    repo = tmp_path / "inventory"
    shutil.copytree(EXAMPLES / "inventory", repo)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


def bwrap_works() -> bool:
    return shutil.which("bwrap") is not None and os.name == "posix"
