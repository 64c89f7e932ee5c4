"""`pullsmith sandbox -- CMD`: run a command as the model's commands run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_helpers import needs_bwrap


def pullsmith(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-c", "from pullsmith.cli import main; main()", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("planted-key")
    return home


@needs_bwrap
def test_runs_in_the_workspace_and_exits_with_the_commands_code(tmp_path, home):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    litter = Path(f"/etc/pullsmith-cli-test-{os.getpid()}")
    try:
        proc = pullsmith(
            "sandbox",
            "--",
            f"pwd; cat ~/.ssh/id_ed25519; touch {litter}; echo made > here.txt; exit 5",
            cwd=workspace,
            env={"HOME": str(home)},
        )
        assert not litter.exists()
    finally:
        litter.unlink(missing_ok=True)
    assert proc.returncode == 5
    assert proc.stdout.splitlines()[0] == str(workspace.resolve())
    assert "planted-key" not in proc.stdout and "Read-only file system" in proc.stdout
    assert (workspace / "here.txt").read_text() == "made\n"


@needs_bwrap
def test_several_arguments_are_quoted_and_options_choose_the_policy(tmp_path):
    proc = pullsmith(
        "sandbox", "--policy", "read-only", "-v", "--", "touch", "a file", cwd=tmp_path
    )
    assert proc.returncode == 1 and "touch: cannot touch 'a file'" in proc.stdout
    assert "policy read-only" in proc.stderr and "workspace read-only" in proc.stderr
    assert not (tmp_path / "a file").exists()


@needs_bwrap
def test_timeout_and_cut_output_are_reported(tmp_path):
    proc = pullsmith(
        "sandbox", "--timeout", "0.5", "--", "yes | head -c 200000; sleep 5", cwd=tmp_path
    )
    assert proc.returncode == 137
    assert len(proc.stdout) == 200000  # streamed whole; the model would see less
    assert "timeout" in proc.stderr and "bytes in between are left out" in proc.stderr


def test_none_backend_warns_every_time(tmp_path):
    proc = pullsmith(
        "sandbox", "--backend", "none", "--workspace", str(tmp_path), "--", "echo hi", cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout == "hi\n"
    assert "warning:" in proc.stderr and "unconfined" in proc.stderr


def test_bad_choices_are_one_sentence(tmp_path):
    proc = pullsmith("sandbox", "--policy", "yolo", "--", "true", cwd=tmp_path)
    assert proc.returncode == 2 and "'yolo' is not one of" in proc.stderr
    proc = pullsmith(
        "sandbox", "--workspace", str(tmp_path / "missing"), "--", "true", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    env = {"PULLSMITH_SANDBOX_POLICY": "yolo"}
    proc = pullsmith("sandbox", "--", "true", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Unknown sandbox policy 'yolo'" in proc.stderr


def test_exec_offers_every_backend_and_policy(tmp_path):
    proc = pullsmith("exec", "--help", cwd=tmp_path)
    flat = " ".join(proc.stdout.split())
    assert "[bwrap|docker|podman|none]" in flat
    assert "[read-only|workspace-write|full-access]" in flat
