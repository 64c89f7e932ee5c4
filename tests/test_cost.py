"""Cost accounting: the price table, the arithmetic on recorded usages, where costs show, and
--max-cost ending a run (one attempt, and across best-of-N attempts)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import ScriptedModel, bwrap_works
from rich.console import Console

from pullsmith.cli import TerminalView, main_group
from pullsmith.config import PriceSetting, load_settings
from pullsmith.engine import finished_event, run_task
from pullsmith.errors import UserError
from pullsmith.eval.harness import TaskRecord
from pullsmith.eval.report import build_report, render_markdown
from pullsmith.events import Event, TaskStarted
from pullsmith.models.base import Usage
from pullsmith.models.prices import (
    Price,
    find_price,
    parse_table,
    pricing_for,
    shipped_table,
)
from pullsmith.pr.describe import PullRequestFacts, describe
from pullsmith.store import AttemptRecord
from pullsmith.task import AttemptResult, Task

SANDBOX = "bwrap" if bwrap_works() else "none"
SONNET = Price(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)

# --- the arithmetic ----------------------------------------------------------------------


def test_cached_prompt_tokens_cost_less_than_uncached_ones():
    # 10,000 prompt tokens: 8,000 read from the cache, 1,000 written to it, 1,000 plain.
    cached = Usage(
        prompt_tokens=10_000, completion_tokens=500, cached_tokens=8_000, cache_write_tokens=1_000
    )
    plain = Usage(prompt_tokens=10_000, completion_tokens=500)
    # 1,000 x $3 + 8,000 x $0.30 + 1,000 x $3.75 + 500 x $15, per million.
    assert SONNET.cost(cached) == pytest.approx(0.01665)
    # 10,000 x $3 + 500 x $15, per million.
    assert SONNET.cost(plain) == pytest.approx(0.0375)


def test_without_cache_prices_cached_tokens_cost_the_input_price():
    price = Price(input=2.0, output=8.0)
    usage = Usage(prompt_tokens=1_000_000, cached_tokens=600_000, cache_write_tokens=100_000)
    assert price.cost(usage) == pytest.approx(2.0)
    openai = Price(input=2.0, output=8.0, cached_input=0.5)
    # 400,000 x $2 + 600,000 x $0.50 (no cache writes on OpenAI).
    assert openai.cost(Usage(prompt_tokens=1_000_000, cached_tokens=600_000)) == pytest.approx(1.1)


def test_recorded_usages_sum_to_the_same_cost_as_their_total():
    turns = [
        Usage(prompt_tokens=2_000, completion_tokens=50, cache_write_tokens=1_900),
        Usage(
            prompt_tokens=2_300, completion_tokens=40, cached_tokens=1_900, cache_write_tokens=350
        ),
        Usage(
            prompt_tokens=2_700, completion_tokens=60, cached_tokens=2_250, cache_write_tokens=400
        ),
    ]
    total = Usage()
    for usage in turns:
        total.add(usage)
    assert total == Usage(7_000, 150, 4_150, 2_650)
    assert SONNET.cost(total) == pytest.approx(sum(SONNET.cost(u) for u in turns))


# --- the table and the config --------------------------------------------------------------


def test_the_shipped_table_is_dated_and_prices_common_models():
    table = shipped_table()
    assert table.date[:2] == "20" and len(table.date) == 10
    assert find_price("claude-sonnet-4-5-20250929")[0] == SONNET
    assert find_price("claude-haiku-4-5")[0].output == 5.0
    # A router's prefix is looked through; the more specific row wins.
    assert find_price("openai/gpt-4.1-mini")[0].input == 0.40
    assert find_price("gpt-4.1")[0].input == 2.0
    assert find_price("my-own-finetune") is None


def test_a_config_price_wins_and_a_bad_one_is_one_sentence(tmp_path):
    (tmp_path / "pullsmith.toml").write_text(
        'model = "claude-sonnet-4-5"\n'
        '[prices."claude-*"]\ninput = 1.5\noutput = 7.5\ncached_input = 0.15\n',
        encoding="utf-8",
    )
    settings = load_settings({}, cwd=tmp_path)
    assert settings.prices == (PriceSetting("claude-*", 1.5, 7.5, cached_input=0.15),)
    pricing = pricing_for(settings)
    assert pricing.price == Price(1.5, 7.5, 0.15, None)
    assert pricing.source == "the config (claude-*)"
    # cache writes default to the input price.
    assert pricing.describe()["cache_write"] == 1.5

    (tmp_path / "pullsmith.toml").write_text('[prices."x"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(UserError) as info:
        load_settings({}, cwd=tmp_path)
    assert "'input' of [prices.\"x\"]" in info.value.message and "\n" not in info.value.message
    (tmp_path / "pullsmith.toml").write_text('[prices."x"]\ninput = 1\n')
    with pytest.raises(UserError, match="needs output = USD per million tokens"):
        load_settings({}, cwd=tmp_path)


def test_the_local_model_costs_zero_and_an_unknown_one_is_unknown(tmp_path):
    local = pricing_for(load_settings({}, cwd=tmp_path))
    assert local.cost(Usage(5_000, 500)) == 0.0 and local.source == "the bundled local model"
    unknown = pricing_for(
        load_settings({"model": "my-finetune", "base_url": "http://127.0.0.1:9/v1"}, cwd=tmp_path)
    )
    assert not unknown.known
    assert unknown.cost(Usage(5_000, 500)) is None and unknown.describe() is None
    replay = pricing_for(load_settings({"model": "replay:some-run"}, cwd=tmp_path))
    assert replay.cost(Usage(5_000, 500)) == 0.0


def test_a_table_row_missing_a_price_is_refused():
    with pytest.raises(ValueError, match="bad price row"):
        parse_table('date = "2025-01-01"\n[models."m"]\ninput = 1\n')


# --- where costs show ----------------------------------------------------------------------


def test_a_result_totals_every_attempts_cost_and_unknown_stays_unknown():
    result = AttemptResult(
        task_id="t", status="passed", exit_reason="finished", instruction="x", repo="/r"
    )
    result.usage = Usage(1_000, 100, 500, 200)
    result.cost_usd = 0.0042
    assert result.totals()["cost_usd"] == 0.0042
    assert result.totals()["cache_write_tokens"] == 200
    again = AttemptResult.from_dict(result.to_dict())
    assert again.cost_usd == 0.0042 and again.usage.cache_write_tokens == 200
    result.attempts = [{"cost_usd": 0.001, "turns": 2}, {"cost_usd": 0.002, "turns": 3}]
    assert result.totals()["cost_usd"] == pytest.approx(0.003)
    result.attempts = [{"cost_usd": 0.001}, {"cost_usd": None}]
    assert result.totals()["cost_usd"] is None
    # A result.json written before costs were kept has none: unknown, not zero.
    assert AttemptResult.from_dict({**result.to_dict(), "attempts": []}).cost_usd == 0.0042
    old = {k: v for k, v in result.to_dict().items() if k not in ("cost_usd", "attempts")}
    assert AttemptResult.from_dict(old).totals()["cost_usd"] is None


def test_the_eval_report_sums_costs_and_says_unknown_when_one_is():
    rows = [
        TaskRecord(task_id="a", resolved=True, cost_usd=0.012, prompt_tokens=9, turns=1),
        TaskRecord(task_id="b", resolved=False, cost_usd=0.004, prompt_tokens=9, turns=1),
    ]
    report = build_report({"selection": ["a", "b"]}, rows)
    assert report["totals"]["sum_cost_usd"] == pytest.approx(0.016)
    assert report["totals"]["per_task"]["median_cost_usd"] == pytest.approx(0.008)
    text = render_markdown(report)
    assert "cost $0.0160." in text and "| $0.0120 |" in text
    rows.append(TaskRecord(task_id="c", resolved=False, cost_usd=None))
    report = build_report({"selection": ["a", "b", "c"]}, rows)
    assert report["totals"]["sum_cost_usd"] is None
    assert "cost unknown." in render_markdown(report)


def pr_attempt(**fields) -> AttemptRecord:
    values = {
        "run_id": "r1",
        "task_id": "t1",
        "kind": "task",
        "instruction": "fix the export",
        "status": "passed",
        "exit_reason": "finished",
        "summary": "fixed",
        "branch": "pullsmith/t1",
        "start_commit": "b" * 40,
        "commit": "c" * 40,
        "test_command": None,
        "checks": [],
        "agent_tests": [],
        "turns": 2,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "model": "claude-sonnet-4-5",
        "run_dir": "/runs/r1",
        **fields,
    }
    return AttemptRecord(**values)


def pr_facts(*attempts: AttemptRecord) -> PullRequestFacts:
    return PullRequestFacts(
        instruction="fix the export",
        head="pullsmith/t1",
        base="main",
        base_commit="b" * 40,
        head_commit="c" * 40,
        attempts=list(attempts),
        task_id="t1",
    )


def test_the_pr_description_states_the_cost_of_its_runs():
    first = pr_attempt(notes={"cost_usd": 0.0125})
    follow = pr_attempt(run_id="r2", kind="follow-up", notes={"cost_usd": 0.0031})
    footer = describe(pr_facts(first, follow)).body.splitlines()[-1]
    assert "cost $0.0156" in footer
    older = pr_attempt(run_id="r3", notes={})  # recorded before costs were kept
    assert "cost unknown" in describe(pr_facts(first, older)).body.splitlines()[-1]


def summary_line(price: dict | None, cost: float | None) -> str:
    """The usage line of `exec`'s summary after a run at `price` that cost `cost`."""
    console = Console(record=True, width=300)
    view = TerminalView(console)
    started = TaskStarted(
        instruction="x",
        repo="/r",
        base="HEAD",
        model="m",
        protocol="text",
        edit_forms=[],
        sandbox="none",
        price=price,
    )
    view(Event(1, "task.started", "t", 0.0, started.model_dump()))
    result = AttemptResult(
        task_id="t", status="passed", exit_reason="finished", instruction="x", repo="/r"
    )
    result.usage, result.cost_usd = Usage(1_000, 100, 800, 150), cost
    view(Event(2, "task.finished", "t", 0.0, finished_event(result).model_dump()))
    return next(line for line in console.export_text().splitlines() if " turns · " in line)


