"""The shared process runner, the `none` backend and make_sandbox."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from sandbox_helpers import processes_with

from pullsmith.errors import UserError
from pullsmith.sandbox import SANDBOX_NAMES, NoSandbox, make_sandbox
from pullsmith.sandbox.base import Limits, SandboxPolicy
from pullsmith.sandbox.limits import cgroup_parents
from pullsmith.sandbox.process import OutputCapture, run_process, sandbox_env


def run(command: str, tmp_path: Path, stdin: str | None = None, **limits: object):
    return run_process(
        ["bash", "-c", command],
        command=command,
        cwd=tmp_path,
        env=sandbox_env(SandboxPolicy()),
        limits=Limits(**limits),  # type: ignore[arg-type]
        stdin=stdin,
    )


def test_output_capture_keeps_everything_under_the_limit():
    capture = OutputCapture(100)
    for chunk in (b"abc", b"def", b"g" * 50):
        capture.add(chunk)
    assert capture.text() == "abcdef" + "g" * 50
    assert capture.omitted_bytes == 0


def test_output_capture_keeps_head_and_tail_in_bounded_memory():
    capture = OutputCapture(1000)
    capture.add(b"HEAD")
    for i in range(20_000):
        capture.add(f"line {i}\n".encode())
        assert capture.kept_bytes <= 1000
    capture.add(b"TAIL")
    text = capture.text()
    assert text.startswith("HEADline 0\n")
    assert text.endswith("line 19999\nTAIL")
    assert capture.kept_bytes == 1000
    assert capture.omitted_bytes == capture.total - 1000
    assert f"[... {capture.omitted_bytes} bytes of output omitted ...]" in text


def test_output_capture_with_one_huge_chunk():
    capture = OutputCapture(10)
    capture.add(b"0123456789" * 100)
    assert capture.kept_bytes == 10
    assert capture.text().startswith("01234\n") and capture.text().endswith("\n56789")


def test_output_and_exit_code_and_stderr_merged(tmp_path):
    result = run("echo out; echo err >&2; exit 3", tmp_path)
    assert result.exit_code == 3
    assert result.output == "out\nerr\n"
    assert not result.truncated and not result.timed_out


def test_signal_exit_code_is_128_plus_signal(tmp_path):
    assert run("kill -TERM $$", tmp_path).exit_code == 143


def test_stdin_is_passed_and_defaults_to_empty(tmp_path):
    assert run("cat", tmp_path, stdin="hello\n").output == "hello\n"
    assert run("cat; echo done", tmp_path).output == "done\n"
    big = "x" * 300_000
    result = run("wc -c", tmp_path, stdin=big)
    assert result.output.strip() == "300000"


def test_invalid_utf8_is_replaced(tmp_path):
    assert run(r"printf 'a\377b'", tmp_path).output == "a\ufffdb"


def test_timeout_kills_a_command_that_ignores_sigterm(tmp_path):
    started = time.monotonic()
    result = run("trap '' TERM; echo started; sleep 100", tmp_path, timeout_s=0.5)
    assert result.timed_out
    assert result.output == "started\n"
    assert time.monotonic() - started < 2


def test_background_processes_do_not_outlive_the_command(tmp_path):
    marker = f"{uuid.uuid4().int % 10**9:09d}"
    started = time.monotonic()
    result = run(f"sleep 1000.{marker} & echo started", tmp_path)
    assert result.output == "started\n" and result.exit_code == 0
    assert time.monotonic() - started < 1
    assert processes_with(f"sleep 1000.{marker}") == []


def test_endless_output_is_capped_and_times_out(tmp_path):
    result = run("yes", tmp_path, timeout_s=0.5, output_bytes=1000)
    assert result.timed_out and result.truncated
    assert result.output.startswith("y\ny\n") and result.output.endswith("y\ny\n")
    assert len(result.output) < 1100
    assert result.omitted_bytes > 1000


def test_large_output_keeps_head_and_tail_exactly(tmp_path):
    result = run("seq 1 500000", tmp_path, output_bytes=1000)
    total = sum(len(str(i)) + 1 for i in range(1, 500_001))
    assert result.truncated and result.exit_code == 0
    assert result.omitted_bytes == total - 1000
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("499999\n500000\n")


def test_file_size_limit_kills_only_the_writer(tmp_path):
    # With a cgroup, `ulimit` sets it, in 512-byte blocks: a round MiB is exact either way.
    result = run(
        "head -c 2000000 /dev/zero > big; echo status=$?", tmp_path, file_size_bytes=1024**2
    )
    assert "status=153" in result.output  # 128 + SIGXFSZ
    assert (tmp_path / "big").stat().st_size == 1024**2


def test_memory_limit(tmp_path):
    command = f"{sys.executable} -c \"b = b'x' * 1024**3; print('survived')\""
    result = run(command, tmp_path, memory_bytes=256 * 1024**2)
    assert result.exit_code != 0 and "survived" not in result.output
    if cgroup_parents("auto") is not None:
        assert result.exit_code == 137 and result.limit_hit == "memory"
        assert (
            "[pullsmith: a process was killed: the command reached its memory limit of 256 MiB]"
            in result.output
        )
    else:
        assert "MemoryError" in result.output


def test_memory_limit_without_a_cgroup_is_rlimit_data(tmp_path):
    command = f"{sys.executable} -c 'bytearray(1024**3)'"
    result = run(command, tmp_path, memory_bytes=512 * 1024**2, cgroup="off")
    assert result.exit_code != 0 and "MemoryError" in result.output


def test_cpu_limit(tmp_path):
    result = run("while :; do :; done", tmp_path, cpu_seconds=1, timeout_s=10)
    assert result.exit_code == 128 + 24  # SIGXCPU
    assert not result.timed_out


def test_env_is_scrubbed_and_tools_are_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    env = sandbox_env(SandboxPolicy(env_set={"EXTRA": "1"}))
    assert "OPENAI_API_KEY" not in env
    assert env["EXTRA"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    tools = str(Path(sys.executable).parent)
    again = sandbox_env(SandboxPolicy(env_set={"PATH": f"{tools}:/usr/bin"}))
    assert again["PATH"] == f"{tools}:/usr/bin"


def test_none_backend_runs_in_the_workspace_and_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    sandbox = make_sandbox("none", tmp_path)
    assert isinstance(sandbox, NoSandbox)
    assert "unconfined" in sandbox.warning
    result = sandbox.run('pwd; echo "key=${OPENAI_API_KEY-unset}"; command -v apply_patch')
    assert result.output.splitlines() == [
        str(tmp_path.resolve()),
        "key=unset",
        str(Path(sys.executable).parent / "apply_patch"),
    ]
    sandbox.close()


def test_none_backend_timeout_per_call(tmp_path):
    result = NoSandbox(tmp_path).run("sleep 5", timeout_s=0.2)
    assert result.timed_out and result.duration_s < 1.5


def test_unknown_sandbox_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError) as excinfo:
        make_sandbox("docker-ish", tmp_path)
    for name in SANDBOX_NAMES:
        assert name in excinfo.value.message


def test_missing_workspace_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        make_sandbox("none", tmp_path / "missing")
