"""SandboxPolicy presets, and the policy the agent's commands get from settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pullsmith.config import Settings, load_settings, user_config_path
from pullsmith.errors import UserError
from pullsmith.sandbox import POLICY_PRESETS, agent_policy, make_sandbox, policy_preset
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
    policy = agent_policy(settings)
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
    assert not agent_policy(load_settings()).workspace_writable
    (tmp_path / "pullsmith.toml").write_text('sandbox_policy = "full-access"\n')
    monkeypatch.delenv("PULLSMITH_SANDBOX_POLICY")
    assert agent_policy(load_settings()).network


def test_agent_policy_hides_the_config_files_and_ignores_the_cwd(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    extra = tmp_path / "team.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(project)
    settings = replace(load_settings(), config_files=(*load_settings().config_files, extra))
    assert project / "pullsmith.toml" in settings.config_files
    policy = agent_policy(settings, hidden=["secret.txt", tmp_path / "other"])
    for path in settings.config_files:
        assert path in policy.hidden_paths
    assert extra in policy.hidden_paths
    assert tmp_path / "xdg" / "pullsmith" in policy.hidden_paths
    assert settings.runs_dir in policy.hidden_paths
    assert Path("secret.txt") in policy.hidden_paths and tmp_path / "other" in policy.hidden_paths
    monkeypatch.chdir(elsewhere)
    assert agent_policy(settings, hidden=["secret.txt", tmp_path / "other"]) == policy
    assert not any(path.is_relative_to(elsewhere) for path in policy.hidden_paths)
    # Settings made without load_settings name no configuration files, and none get hidden
    # from the current directory.
    bare = agent_policy(Settings(data_dir=tmp_path / "data"))
    assert bare.hidden_paths == (tmp_path / "xdg" / "pullsmith", tmp_path / "data" / "runs")


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
