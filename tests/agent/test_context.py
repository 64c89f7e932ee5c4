import subprocess
from pathlib import Path

from pullsmith.agent.context import (
    AGENTS_MD_CAP,
    collect_agents_md,
    detect_test_command,
    file_listing,
    files_in_output,
    without_progress,
)


def git_repo(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def test_a_directory_of_many_data_files_is_listed_as_one_line(tmp_path):
    fixtures = [f"tests/fixtures/case{n:02d}.txt" for n in range(30)] + [
        "tests/fixtures/spec.json",
        "tests/fixtures/__init__.py",
    ]
    few = ["docs/a.md", "docs/b.md"]
    top = [f"NOTE{n}.md" for n in range(10)]
    repo = git_repo(tmp_path, ["lib/core.py", "tests/test_core.py", *fixtures, *few, *top])
    listing = file_listing(repo).splitlines()
    assert "tests/fixtures/: 31 data files (30 .txt, 1 .json)" in listing
    assert "tests/fixtures/__init__.py" in listing  # code is always listed
    assert not any(line.startswith("tests/fixtures/case") for line in listing)
    assert "docs/a.md" in listing and "docs/b.md" in listing  # a few stay as they are
    assert "NOTE9.md" in listing  # the top directory is never folded
    assert "lib/core.py" in listing and "tests/test_core.py" in listing


def test_pytest_progress_lines_are_left_out():
    output = (
        "........................................................ [ 45%]\n"
        "......F.....                                             [100%]\n"
        "=== FAILURES ===\n"
        "E   assert 1 == 2\n"
        "1 failed, 67 passed in 0.3s\n"
    )
    text = without_progress(output)
    assert text.startswith("[2 progress lines left out]\n=== FAILURES ===")
    assert "E   assert 1 == 2" in text and "[100%]" not in text
    assert without_progress("E   assert 1 == 2\n") == "E   assert 1 == 2\n"


def test_agents_md_root_to_subdir_nearer_last(tmp_path):
    (tmp_path / "AGENTS.md").write_text("root rules")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "AGENTS.md").write_text("pkg rules")
    text = collect_agents_md(tmp_path, Path("pkg/sub"))
    assert text.index("root rules") < text.index("pkg rules")
    assert "Instructions from pkg/AGENTS.md" in text
    assert "pkg rules" not in collect_agents_md(tmp_path)


def test_agents_md_cap_keeps_the_nearer_file(tmp_path):
    (tmp_path / "AGENTS.md").write_text("R" * AGENTS_MD_CAP)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "AGENTS.md").write_text("near rules")
    text = collect_agents_md(tmp_path, Path("pkg"))
    assert "near rules" in text
    assert len(text) <= AGENTS_MD_CAP + 100


def test_test_command_from_agents_md_wins(tmp_path):
    (tmp_path / "Makefile").write_text("test:\n\ttrue\n")
    agents = "- Test command: `python -m pytest -q tests/unit`\n"
    assert detect_test_command(tmp_path, agents) == "python -m pytest -q tests/unit"
    assert detect_test_command(tmp_path, "") == "make test"


def test_detects_common_project_kinds(tmp_path):
    kinds = {
        "package.json": ('{"scripts": {"test": "jest"}}', "npm test"),
        "go.mod": ("module x\n", "go test ./..."),
        "Cargo.toml": ("[package]\n", "cargo test"),
        "pyproject.toml": ("[project]\n", "python -m pytest -q"),
    }
    for name, (content, expected) in kinds.items():
        root = tmp_path / name.replace(".", "_")
        root.mkdir()
        (root / name).write_text(content)
        assert detect_test_command(root) == expected
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect_test_command(empty) is None


def test_files_in_output_finds_repository_frames_only(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text("")
    output = (
        f'  File "{tmp_path}/tests/test_mod.py", line 3, in test_x\n'
        '  File "/usr/lib/python3.11/unittest/case.py", line 10, in run\n'
        "pkg/mod.py:1: AssertionError\n"
    )
    found = files_in_output(tmp_path, output)
    assert found == [
        (tmp_path / "tests/test_mod.py").resolve(),
        (tmp_path / "pkg/mod.py").resolve(),
    ]
