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
