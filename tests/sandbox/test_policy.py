"""SandboxPolicy presets, and the policy the runner builds from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullsmith.config import load_settings, user_config_path
from pullsmith.errors import UserError
from pullsmith.runner import sandbox_policy
from pullsmith.sandbox import POLICY_PRESETS, make_sandbox, policy_preset
from pullsmith.sandbox.base import MIB, Limits, SandboxPolicy
from pullsmith.sandbox.seccomp import DENIED_SYSCALLS, build_program


def test_presets():
    assert POLICY_PRESETS == ("read-only", "workspace-write", "full-access")
    default = policy_preset("workspace-write")
    assert default == SandboxPolicy()
    assert default.workspace_writable and not default.git_writable and not default.network
    assert default.hide_home and default.private_tmp and default.hide_run
    read_only = policy_preset("read-only")
    assert not read_only.workspace_writable and read_only.name == "read-only"
    full = policy_preset("full-access")
    assert full.network and full.git_writable and Path("/") in full.writable_roots
    assert not full.hide_home and not full.private_tmp
    assert policy_preset("read-only", network=True).network


def test_unknown_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="choose one of: read-only, workspace-write, full-access"):
        policy_preset("yolo")
    with pytest.raises(UserError, match="bwrap, docker, podman, none"):
        make_sandbox("docker-ish", tmp_path)


def test_settings_choose_the_preset_and_the_limits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        {
            "sandbox_memory_mb": 300,
            "sandbox_processes": 40,
            "sandbox_file_size_mb": 2,
            "sandbox_cpu_s": 7,
            "sandbox_output_kb": 8,
            "command_timeout_s": 9,
            "sandbox_cgroup": "off",
        }
    )
    policy = sandbox_policy(settings)
    assert policy.name == "workspace-write"
    assert policy.limits == Limits(
        timeout_s=9,
        output_bytes=8 * 1024,
        memory_bytes=300 * MIB,
        processes=40,
        file_size_bytes=2 * MIB,
        cpu_seconds=7,
        cgroup="off",
    )
    assert user_config_path().parent in policy.hidden_paths
    assert tmp_path / "pullsmith.toml" in policy.hidden_paths
    assert settings.runs_dir in policy.hidden_paths
    monkeypatch.setenv("PULLSMITH_SANDBOX_POLICY", "read-only")
    assert not sandbox_policy(load_settings()).workspace_writable
    (tmp_path / "pullsmith.toml").write_text('sandbox_policy = "full-access"\n')
    monkeypatch.delenv("PULLSMITH_SANDBOX_POLICY")
    assert sandbox_policy(load_settings()).network


def test_seccomp_program_shape():
    for machine in ("x86_64", "aarch64"):
        program = build_program(machine)
        assert program is not None and len(program) % 8 == 0
        count = len(program) // 8
        # load arch, check arch, load nr, the checks, allow, deny
        listed = sum(
            1 for numbers in DENIED_SYSCALLS.values() if numbers[machine != "x86_64"] is not None
        )
        assert count == 3 + listed + (machine == "x86_64") + 2
    assert build_program("riscv64") is None