def test_exec_summary_shows_the_cost_says_why_zero_and_never_guesses(tmp_path):
    local = pricing_for(load_settings({}, cwd=tmp_path)).describe()
    assert summary_line(local, 0.0).endswith(
        "(800 cached, 150 written to the cache) · cost $0 (the bundled local model)"
    )
    claude = pricing_for(load_settings({"model": "claude-sonnet-4-5"}, cwd=tmp_path)).describe()
    assert summary_line(claude, 0.0123).endswith(" · cost $0.01")
    assert summary_line(claude, 0.0042).endswith(" · cost $0.0042")
    assert summary_line(None, None).endswith(" · cost unknown (no price for this model)")


# --- --max-cost ------------------------------------------------------------------------------

# A priced name (claude-sonnet-4-5: $3 in, $15 out per million tokens) on a scripted model:
# each ScriptedModel reply is 100 prompt + 10 completion tokens = $0.00045.
TURN_COST = 0.00045


def shell(command: str, n: int) -> dict:
    return {
        "tool_calls": [
            {"id": f"toolu_{n}", "name": "shell", "arguments": f'{{"command": "{command}"}}'}
        ]
    }


def finish(n: int) -> dict:
    return {
        "tool_calls": [
            {"id": f"toolu_{n}", "name": "finish", "arguments": '{"summary": "fixed the export"}'}
        ]
    }


