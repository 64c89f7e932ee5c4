"""The interactive session as a person uses it: a real `pullsmith session` in tmux, a replayed
model, typing requests, approving and refusing commands, /diff, /undo, /apply, quitting,
`pullsmith resume --last`, Ctrl-C on a running command, and `exec --resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import git
from session_helpers import (
    FIX,
    FIXED_EXPORT,
    PULLSMITH,
    TmuxSession,
    make_repo,
    session_env,
    tmux_works,
    write_recording,
)

from pullsmith.cli import main

pytestmark = pytest.mark.skipif(
    not tmux_works(), reason="tmux is not installed (make test installs it)"
)

FINISH = '```bash\nfinish "to_csv writes every row"\n```'


def session_record(data_home: Path) -> dict:
    (path,) = (data_home / "pullsmith" / "sessions").glob("*/session.json")
    return json.loads(path.read_text())


def history_of(data_home: Path, run_id: str) -> list[dict]:
    return json.loads((data_home / "pullsmith" / "runs" / run_id / "history.json").read_text())


def test_a_session_at_the_terminal(tmp_path):
    repo = make_repo(tmp_path / "inventory")
    data = tmp_path / "data"
    env = session_env(data)
    first = write_recording(
        tmp_path / "rec1",
        [
            "Let me look.\n```bash\ncat inventory/export.py\n```",
            FIX,
            "```bash\necho hi > notes.txt\n```",
            FINISH,
            "```bash\necho '# more' >> README.md\n```",
            '```bash\nfinish "added a line"\n```',
        ],
    )
    term = TmuxSession(
        [PULLSMITH, "session", "--approval", "untrusted", "--model", f"replay:{first}"], repo, env
    )
    try:
        term.expect("approval untrusted")
        term.expect("›")
        term.type("The CSV export drops the last row; fix it.")
        # cat is read-only: it runs unasked; the rewrite is asked about.
        seen = term.expect("approve [1/2/3]:")
        assert "$ cat inventory/export.py" in seen
        assert "cat > inventory/export.py" in seen
        term.type("1")
        seen = term.expect("approve [1/2/3]:")
        assert "+    for row in rows:" in seen  # the edit, as a diff
        assert "echo hi > notes.txt" in seen
        term.type("3")
        term.expect("reason (told to the model):")
        term.type("no notes files please")
        seen = term.expect("passed · checkpoint")
        assert "done: to_csv writes every row" in seen
        term.expect("›")

        term.type("/frobnicate")
        term.expect("there is no command /frobnicate; /help lists the commands.")
        term.expect("›")
        term.type("/diff")
        seen = term.expect("+    for row in rows:")
        assert "-    for i in range(len(rows) - 1):" in seen
        term.expect("›")

        term.type("add a line to the README")
        seen = term.expect("approve [1/2/3]:")
        assert "echo '# more' >> README.md" in seen
        term.type("2")
        term.expect("passed · checkpoint")
        record = session_record(data)
        worktree = Path(record["worktree"])
        assert (worktree / "README.md").read_text().endswith("# more\n")
        assert len(record["turns"]) == 2

        term.type("/undo")
        term.expect("undone: 'add a line to the README'")
        assert not (worktree / "README.md").read_text().endswith("# more\n")
        assert (worktree / "inventory" / "export.py").read_text() == FIXED_EXPORT
        assert not (worktree / "notes.txt").exists()  # refused, never ran

        term.type("/apply")
        term.expect("as uncommitted edits")
        # The user's tree has the change, uncommitted; their branch did not move.
        assert (repo / "inventory" / "export.py").read_text() == FIXED_EXPORT
        assert git("status", "--porcelain", cwd=repo).strip() == "M inventory/export.py"
        assert git("log", "--format=%s", cwd=repo).strip() == "initial"
        term.expect("›")
        term.keys("C-d")
        term.expect("session saved: `pullsmith resume")
        term.expect("EXITED 0")
    finally:
        term.close()

    record = session_record(data)
    assert [t["request"] for t in record["turns"]] == ["The CSV export drops the last row; fix it."]
    (turn,) = record["turns"]
    told = [m["content"] for m in history_of(data, turn["run_id"]) if m["role"] == "user"]
    assert any("refused to run `echo hi > notes.txt` (no notes files please)" in t for t in told)
    branch_log = git("log", "--format=%s", f"main..{record['branch']}", cwd=repo).splitlines()
    assert branch_log == ["to_csv writes every row"]

    # Later: resume the last session, interrupt a running command, go on.
    second = write_recording(
        tmp_path / "rec2",
        ["```bash\nsleep 60\n```", '```bash\nfinish "nothing more to do"\n```'],
    )
    term = TmuxSession(
        [PULLSMITH, "resume", "--last", "--approval", "never", "--model", f"replay:{second}"],
        repo,
        env,
    )
    try:
        term.expect("1 turns so far")
        term.expect("›")
        term.type("check that the tests pass")
        term.expect("$ sleep 60")
        term.keys("C-c")
        term.expect("interrupting the turn")
        term.expect("cancelled · checkpoint")
        term.expect("›")
        term.type("go on")
        term.expect("done: nothing more to do")
        term.expect("›")
        term.type("/quit")
        term.expect("EXITED 0")
    finally:
        term.close()

    record = session_record(data)
    assert [t["status"] for t in record["turns"]] == ["passed", "cancelled", "passed"]
    last = history_of(data, record["turns"][-1]["run_id"])
    # The model's conversation went on from the first turn: its system prompt and requests.
    first_turn = history_of(data, record["turns"][0]["run_id"])
    assert last[: len(first_turn)] == first_turn
    users = [m["content"] for m in last if m["role"] == "user"]
    assert any(u.startswith("Next request: check that the tests pass") for u in users)
    assert any("interrupted by the user (Ctrl-C)" in u for u in users)

    # Headless: exec --resume continues the same session and branch.
    third = write_recording(tmp_path / "rec3", ['```bash\nfinish "still fine"\n```'])
    code = run_cli(
        ["exec", "--resume", record["id"], "--model", f"replay:{third}", "one more"], repo, env
    )
    assert code == 0
    record = session_record(data)
    assert record["turns"][-1]["request"] == "one more"
    assert history_of(data, record["turns"][-1]["run_id"])[0] == first_turn[0]


def run_cli(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """`pullsmith ARGV` in this process (as main() runs it); its exit code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for key in ("XDG_DATA_HOME", "PULLSMITH_SANDBOX"):
            mp.setenv(key, env[key])
        try:
            main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


def test_user_errors_are_one_sentence(tmp_path, capsys):
    env = session_env(tmp_path / "data")
    plain = tmp_path / "plain"
    plain.mkdir()
    repo = make_repo(tmp_path / "inventory")
    for argv, where, words in (
        (["session"], plain, "is not in a git repository; run pullsmith inside one"),
        (["resume", "--last"], plain, "is not in a git repository"),
        (["resume", "--last"], repo, "has no sessions to resume; `pullsmith` starts one."),
        (["resume", "nope"], repo, "there is no session 'nope'"),
        (["exec", "--resume", "nope", "x"], repo, "there is no session 'nope'"),
    ):
        assert run_cli(argv, where, env) != 0
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
