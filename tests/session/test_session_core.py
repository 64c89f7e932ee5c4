"""The session's work without a terminal: a request through the engine, /pr and /test."""

from __future__ import annotations

import pytest
from session_helpers import FIX, SANDBOX, make_repo, write_recording

from pullsmith.config import load_settings
from pullsmith.errors import UserError
from pullsmith.session.core import Session
from pullsmith.store import Store


def test_a_turn_then_a_pull_request_with_its_evidence(tmp_path):
    repo = make_repo(tmp_path / "inventory")
    rec = write_recording(tmp_path / "rec", [FIX, '```bash\nfinish "to_csv writes every row"\n```'])
    settings = load_settings({"model": f"replay:{rec}", "sandbox": SANDBOX}, cwd=tmp_path)
    session = Session.start(settings, repo)
    try:
        with pytest.raises(UserError, match="changed nothing yet"):
            session.open_pr()
        handle = session.submit("The CSV export drops the last row; fix it.")
        turn = session.finish_turn(handle.task, handle.result(timeout=300))
        assert turn.status == "passed" and turn.end != turn.start
        result = session.run_tests(session.test_command())
        assert result.exit_code == 0
        number = session.open_pr()
        with Store.open(settings) as store:
            pr = store.pull_request(number)
            attempts = store.attempts(number)
        assert pr.head == session.record.branch and pr.base_commit == session.record.base_commit
        assert pr.checks == "passing"
        assert [a.run_id for a in attempts] == [turn.run_id]
        assert session.record.state == f"pr #{number}"
    finally:
        session.close()


def test_compact_replaces_the_older_turns_and_the_next_request_goes_on_from_it(tmp_path):
    import json

    from pullsmith.agent.compaction import SUMMARY_INTRO
    from pullsmith.attempt import run_dir_for
    from pullsmith.models.base import COMPACTION_REQUEST

    repo = make_repo(tmp_path / "inventory")
    rec = write_recording(
        tmp_path / "rec",
        [
            FIX,
            '```bash\nfinish "fixed the export"\n```',
            "```bash\nls inventory\n```",
            '```bash\nfinish "listed it"\n```',
            '```bash\nfinish "nothing else to do"\n```',
        ],
    )
    history = json.loads((rec / "history.json").read_text())
    history += [
        {"role": "user", "content": COMPACTION_REQUEST},
        {"role": "assistant", "content": "I fixed the off-by-one in export.py and listed files."},
    ]
    (rec / "history.json").write_text(json.dumps(history))
    settings = load_settings({"model": f"replay:{rec}", "sandbox": SANDBOX}, cwd=tmp_path)
    session = Session.start(settings, repo)
    try:
        with pytest.raises(UserError, match="nothing to compact yet"):
            session.compact()
        for request in ("The CSV export drops the last row; fix it.", "List the package."):
            handle = session.submit(request)
            session.finish_turn(handle.task, handle.result(timeout=300))
        done = session.compact()
        assert done.summary == "I fixed the off-by-one in export.py and listed files."
        assert done.dropped_turns >= 1 and done.chars_after < done.chars_before
        saved = Session.load(settings, session.record.id)
        assert saved.record.history == str(saved.history_path())
        assert saved.record.compactions[0]["dropped_turns"] == done.dropped_turns

        handle = session.submit("Anything else?")
        turn = session.finish_turn(handle.task, handle.result(timeout=300))
        assert turn.summary == "nothing else to do"
        conversation = json.loads((run_dir_for(settings, turn.run_id) / "history.json").read_text())
        assert conversation[2]["content"] == SUMMARY_INTRO + done.summary
        assert conversation[: len(done.messages)] == done.messages
        assert session.record.history is None  # the new turn's history goes on from it
    finally:
        session.close()
