"""Shared pieces of the eval tests: a tiny suite, a model that follows a plan per task, and a
fake OpenAI-compatible server that does the same over HTTP."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fake_openai_stream import Scripted, send_stream

from pullsmith.models.base import Reply, Usage

BUGGY_ADD = "def add(a, b):\n    return a - b\n"
# The fixes differ in size from the bugs: a same-size edit within a second of the worktree's
# creation is missed by Workspace.diff (its scratch index loses git's racy-clean protection).
FIXED_ADD = "def add(a, b):\n    return a + b  # fixed\n"
BUGGY_MUL = "def mul(a, b):\n    return a + b\n"
FIXED_MUL = "def mul(a, b):\n    return a * b  # fixed\n"

HIDDEN_ADD = (
    "from calc import add\n\nassert add(2, 3) == 5\nassert add(-1, 1) == 0\nprint('hidden ok')\n"
)
HIDDEN_MUL = "from mathx import mul\n\nassert mul(3, 4) == 12\nassert mul(0, 9) == 0\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_mini_suite(root: Path) -> Path:
    """Two task directories: `add` (calc.py subtracts) and `mul` (mathx.py adds)."""
    suite = root / "mini"
    add = suite / "add"
    write(add / "repo" / "calc.py", BUGGY_ADD)
    # Plain scripts, not pytest, keep these tests fast; the task names its test command.
    write(add / "repo" / "test_calc.py", "from calc import add\n\nassert add(2, 2) == 4\n")
    write(add / "hidden" / "hidden_test_calc.py", HIDDEN_ADD)
    write(add / "solution" / "calc.py", FIXED_ADD)
    write(
        add / "task.toml",
        'statement = "add() in calc.py subtracts; make it add. Tests: test_calc.py."\n'
        'repo = "repo"\n'
        'test_command = "python test_calc.py"\n'
        "[tests]\n"
        'files_dir = "hidden"\n'
        'fail_to_pass = ["python hidden_test_calc.py"]\n'
        "timeout_s = 20\n"
        "[reference]\n"
        'files_dir = "solution"\n'
        "[metadata]\n"
        'bug_type = "operator misuse"\n',
    )
    mul = suite / "mul"
    write(mul / "repo" / "mathx.py", BUGGY_MUL)
    write(mul / "repo" / "test_mathx.py", "from mathx import mul\n\nassert mul(2, 3) == 6\n")
    write(
        mul / "task.toml",
        'statement = "mul() in mathx.py adds; make it multiply."\n'
        'repo = "repo"\n'
        'test_command = "python test_mathx.py"\n'
        "[tests]\n"
        'fail_to_pass = ["python hidden_test_mathx.py"]\n'
        'pass_to_pass = ["python test_mathx.py"]\n'
        f"files = {{ 'hidden_test_mathx.py' = {json.dumps(HIDDEN_MUL)} }}\n"
        "[reference]\n"
        f"files = {{ 'mathx.py' = {json.dumps(FIXED_MUL)} }}\n"
        "[metadata]\n"
        'bug_type = "value misuse"\n',
    )
    write(suite / "subsets" / "first.txt", "# just one\nadd\n")
    return suite


def heredoc(path: str, text: str) -> str:
    return f"```bash\ncat > {path} <<'EOF'\n{text}EOF\n```"


FINISH = '```bash\nfinish "fixed it"\n```'

# Plans: what the model says, turn by turn, for the task whose statement holds the key.
FIX_PLANS = {
    "calc.py": [heredoc("calc.py", FIXED_ADD), FINISH],
    "mathx.py": [heredoc("mathx.py", FIXED_MUL), FINISH],
}


class PlanModel:
    """Answers each conversation from the plan whose key is in its first user message."""

    name = "plan"

    def __init__(self, plans: dict[str, list[str]]) -> None:
        self.plans = plans
        self.calls = 0
        self.closed = False
        self.lock = threading.Lock()

    def key_for(self, messages: list[dict]) -> str | None:
        """The plan a conversation follows (the key in its first user message), if any."""
        first = next(m["content"] for m in messages if m["role"] == "user")
        return next((key for key in self.plans if key in first), None)

    def reply_for(self, messages: list[dict]) -> str:
        key = self.key_for(messages)
        if key is None:
            return FINISH
        turn = sum(1 for m in messages if m["role"] == "assistant")
        replies = self.plans[key]
        return replies[min(turn, len(replies) - 1)]

    def complete(self, messages, temperature=None, **kw):
        with self.lock:
            self.calls += 1
        return Reply(
            text=self.reply_for(messages),
            usage=Usage(prompt_tokens=100, completion_tokens=20, cached_tokens=50),
            duration_s=0.01,
        )

    def close(self) -> None:
        self.closed = True


class FakeOpenAIServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 that follows a PlanModel."""

    def __init__(self, plans: dict[str, list[str]], delay_s: float = 0.0) -> None:
        self.model = PlanModel(plans)
        model = self.model
        # The plan keys of the requests being answered now (waiting out `delay_s`).
        self.in_flight: list[str | None] = []
        in_flight = self.in_flight

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = model.key_for(body["messages"])
                in_flight.append(key)
                try:
                    time.sleep(delay_s)
                finally:
                    in_flight.remove(key)
                reply = model.complete(body["messages"])
                if body.get("stream"):
                    usage = reply.usage
                    send_stream(
                        self,
                        body,
                        Scripted(
                            [reply.text],
                            prompt_tokens=usage.prompt_tokens,
                            completion_tokens=usage.completion_tokens,
                            cached_tokens=0,
                        ),
                    )
                    return
                data = json.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "fake"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": reply.usage.prompt_tokens,
                            "completion_tokens": reply.usage.completion_tokens,
                            "total_tokens": reply.usage.total_tokens,
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
