from __future__ import annotations

import json
from pathlib import Path

from conftest import ScriptedModel

from pullsmith.agent.loop import Agent, AgentLimits, clip
from pullsmith.events import EventLog, read_events
from pullsmith.models.base import Reply
from pullsmith.sandbox.base import CommandResult


class RecordingSandbox:
    """Answers each command from a table; records what was asked."""

    name = "fake"

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.workspace = Path(".")
        self.answers = answers or {}
        self.commands: list[str] = []

    def run(self, command, timeout_s=None, stdin=None):
        self.commands.append(command)
        code, out = self.answers.get(command, (0, f"ran {command}"))
        return CommandResult(command=command, exit_code=code, output=out, duration_s=0.01)

    def close(self):
        pass


def make_agent(tmp_path, replies, answers=None, verify=None, **limits):
    events = EventLog("t1", tmp_path / "events.jsonl")
    model = ScriptedModel(replies)
    sandbox = RecordingSandbox(answers)
    agent = Agent(
        model,
        sandbox,
        events,
        limits=AgentLimits(**limits),
        verify=verify,
        history_path=tmp_path / "history.json",
    )
    return agent, model, sandbox, events


def test_runs_commands_until_finish(tmp_path):
    agent, model, sandbox, events = make_agent(
        tmp_path,
        ["Look.\n```bash\nls\n```", '```bash\nfinish "all good"\n```'],
        answers={"ls": (0, "a.py\nb.py")},
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "all good" and outcome.turns == 2
    assert sandbox.commands == ["ls"]
    # The second request saw the first reply and the observation appended after it.
    second = model.seen[1]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "exit code 0" in second[3]["content"] and "a.py" in second[3]["content"]
    types = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert types == [
        "model.reply",
        "command.started",
        "command.finished",
        "model.reply",
        "agent.finished",
    ]


def test_history_is_append_only_and_saved(tmp_path):
    agent, model, _, _ = make_agent(
        tmp_path, ["```bash\nls\n```", "```bash\npwd\n```", "```bash\nfinish done\n```"]
    )
    agent.run("system", "task")
    for earlier, later in zip(model.seen, model.seen[1:], strict=False):
        assert later[: len(earlier)] == earlier
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved == agent.messages
    assert saved[-1]["content"].endswith("finish done\n```")


def test_format_errors_are_corrected_then_limited(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        ["no block here", "```bash\nls\n```\n```bash\npwd\n```", "```bash\nfinish ok\n```"],
        format_errors=3,
    )
    outcome = agent.run("system", "task")
    assert outcome.finished
    assert sandbox.commands == ["ls"]
    assert "no ```bash block" in model.seen[1][-1]["content"]
    assert "2 ```bash blocks; I ran only the first" in model.seen[2][-1]["content"]

    agent, _, _, _ = make_agent(tmp_path, ["nothing"] * 5, format_errors=2)
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason == "too many malformed replies"
    assert outcome.turns == 3


def test_turn_limit_is_reported(tmp_path):
    agent, _, _, events = make_agent(tmp_path, ["```bash\nls\n```"] * 5, max_turns=3)
    outcome = agent.run("system", "task")
    assert not outcome.finished
    assert outcome.exit_reason == "turn limit reached (3 turns)"
    assert outcome.turns == 3
    assert read_events(tmp_path / "events.jsonl")[-1].type == "limit.reached"


def test_token_limit_is_reported(tmp_path):
    agent, _, _, _ = make_agent(tmp_path, ["```bash\nls\n```"] * 5, max_tokens=200)
    outcome = agent.run("system", "task")
    assert outcome.exit_reason == "token limit reached (200 tokens)"
    assert outcome.turns == 2  # each scripted reply costs 110 tokens


def test_time_limit_is_reported(tmp_path):
    agent, _, _, _ = make_agent(tmp_path, ["```bash\nls\n```"] * 5, max_time_s=0)
    outcome = agent.run("system", "task")
    assert outcome.exit_reason.startswith("time limit reached")


def test_context_window_limit(tmp_path):
    agent, _, _, _ = make_agent(
        tmp_path,
        ["```bash\nbig\n```"] * 5,
        answers={"big": (0, "x" * 3000)},
        context_tokens=1500,
        reply_tokens=500,
        compact=False,
        observation_chars=10_000,
    )
    outcome = agent.run("system", "task")
    assert outcome.exit_reason == "context window full (1500 tokens)"


def test_finish_rejected_while_tests_fail_then_accepted(tmp_path):
    verdicts = ["tests still fail: test_x", None]
    agent, model, _, events = make_agent(
        tmp_path,
        ["```bash\nfinish first\n```", "```bash\nfix\n```", "```bash\nfinish second\n```"],
        verify=lambda: verdicts.pop(0),
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "second"
    assert "tests still fail: test_x" in model.seen[1][-1]["content"]
    assert "finish.rejected" in [e.type for e in read_events(tmp_path / "events.jsonl")]


def test_finish_accepted_after_retries_run_out(tmp_path):
    agent, _, _, _ = make_agent(
        tmp_path,
        ["```bash\nfinish a\n```", "```bash\nfinish b\n```"],
        verify=lambda: "still failing",
        finish_retries=1,
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "b"


def test_failed_command_before_finish_keeps_going(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        ["```bash\nbad\nfinish oops\n```", "```bash\nfinish ok\n```"],
        answers={"bad": (2, "boom")},
    )
    outcome = agent.run("system", "task")
    assert outcome.summary == "ok"
    assert "not finished yet" in model.seen[1][-1]["content"]


def test_text_replies_stop_after_their_block_and_get_the_fence_back(tmp_path):
    # A server honouring the stop sequence leaves it, and what would follow, out of the text.
    cut = Reply(text="Look.\n```bash\nls", finish_reason="stop")
    agent, model, sandbox, _ = make_agent(tmp_path, [cut, '```bash\nfinish "ok"\n```'])
    outcome = agent.run("system", "task")
    assert outcome.finished and sandbox.commands == ["ls"]
    assert model.stops[0] == ["\n```\n"]
    assert model.seen[1][2] == {"role": "assistant", "content": "Look.\n```bash\nls\n```"}


def test_a_reply_cut_by_the_token_limit_is_not_mended(tmp_path):
    cut = Reply(text="```bash\ncat > a.py <<'EOF'\nx = (", finish_reason="length")
    agent, _, sandbox, _ = make_agent(tmp_path, [cut, '```bash\nfinish "ok"\n```'])
    outcome = agent.run("system", "task")
    assert outcome.finished and sandbox.commands == [] and agent.format_errors == 1


def test_long_observations_are_clipped_with_head_and_tail():
    text = "HEAD" + "x" * 10_000 + "TAIL"
    clipped = clip(text, 1000)
    assert clipped.startswith("HEAD") and clipped.endswith("TAIL")
    assert "characters cut" in clipped and len(clipped) < 1100


def test_repeats_raise_the_temperature_until_the_model_changes_course(tmp_path):
    agent, model, sandbox, _ = make_agent(
        tmp_path,
        ["```bash\nls\n```"] * 3 + ["```bash\npwd\n```", "```bash\nfinish ok\n```"],
        format_errors=5,
    )
    outcome = agent.run("system", "task")
    assert outcome.finished
    assert sandbox.commands == ["ls", "pwd"]
    assert model.temperatures == [None, None, 0.7, 0.9, None]


def test_with_stuck_repeats_the_first_exact_repeat_ends_the_run(tmp_path):
    agent, model, sandbox, events = make_agent(
        tmp_path, ["```bash\nls\n```"] * 2 + ["never asked for"], stuck_repeats=1
    )
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason.startswith("stuck")
    assert sandbox.commands == ["ls"] and outcome.turns == 2
    assert model.replies == ["never asked for"]
    events.close()
    assert any(e.type == "limit.reached" for e in read_events(tmp_path / "events.jsonl"))


def test_a_finish_refused_earlier_is_accepted_when_repeated_after_a_fix(tmp_path):
    verdicts = ["tests still fail", None]
    agent, _, sandbox, _ = make_agent(
        tmp_path,
        ["```bash\nfinish done\n```", "```bash\nfix\n```", "```bash\nfinish done\n```"],
        verify=lambda: verdicts.pop(0),
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "done" and outcome.turns == 3
    assert sandbox.commands == ["fix"]
