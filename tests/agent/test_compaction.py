"""Context compaction: near the window the older turns become the model's summary and the run
goes on (agent/compaction.py and the loop's use of it)."""

from __future__ import annotations

import json

import pytest
from conftest import ScriptedModel
from test_loop import RecordingSandbox

from pullsmith.agent.compaction import (
    SUMMARY_INTRO,
    SUMMARY_REQUEST,
    CompactionError,
    compact,
    dropped_commands,
)
from pullsmith.agent.loop import Agent, AgentLimits
from pullsmith.agent.protocol import protocol_for
from pullsmith.eval.harness import TaskRecord, _count_events
from pullsmith.eval.report import build_report, render_markdown
from pullsmith.events import EventLog, read_events
from pullsmith.models.base import Reply, Usage
from pullsmith.models.replay import ReplayModel, read_recording

BIG = "x" * 3000


class CountingModel(ScriptedModel):
    """A scripted model whose usage counts the prompt as a real one would (~3 chars a token)."""

    def complete(self, messages, temperature=None, tools=None, stop=None, seed=None, on_text=None):
        reply = super().complete(messages, temperature, tools, stop, seed)
        chars = sum(len(m.get("content") or "") for m in messages)
        reply.usage = Usage(prompt_tokens=chars // 3, completion_tokens=len(reply.text) // 3)
        return reply


class FailingSummaryModel(CountingModel):
    def complete(self, messages, temperature=None, tools=None, stop=None, seed=None, on_text=None):
        if messages[-1]["content"] == SUMMARY_REQUEST:
            raise RuntimeError("the server went away")
        return super().complete(messages, temperature, tools, stop, seed)


def long_run(tmp_path, replies, model_class=CountingModel, **limits):
    events = EventLog("t1", tmp_path / "events.jsonl")
    model = model_class(replies)
    sandbox = RecordingSandbox({f"cat part{n}": (0, BIG) for n in range(10)})
    settings = {"context_tokens": 2600, "reply_tokens": 400, "observation_chars": 10_000}
    agent = Agent(
        model,
        sandbox,
        events,
        limits=AgentLimits(**{**settings, **limits}),
        history_path=tmp_path / "history.json",
    )
    return agent, model, sandbox


def reads(n: int) -> list[str]:
    return [f"```bash\ncat part{i}\n```" for i in range(n)]


def test_a_run_that_fills_the_window_compacts_and_finishes(tmp_path):
    # Each part read is ~1,000 tokens: the window holds two; the third and the fourth each
    # bring a compaction.
    replies = [*reads(3), "I fixed the parser in a.py; the tests still fail.", *reads(4)[3:]]
    replies += ["Read four parts.", "```bash\nls\n```", "```bash\npwd\n```"]
    replies += ['```bash\nfinish "done"\n```']
    agent, model, sandbox = long_run(tmp_path, replies)
    outcome = agent.run("system prompt", "the task: make the tests pass")
    assert outcome.finished, outcome.exit_reason
    assert sandbox.commands == ["cat part0", "cat part1", "cat part2", "cat part3", "ls", "pwd"]

    events = read_events(tmp_path / "events.jsonl")
    compacted = [e for e in events if e.type == "context.compacted"]
    assert len(compacted) == 2
    data = compacted[0].data
    assert data["trigger"] == "auto" and data["dropped_turns"] >= 1 and data["kept_turns"] >= 1
    assert data["tokens_after"] < data["tokens_before"]
    assert data["summary"] == "I fixed the parser in a.py; the tests still fail."
    assert data["fallback"] == "" and data["window"] == 2600

    # The summary request: the conversation up to the dropped turns' end, then the request;
    # no stop sequence (the summary is prose), so the prompt prefix is the one already cached.
    asked = next(seen for seen in model.seen if seen[-1]["content"] == SUMMARY_REQUEST)
    index = model.seen.index(asked)
    assert asked[:-1] == model.seen[index - 1][: len(asked) - 1]
    assert model.stops[index] is None

    # After it: task and system verbatim, the summary, the note with the dropped commands, and
    # the last turns; append-only again from there on.
    after = model.seen[index + 1]
    assert after[0]["content"] == "system prompt"
    assert after[1]["content"] == "the task: make the tests pass"
    assert after[2] == {"role": "assistant", "content": SUMMARY_INTRO + data["summary"]}
    assert "`cat part0` → 0" in after[3]["content"]
    assert after[-1]["content"].startswith("exit code 0")
    last = max(i for i, seen in enumerate(model.seen) if seen[-1]["content"] == SUMMARY_REQUEST)
    between = model.seen[last + 1 :]
    assert len(between) == 3
    for earlier, later in zip(between, between[1:], strict=False):
        assert later[: len(earlier)] == earlier
    # The run's usage counts the summary request too.
    assert outcome.usage.prompt_tokens == sum(
        sum(len(m.get("content") or "") for m in seen) // 3 for seen in model.seen
    )
    assert outcome.compactions == 2
    # history.json is the conversation as compacted; transcript.json holds every reply in the
    # order the model gave them, so a replay of the run answers each call as it was answered.
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[2]["content"].startswith(SUMMARY_INTRO)
    recording = read_recording(tmp_path / "history.json")
    summaries = ["I fixed the parser in a.py; the tests still fail.", "Read four parts."]
    assert [r.text for r in recording.summaries] == summaries
    assert [r.text for r in recording.replies] == [r for r in replies if r not in summaries]


def test_a_compacted_run_replays_to_the_same_end(tmp_path):
    replies = [*reads(3), "Read three parts.", *reads(4)[3:], "Four.", '```bash\nfinish "ok"\n```']
    first = tmp_path / "first"
    first.mkdir()
    agent, _, _ = long_run(first, replies)
    assert agent.run("system", "task").finished
    again = tmp_path / "again"
    again.mkdir()
    replay = ReplayModel(str(first / "history.json"))
    events = EventLog("t2", again / "events.jsonl")
    sandbox = RecordingSandbox({f"cat part{n}": (0, BIG) for n in range(10)})
    agent = Agent(
        replay,
        sandbox,
        events,
        limits=AgentLimits(context_tokens=2600, reply_tokens=400, observation_chars=10_000),
    )
    outcome = agent.run("system", "task")
    assert outcome.finished and outcome.summary == "ok"
    assert sandbox.commands == ["cat part0", "cat part1", "cat part2", "cat part3"]


def test_a_failed_summary_request_falls_back_to_the_commands_that_ran(tmp_path):
    replies = [*reads(4), '```bash\nfinish "done"\n```']
    agent, _, _ = long_run(tmp_path, replies, model_class=FailingSummaryModel)
    assert agent.run("system", "task").finished
    data = next(
        e.data for e in read_events(tmp_path / "events.jsonl") if e.type == "context.compacted"
    )
    assert data["fallback"] == "the summary request failed (the server went away)"
    assert data["summary"].startswith("I ran: `cat part0` → 0")


def test_without_compaction_the_run_stops_at_the_window(tmp_path):
    agent, _, _ = long_run(tmp_path, reads(5), compact=False)
    outcome = agent.run("system", "task")
    assert outcome.exit_reason == "context window full (2600 tokens)"
    assert not any(e.type == "context.compacted" for e in read_events(tmp_path / "events.jsonl"))


def test_a_task_too_big_even_after_compaction_still_stops(tmp_path):
    # A first message that fills the window alone has no turn to drop: it stops at once.
    agent, model, _ = long_run(tmp_path, reads(3))
    assert agent.run("system", "t" * 7000).exit_reason == "context window full (2600 tokens)"
    assert model.seen == []
    # A last turn too big to fit even after the older ones went: one compaction, then it
    # stops (it does not compact again and again without a turn in between).
    agent, model, sandbox = long_run(tmp_path, ["```bash\nls\n```", "```bash\ncat huge\n```", "s"])
    sandbox.answers["cat huge"] = (0, "y" * 4500)
    outcome = agent.run("system", "t" * 2400)
    assert outcome.exit_reason == "context window full (2600 tokens)"
    assert sum(1 for seen in model.seen if seen[-1]["content"] == SUMMARY_REQUEST) == 1


def test_the_current_request_of_a_continued_conversation_is_kept():
    earlier = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first request"},
        {"role": "assistant", "content": "```bash\nls\n```"},
        {"role": "user", "content": "second request: rename foo"},
        {"role": "assistant", "content": "```bash\npytest\n```"},
        {"role": "user", "content": "exit code 1\n```\nboom\n```"},
        {"role": "assistant", "content": "```bash\ncat a.py\n```"},
        {"role": "user", "content": "exit code 0\n```\nprint()\n```"},
    ]
    model = ScriptedModel(["Renamed nothing yet; pytest fails with boom."])
    done = compact(model, earlier, protocol_for("text"), current=3, keep_turns=1)
    assert done.dropped_turns == 2 and done.kept_turns == 1 and done.at == 2
    roles = [m["role"] for m in done.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert (
        "The request you are working on now:\n\nsecond request: rename foo"
        in (done.messages[3]["content"])
    )
    assert "`ls` → ?" in done.messages[3]["content"]
    assert "`pytest` → 1" in done.messages[3]["content"]
    assert done.messages[4:] == earlier[6:]


def test_tool_calls_keep_their_answers_and_nothing_to_drop_is_an_error():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "shell", "arguments": '{"command": "make"}'},
    }
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "exit code 2\n```\nerr\n```"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "c2", "content": "exit code 0\n```\nok\n```"},
    ]
    model = ScriptedModel(["I ran make twice."])
    done = compact(model, messages, protocol_for("tools"), keep_turns=1)
    assert [m["role"] for m in done.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
    ]
    assert (
        done.messages[4]["tool_calls"][0]["id"] == "c2" and done.messages[5]["tool_call_id"] == "c2"
    )
    assert model.tools[0] is not None  # same tools as the conversation: the cached prefix holds
    assert dropped_commands(messages) == ["`make` → 2", "`make` → 0"]
    with pytest.raises(CompactionError):
        compact(model, messages[:2], protocol_for("tools"))


