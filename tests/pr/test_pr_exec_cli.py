"""`pullsmith exec` end to end: the run opens a PR, `--continue` adds to it, `--publish` ships it.

The model is an OpenAI-compatible server on 127.0.0.1 that replays scripted replies, so the
whole command line path runs as a user meets it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import git
from fake_github import FakeGitHub
from fake_openai_stream import Scripted, send_stream
from pr_helpers import (
    EMPTY_TEST,
    FINISH_EMPTY,
    INSTRUCTION,
    SANDBOX,
    assert_refused,
    failing_replies,
    good_replies,
    ledger_repo_fixture,  # noqa: F401 (the ledger_repo fixture)
    pullsmith,
)


class ScriptedServer:
    """Chat completions that answer with the next scripted reply, shaped like OpenAI's."""

    def __init__(self, replies: list[str], fail_after: int | None = None) -> None:
        self.replies = list(replies)
        self.fail_after = fail_after
        self.prompts: list[list[dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length))
                server.prompts.append(request["messages"])
                if server.fail_after is not None and len(server.prompts) > server.fail_after:
                    error = {"error": {"message": "Incorrect API key provided", "code": None}}
                    data = json.dumps(error).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                text = server.replies.pop(0) if server.replies else '```bash\nfinish "out"\n```'
                if request.get("stream"):
                    send_stream(self, request, Scripted([text], completion_tokens=5))
                    return
                body = json.dumps(
                    {
                        "id": f"chatcmpl-{len(server.prompts)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": request["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def exec_args(server: ScriptedServer, *args: str) -> list[str]:
    return [
        "exec",
        "--base-url",
        server.base_url,
        "--model",
        "scripted",
        "--sandbox",
        SANDBOX,
        *args,
    ]


def test_exec_opens_continues_and_publishes_a_pr(ledger_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer(good_replies()) as model:
        first = pullsmith(
            *exec_args(model, "--repo", str(ledger_repo), INSTRUCTION), subprocess_=True
        )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "pull request #1 opened (tests passing): `pullsmith pr show 1`" in first.stdout
    listed = pullsmith("pr", "list", cwd=ledger_repo).stdout
    assert "#1" in listed and "passing" in listed and INSTRUCTION in listed

    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    git("remote", "add", "origin", f"file://{bare}", cwd=ledger_repo)
    git("push", "-q", "origin", "main", cwd=ledger_repo)
    with FakeGitHub("octo", "ledger", bare) as github:
        monkeypatch.setenv("GITHUB_TOKEN", github.token)
        monkeypatch.setenv("PULLSMITH_GITHUB_REPO", "octo/ledger")
        monkeypatch.setenv("PULLSMITH_GITHUB_API_URL", github.url)
        with ScriptedServer(
            [EMPTY_TEST, "```bash\npython -m pytest -q\n```", FINISH_EMPTY]
        ) as model:
            second = pullsmith(
                *exec_args(model, "--continue", "1", "--publish", "also handle empty input"),
                cwd=ledger_repo,
            )
        assert second.returncode == 0, second.stdout + second.stderr
        assert "pull request #1 updated (tests passing)" in second.stdout
        assert "published: https://github.com/octo/ledger/pull/1" in second.stdout
        # The model saw the earlier work before it started.
        first_prompt = model.prompts[0][1]["content"]
        assert first_prompt.startswith("Task: also handle empty input")
        assert "This continues earlier work on branch pullsmith/" in first_prompt
        # GitHub has the branch as it is now, and the description of both runs.
        head = git("rev-parse", github.pulls[1]["head"]["ref"], cwd=ledger_repo).strip()
        assert github.pulls[1]["head"]["sha"] == head
        body = github.pulls[1]["body"]
        assert body.index("### Run 2 of 2 — follow-up") < body.index("### Run 1 of 2")

    merged = pullsmith("pr", "merge", "1", cwd=ledger_repo)
    assert merged.returncode == 0, merged.stderr
    assert (ledger_repo / "tests" / "test_empty.py").is_file()
    assert "for amount in amounts:" in (ledger_repo / "ledger" / "report.py").read_text()


def test_exec_of_a_failing_run_opens_a_failing_pr(ledger_repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer(failing_replies()) as model:
        proc = pullsmith(*exec_args(model, "--repo", str(ledger_repo), INSTRUCTION))
    assert proc.returncode == 1
    assert "pull request #1 opened (tests failing)" in proc.stdout
    assert "**Tests fail.**" in pullsmith("pr", "show", "1", "--raw").stdout


def test_exec_json_streams_the_pr_event(ledger_repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer(good_replies()) as model:
        proc = pullsmith(*exec_args(model, "--json", "--repo", str(ledger_repo), INSTRUCTION))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    opened = [e for e in events if e["type"] == "pr.opened"]
    assert len(opened) == 1 and opened[0]["data"]["number"] == 1
    assert opened[0]["data"]["checks"] == "passing"


def test_exec_continue_refusals(ledger_repo):
    assert_refused(pullsmith("exec", "--continue", "3", "more"), "there is no pull request #3")
    assert_refused(
        pullsmith("exec", "--continue", "3", "--repo", str(ledger_repo), "more"),
        "--repo can not be used with --continue",
    )


def test_a_run_that_errors_after_editing_still_opens_a_pr(ledger_repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer(good_replies(), fail_after=1) as model:
        proc = pullsmith(*exec_args(model, "--repo", str(ledger_repo), INSTRUCTION))
    assert_refused(proc, "rejected the API key")
    assert "what it did is in pull request #1" in proc.stderr
    raw = pullsmith("pr", "show", "1", "--raw").stdout
    assert "**The run ended in an error before pullsmith could test the result:**" in raw
    assert "for amount in amounts:" in pullsmith("pr", "diff", "1").stdout
    assert "error" in pullsmith("pr", "list", cwd=ledger_repo).stdout


def test_a_store_that_can_not_be_written_does_not_fail_the_run(ledger_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("PULLSMITH_DATABASE_URL", f"sqlite:///{tmp_path / 'not-a-dir' / 'x.db'}")
    with ScriptedServer(good_replies()) as model:
        proc = pullsmith(*exec_args(model, "--repo", str(ledger_repo), INSTRUCTION))
    assert proc.returncode == 0, proc.stderr
    assert "warning: the run was not recorded as a pull request" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert git("branch", "--list", "pullsmith/*", cwd=ledger_repo).strip()


def test_exec_best_of_n_opens_the_pr_from_the_passing_attempt(ledger_repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer([*failing_replies(), *good_replies()]) as model:
        proc = pullsmith(
            *exec_args(
                model, "--repo", str(ledger_repo), "--attempts", "3", "--until-pass", INSTRUCTION
            ),
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "best of 3" in out and "attempt 1: " in out and "attempt 2: tests pass" in out
    assert "chose attempt 2 of 2" in out
    # Attempt 2 did not run the tests before any change again, nor after its checked finish.
    assert out.count("▸ tests before the change: $ ") == 1
    assert (
        "▸ tests before the change: exit 1 · attempt 1's run stands (the same commit and "
        "command)" in out
    )
    assert "▸ tests after: exit 0 · the check's run stands (nothing changed since)" in out
    assert "pull request #1 opened (tests passing)" in out
    branches = git("branch", "--list", "pullsmith/*", cwd=ledger_repo).split()
    assert len(branches) == 2 and all(b.startswith("pullsmith/") for b in branches)
    shown = json.loads(pullsmith("pr", "show", "1", "--json", cwd=ledger_repo).stdout)
    assert shown["head"].endswith("-2") and shown["head"] in branches


def test_exec_refuses_attempts_with_a_follow_up(ledger_repo):
    proc = pullsmith("exec", "--continue", "1", "--attempts", "2", "more", cwd=ledger_repo)
    assert_refused(proc, "runs as one attempt")
