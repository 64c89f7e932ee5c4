"""The agent's approval hook and continued conversations, with a scripted model."""

from __future__ import annotations

from pathlib import Path

from conftest import ScriptedModel

from pullsmith.agent.loop import CONTINUED, Agent, Decision
from pullsmith.events import EventLog
from pullsmith.sandbox.base import CommandResult


class Box:
    def __init__(self, name: str, codes: dict[str, int] | None = None) -> None:
        self.name = name
        self.workspace = Path(".")
        self.codes = codes or {}
        self.commands: list[str] = []

    def run(self, command, timeout_s=None, stdin=None):
        self.commands.append(command)
        code = self.codes.get(command, 0)
        return CommandResult(command, code, f"{self.name} ran {command}", 0.01)

    def close(self):
        pass


def block(command: str) -> str:
    return f"```bash\n{command}\n```"


FINISH = '```bash\nfinish "done"\n```'


def agent(tmp_path, replies, approve, codes=None):
    inside, outside = Box("sandbox", codes), Box("outside")
    model = ScriptedModel(replies)
    a = Agent(
        model,
        inside,
        EventLog("t", tmp_path / "events.jsonl"),
        approve=approve,
        outside_sandbox=outside,
    )
    return a, model, inside, outside


def test_a_refused_command_does_not_run_and_the_model_is_told_why(tmp_path):
    asked = []

    def approve(command, failed):
        asked.append((command, failed))
        return Decision(run=False, reason="not on my machine") if "rm" in command else Decision()

    a, model, inside, outside = agent(tmp_path, [block("rm -rf src"), block("ls"), FINISH], approve)
    outcome = a.run("system", "task")
    assert outcome.finished
    assert inside.commands == ["ls"] and outside.commands == []
    told = model.seen[1][-1]["content"]
    assert "refused to run `rm -rf src`" in told and "not on my machine" in told
    assert [c for c, _ in asked] == ["rm -rf src", "ls"]


def test_an_approved_failure_runs_again_outside_the_sandbox(tmp_path):
    def approve(command, failed):
        if failed is not None:
            return Decision(outside_sandbox=True)
        return Decision()

    a, model, inside, outside = agent(
        tmp_path, [block("pip install x"), FINISH], approve, codes={"pip install x": 1}
    )
    assert a.run("system", "task").finished
    assert inside.commands == ["pip install x"] and outside.commands == ["pip install x"]
    assert "outside ran pip install x" in model.seen[1][-1]["content"]


def test_a_refused_rerun_tells_the_model_the_failure_and_the_reason(tmp_path):
    def approve(command, failed):
        return Decision(run=False, reason="no network for you") if failed else Decision()

    a, model, inside, outside = agent(
        tmp_path, [block("curl x"), FINISH], approve, codes={"curl x": 6}
    )
    assert a.run("system", "task").finished
    told = model.seen[1][-1]["content"]
    assert "exit code 6" in told and "no network for you" in told
    assert outside.commands == []


def test_a_continued_conversation_keeps_its_prefix_and_answers_open_tool_calls(tmp_path):
    history = [
        {"role": "system", "content": "the system prompt"},
        {"role": "user", "content": "first request"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "finish", "arguments": '{"summary": "x"}'},
                }
            ],
        },
    ]
    a, model, inside, _ = agent(tmp_path, [block("ls"), block("ls"), FINISH], None)
    # `ls` was said in no earlier run of this conversation, and twice here: only the second
    # one counts as a repeat.
    a.run("ignored system prompt", "Next request: more", history=history)
    first_call = model.seen[0]
    assert first_call[:3] == history
    assert first_call[3] == {"role": "tool", "tool_call_id": "c1", "content": CONTINUED}
    assert first_call[4] == {"role": "user", "content": "Next request: more"}
    assert all("ignored" not in str(m.get("content")) for m in first_call)
    assert inside.commands == ["ls"]  # the repeat was refused as a repeat


def test_an_earlier_request_s_command_is_not_a_repeat(tmp_path):
    history = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": block("python -m pytest -q")},
        {"role": "user", "content": "exit code 0"},
        {"role": "assistant", "content": FINISH},
    ]
    a, model, inside, _ = agent(tmp_path, [block("python -m pytest -q"), FINISH], None)
    assert a.run("s", "Next request: again", history=history).finished
    assert inside.commands == ["python -m pytest -q"]
    assert model.seen[0][-1] == {"role": "user", "content": "Next request: again"}