def test_the_eval_report_counts_compactions_and_the_latency_around_them(tmp_path):
    log = EventLog("t", tmp_path / "events.jsonl")
    log.emit("model.reply", turn=1, text="a", seconds=2.0)
    log.emit("model.reply", turn=2, text="b", seconds=3.0)
    log.emit(
        "context.compacted",
        turn=2,
        trigger="auto",
        dropped_turns=1,
        dropped_messages=2,
        kept_turns=1,
        tokens_before=7000,
        tokens_after=3000,
        summary="s",
        seconds=9.0,
    )
    log.emit("model.reply", turn=3, text="c", seconds=30.0)
    log.emit("limit.reached", turn=3, reason="context window full (8192 tokens)")
    log.close()
    record = TaskRecord(task_id="t", resolved=False)
    _count_events(record, tmp_path / "events.jsonl")
    assert record.context_full == 1
    assert record.compactions == [
        {
            "turn": 2,
            "dropped_turns": 1,
            "tokens_before": 7000,
            "tokens_after": 3000,
            "summary_s": 9.0,
            "before_s": 3.0,
            "after_s": 30.0,
        }
    ]
    report = build_report({"selection": ["t"], "suite": "s"}, [record])
    context = report["totals"]["context"]
    assert context["compactions"] == 1 and context["context_full"] == 1
    assert context["median_reply_seconds_before"] == 3.0
    assert context["median_reply_seconds_after"] == 30.0
    assert "## Context window" in render_markdown(report)