FIX = (
    "python3 -c \\\"import pathlib; p = pathlib.Path('inventory/export.py'); "
    "p.write_text(p.read_text().replace('range(len(rows) - 1)', 'range(len(rows))'))\\\""
)


def priced_settings(tmp_path, **extra):
    return load_settings(
        {
            "model": "claude-sonnet-4-5",
            "sandbox": SANDBOX,
            "data_dir": str(tmp_path / "data"),
            **extra,
        },
        cwd=tmp_path,
    )


def test_max_cost_ends_a_run_cleanly_before_the_call_that_would_go_over(example_repo, tmp_path):
    events: list[Event] = []
    model = ScriptedModel([shell("ls", n) for n in range(10)])
    result = run_task(
        Task(instruction="Fix the CSV export.", repo=str(example_repo)),
        priced_settings(tmp_path, max_cost=0.001),
        model,
        [events.append],
    )
    # $0.00045 after one turn, $0.0009 after two (under $0.001), $0.00135 after three.
    assert result.turns == 3 and len(model.replies) == 7
    assert result.exit_reason == "cost limit reached ($0.0014 spent of the $0.001 budget)"
    assert result.status == "failed" and result.error is None  # the tests ran after it
    assert result.cost_usd == pytest.approx(3 * TURN_COST)
    kinds = [e.type for e in events]
    assert kinds.count("model.reply") == 3 and "limit.reached" in kinds
    costs = [e.data["cost_usd"] for e in events if e.type == "model.reply"]
    assert costs == [pytest.approx(TURN_COST)] * 3
    started = next(e.data for e in events if e.type == "task.started")
    assert started["max_cost"] == 0.001 and started["price"]["output"] == 15.0
    finished = next(e.data for e in events if e.type == "task.finished")
    assert finished["cost_usd"] == pytest.approx(3 * TURN_COST)


