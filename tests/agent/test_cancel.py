"""Cancelling a run: before a turn, during a command, or when the sandbox says it cancelled."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from conftest import ScriptedModel
from test_loop import RecordingSandbox

from pullsmith.agent.loop import Agent, AgentLimits
from pullsmith.events import EventLog, read_events
from pullsmith.sandbox.base import CommandResult


@dataclass(frozen=True)
class CancelledResult(CommandResult):
    """A result as a sandbox with a cancel event returns it (whether or not the real one has
    the attribute yet)."""

    cancelled: bool = True


class CancellingSandbox(RecordingSandbox):
    """Runs commands as RecordingSandbox does; `trigger` sets the event or marks the result."""

    def __init__(self, cancel: threading.Event, trigger: str, how: str = "event") -> None:
        super().__init__({trigger: (130, "killed")})
        self.cancel, self.trigger, self.how = cancel, trigger, how

    def run(self, command, timeout_s=None, stdin=None):
        result = super().run(command, timeout_s, stdin)
        if command != self.trigger:
            return result
        if self.how == "event":
            self.cancel.set()
            return result
        return CancelledResult(command, result.exit_code, result.output, result.duration_s)


def make_agent(tmp_path, replies, sandbox, cancel, verify=None, after_command=None, **limits):
    events = EventLog("t1", tmp_path / "events.jsonl")
    model = ScriptedModel(replies)
    agent = Agent(
        model,
        sandbox,
        events,
        limits=AgentLimits(**limits),
        verify=verify,
        history_path=tmp_path / "history.json",
        after_command=after_command,
        cancel=cancel,
    )
    return agent, model, events


def event_types(tmp_path) -> list[str]:
    return [e.type for e in read_events(tmp_path / "events.jsonl")]


def test_cancelled_before_the_run_asks_the_model_nothing(tmp_path):
    cancel = threading.Event()
    cancel.set()
    agent, model, events = make_agent(tmp_path, ["```bash\nls\n```"], RecordingSandbox(), cancel)
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason == "cancelled" and outcome.turns == 0
    assert model.seen == [] and model.replies == ["```bash\nls\n```"]
    events.close()
    (event,) = read_events(tmp_path / "events.jsonl")
    assert event.type == "limit.reached" and event.data["reason"] == "cancelled"
    assert event.data["turn"] == 0


def test_an_unset_event_changes_nothing(tmp_path):
    agent, model, _ = make_agent(
        tmp_path,
        ["```bash\nls\n```", "```bash\nfinish ok\n```"],
        RecordingSandbox(),
        threading.Event(),
    )
    assert agent.run("system", "task").finished


def test_cancelled_during_a_command_ends_the_run_after_it(tmp_path):
    cancel = threading.Event()
    sandbox = CancellingSandbox(cancel, "make test")
    hooked = []
    agent, model, events = make_agent(
        tmp_path,
        ["```bash\nls\n```", "```bash\nmake test\n```", "never asked for"],
        sandbox,
        cancel,
        after_command=lambda command, result: hooked.append(command),
    )
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason == "cancelled" and outcome.turns == 2
    assert sandbox.commands == ["ls", "make test"]
    assert model.replies == ["never asked for"]
    # The hook ran after the first command only: a cancelled command is not looked at.
    assert hooked == ["ls"]
    events.close()
    logged = read_events(tmp_path / "events.jsonl")
    assert [e.type for e in logged][-3:] == ["command.started", "command.finished", "limit.reached"]
    assert logged[-2].data["exit_code"] == 130
    assert logged[-1].data == {"turn": 2, "reason": "cancelled"}


def test_a_result_that_says_cancelled_ends_the_run(tmp_path):
    cancel = threading.Event()
    sandbox = CancellingSandbox(cancel, "pytest", how="result")
    agent, model, events = make_agent(
        tmp_path, ["```bash\npytest\n```", "never asked for"], sandbox, cancel
    )
    outcome = agent.run("system", "task")
    assert outcome.exit_reason == "cancelled" and not cancel.is_set()
    assert model.replies == ["never asked for"]
    events.close()
    logged = read_events(tmp_path / "events.jsonl")
    assert [e.type for e in logged] == [
        "model.reply",
        "command.started",
        "command.finished",
        "limit.reached",
    ]
    assert logged[2].data["cancelled"] is True
    assert logged[3].data["reason"] == "cancelled"


def test_a_finish_whose_command_was_cancelled_is_not_verified(tmp_path):
    cancel = threading.Event()
    verified = []
    agent, _, events = make_agent(
        tmp_path,
        ["```bash\nmake\nfinish done\n```"],
        CancellingSandbox(cancel, "make"),
        cancel,
        verify=lambda: verified.append(1),
    )
    outcome = agent.run("system", "task")
    assert not outcome.finished and outcome.exit_reason == "cancelled" and verified == []
    events.close()
    assert "agent.finished" not in event_types(tmp_path)


def test_cancel_set_from_another_thread_while_the_model_writes(tmp_path):
    cancel = threading.Event()

    class SlowModel(ScriptedModel):
        def complete(self, messages, **kw):
            if len(self.seen) == 1:  # the second request: cancelled while it is answered
                setter = threading.Thread(target=cancel.set)
                setter.start()
                setter.join()
            return super().complete(messages, **kw)

    events = EventLog("t1", tmp_path / "events.jsonl")
    model = SlowModel(["```bash\nls\n```", "```bash\npwd\n```", "never asked for"])
    sandbox = RecordingSandbox()
    outcome = Agent(model, sandbox, events, cancel=cancel).run("system", "task")
    # The reply being written when the event was set ends there (replies always stream);
    # its command never runs.
    assert outcome.exit_reason == "cancelled" and outcome.turns == 1
    assert sandbox.commands == ["ls"] and model.replies == ["never asked for"]