def test_reply_usage_of_a_plain_reply_is_kept():
    # A Reply object passed through compaction keeps its usage (counted in the run's).
    model = ScriptedModel(
        [Reply(text="sum", usage=Usage(prompt_tokens=50, completion_tokens=5, cached_tokens=40))]
    )
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "t"},
        {"role": "assistant", "content": "```bash\nls\n```"},
        {"role": "user", "content": "exit code 0\n```\n.\n```"},
    ]
    done = compact(model, messages, protocol_for("text"))
    assert done.usage.cached_tokens == 40 and done.kept_turns == 0


def test_the_summary_request_holds_only_the_dropped_turns_that_fit_the_window():
    messages = [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "task"}]
    for n in range(5):
        messages += [
            {"role": "assistant", "content": f"```bash\ncat part{n}\n```"},
            {"role": "user", "content": "exit code 0\n```\n" + "x" * 3000 + "\n```"},
        ]
    model = ScriptedModel(["Read parts 0 and 1."])
    # ~1,200 tokens a turn at 0.4 tokens a character: two of the three dropped turns fit.
    done = compact(model, messages, protocol_for("text"), window=3600, tokens_per_char=0.4)
    assert done.dropped_turns == 3 and done.fallback == ""
    shown = model.seen[0]
    assert shown[-1]["content"] == SUMMARY_REQUEST
    assert [m["content"] for m in shown if m["role"] == "assistant"] == [
        "```bash\ncat part0\n```",
        "```bash\ncat part1\n```",
    ]
    assert "`cat part2` → 0" in done.messages[3]["content"]  # dropped all the same
    # When not even one fits, no request is made and pullsmith writes the summary.
    model = ScriptedModel([])
    done = compact(model, messages, protocol_for("text"), window=1000, tokens_per_char=0.4)
    assert model.seen == [] and done.request == []
    assert done.fallback == "the turns to drop do not fit in the window for a summary request"
    assert done.summary.startswith("I ran: `cat part0` → 0")