def test_best_of_n_counts_every_attempt_against_the_budget(example_repo, tmp_path):
    events: list[Event] = []
    # Attempt 1 fixes and finishes in two turns ($0.0009); attempt 2 starts with that spent,
    # makes one call ($0.00135 in all) and stops; attempt 3 is never started.
    model = ScriptedModel([shell(FIX, 1), finish(2), shell("ls", 3), shell("ls", 4)])
    result = run_task(
        Task(instruction="Fix the CSV export.", repo=str(example_repo), attempts=3),
        priced_settings(tmp_path, max_cost=0.001),
        model,
        [events.append],
    )
    assert len(model.replies) == 1
    assert [a["attempt"] for a in result.attempts] == [1, 2]
    assert result.attempts[0]["cost_usd"] == pytest.approx(2 * TURN_COST)
    assert result.attempts[1]["cost_usd"] == pytest.approx(TURN_COST)
    assert result.attempts[1]["exit_reason"].startswith("cost limit reached ($0.0014 spent")
    assert result.attempt == 1 and result.status == "passed"
    warnings = [e.data["message"] for e in events if e.type == "warning"]
    assert warnings == [
        "the cost limit ($0.001) was reached after 2 of 3 attempts ($0.0014); the others were "
        "not started."
    ]
    finished = next(e.data for e in events if e.type == "task.finished")
    assert finished["cost_usd"] == pytest.approx(3 * TURN_COST)


def test_max_cost_for_a_model_without_a_price_is_refused_in_one_sentence(example_repo, tmp_path):
    settings = load_settings(
        {
            "model": "my-finetune",
            "base_url": "http://127.0.0.1:9/v1",
            "max_cost": 1,
            "sandbox": SANDBOX,
            "data_dir": str(tmp_path / "data"),
        },
        cwd=tmp_path,
    )
    model = ScriptedModel([])
    result = run_task(Task(instruction="Fix it.", repo=str(example_repo)), settings, model)
    assert result.status == "error" and model.seen == []
    assert result.error == (
        "--max-cost needs the price of model 'my-finetune', which pullsmith does not know; add "
        '[prices."my-finetune"] with input and output (USD per million tokens) to '
        "pullsmith.toml, or drop --max-cost."
    )


def test_max_cost_must_be_a_positive_number():
    result = CliRunner().invoke(main_group, ["exec", "--max-cost", "0", "fix it"])
    assert result.exit_code == 2 and "--max-cost" in result.output
    with pytest.raises(UserError, match="must be a positive number of US dollars"):
        load_settings({"max_cost": "-1"})
