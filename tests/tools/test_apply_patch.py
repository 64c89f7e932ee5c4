from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pullsmith.tools.apply_patch import (
    AddFile,
    DeleteFile,
    PatchError,
    UpdateFile,
    apply_patch,
    main,
    parse_patch,
)


def patch(*lines: str) -> str:
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


MOD = "def foo():\n    return 1\n\n\ndef bar():\n    return 1\n"


# --------------------------------------------------------------------------- parsing


def test_parse_all_operations():
    parsed = parse_patch(
        patch(
            "*** Add File: a/new.py",
            "+one",
            "+two",
            "*** Delete File: old.py",
            "*** Update File: mod.py",
            "*** Move to: renamed.py",
            "@@ def foo():",
            " context",
            "-old",
            "+new",
            "*** End of File",
        )
    )
    add, delete, update = parsed.ops
    assert add == AddFile("a/new.py", "one\ntwo\n")
    assert delete == DeleteFile("old.py")
    assert isinstance(update, UpdateFile)
    assert update.move_to == "renamed.py"
    [hunk] = update.hunks
    assert hunk.anchor == "def foo():"
    assert hunk.old == ["context", "old"]
    assert hunk.new == ["context", "new"]
    assert hunk.end_of_file


def test_parse_tolerates_fences_heredoc_and_missing_end():
    text = "```\napply_patch <<'EOF'\n*** Begin Patch\n*** Delete File: x.py\nEOF\n```\n"
    assert parse_patch(text).ops == [DeleteFile("x.py")]


def test_parse_blank_lines_inside_hunk_are_empty_context_but_trailing_ones_are_dropped():
    update = parse_patch(
        patch("*** Update File: m.py", "@@", " a", "", "-b", "+c", "", "", "*** Delete File: z")
    ).ops[0]
    assert isinstance(update, UpdateFile)
    assert update.hunks[0].lines == [" a", " ", "-b", "+c"]


def test_parse_unified_diff_style_anchor():
    update = parse_patch(patch("*** Update File: m.py", "@@ -1,3 +1,4 @@ def foo():", "-a"))
    assert update.ops[0].hunks[0].anchor == "def foo():"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello\n", "Patch line 1: expected '*** Begin Patch'"),
        (patch("*** Frobnicate: x"), "Patch line 2: expected '*** Add File:'"),
        (patch("*** Add File: x", "oops"), "Patch line 3: expected a line starting with '+'"),
        (patch("*** Update File: x", " a", "?b"), "Patch line 4: expected a hunk line"),
        (patch("*** Update File: x"), "Patch line 2: expected at least one hunk for x"),
        (patch("*** Update File: x", "@@ foo"), "Patch line 3: this '@@' hunk has no lines"),
        (patch("*** Delete File:   "), "Patch line 2: expected a file path"),
        (patch(), "no file operations"),
    ],
)
def test_parse_errors_name_line_and_expectation(text, expected):
    with pytest.raises(PatchError, match=re.escape(expected)):
        parse_patch(text)


# --------------------------------------------------------------------------- applying


def test_add_update_delete(tmp_path):
    write(tmp_path, "mod.py", MOD)
    write(tmp_path, "old.py", "bye\n")
    result = apply_patch(
        patch(
            "*** Update File: mod.py",
            " def foo():",
            "-    return 1",
            "+    return 2",
            "*** Add File: pkg/new.py",
            "+x = 1",
            "*** Delete File: old.py",
        ),
        tmp_path,
    )
    assert (tmp_path / "mod.py").read_text() == MOD.replace("return 1", "return 2", 1)
    assert (tmp_path / "pkg/new.py").read_text() == "x = 1\n"
    assert not (tmp_path / "old.py").exists()
    assert (result.added, result.updated, result.deleted) == (
        ["pkg/new.py"],
        ["mod.py"],
        ["old.py"],
    )
    assert result.summary == "M mod.py, A pkg/new.py, D old.py"


def test_move_with_update(tmp_path):
    write(tmp_path, "a.py", "x = 1\n")
    result = apply_patch(
        patch("*** Update File: a.py", "*** Move to: sub/b.py", "-x = 1", "+x = 2"), tmp_path
    )
    assert not (tmp_path / "a.py").exists()
    assert (tmp_path / "sub/b.py").read_text() == "x = 2\n"
    assert result.moved == [("a.py", "sub/b.py")]


def test_multiple_hunks_apply_in_order(tmp_path):
    write(tmp_path, "m.py", "a\nb\nc\nb\ne\n")
    apply_patch(
        patch("*** Update File: m.py", "@@", " a", "-b", "+B1", "@@", "-b", "+B2", " e"), tmp_path
    )
    assert (tmp_path / "m.py").read_text() == "a\nB1\nc\nB2\ne\n"


def test_anchor_selects_later_match(tmp_path):
    write(tmp_path, "mod.py", MOD)
    apply_patch(
        patch("*** Update File: mod.py", "@@ def bar():", "-    return 1", "+    return 3"),
        tmp_path,
    )
    assert (tmp_path / "mod.py").read_text() == MOD[: -len("1\n")] + "3\n"


def test_pure_addition_appends_or_follows_anchor(tmp_path):
    write(tmp_path, "m.py", "a\nb\n")
    apply_patch(patch("*** Update File: m.py", "@@", "+c"), tmp_path)
    apply_patch(patch("*** Update File: m.py", "@@ a", "+a2"), tmp_path)
    assert (tmp_path / "m.py").read_text() == "a\na2\nb\nc\n"


def test_end_of_file_requires_match_at_end(tmp_path):
    write(tmp_path, "m.py", "x\ny\nx\n")
    apply_patch(patch("*** Update File: m.py", "-x", "+z", "*** End of File"), tmp_path)
    assert (tmp_path / "m.py").read_text() == "x\ny\nz\n"
    with pytest.raises(PatchError, match="marked '\\*\\*\\* End of File'"):
        apply_patch(patch("*** Update File: m.py", " y", "+w", "*** End of File"), tmp_path)


def test_whitespace_tolerance(tmp_path):
    write(tmp_path, "m.py", "if x:   \n    call()\n")
    apply_patch(patch("*** Update File: m.py", " if x:", "-call()", "+    other()"), tmp_path)
    assert (tmp_path / "m.py").read_text() == "if x:   \n    other()\n"


def test_crlf_and_missing_final_newline_preserved(tmp_path):
    write(tmp_path, "w.txt", "one\r\ntwo\r\nthree")
    apply_patch(patch("*** Update File: w.txt", " one", "-two", "+TWO", "+2.5"), tmp_path)
    assert (tmp_path / "w.txt").read_bytes() == b"one\r\nTWO\r\n2.5\r\nthree"


def test_crlf_patch_text_is_accepted(tmp_path):
    write(tmp_path, "m.py", "a\nb\n")
    apply_patch(patch("*** Update File: m.py", "-a", "+A").replace("\n", "\r\n"), tmp_path)
    assert (tmp_path / "m.py").read_bytes() == b"A\nb\n"


def test_all_or_nothing_when_a_later_file_fails(tmp_path):
    write(tmp_path, "first.py", "a\n")
    write(tmp_path, "second.py", "b\n")
    with pytest.raises(PatchError, match="second.py"):
        apply_patch(
            patch(
                "*** Update File: first.py",
                "-a",
                "+A",
                "*** Add File: new.py",
                "+n",
                "*** Update File: second.py",
                "-nope",
                "+B",
            ),
            tmp_path,
        )
    assert (tmp_path / "first.py").read_text() == "a\n"
    assert not (tmp_path / "new.py").exists()


def test_write_failure_rolls_back(tmp_path):
    write(tmp_path, "first.py", "a\n")
    write(tmp_path, "blocker", "i am a file, not a directory\n")
    with pytest.raises(PatchError, match="Writing blocker/x.py failed.*rolled back"):
        apply_patch(
            patch("*** Update File: first.py", "-a", "+A", "*** Add File: blocker/x.py", "+x"),
            tmp_path,
        )
    assert (tmp_path / "first.py").read_text() == "a\n"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.py", "a/../../outside.py"])
def test_paths_outside_root_rejected(tmp_path, bad):
    with pytest.raises(PatchError, match="absolute|outside the root"):
        apply_patch(patch(f"*** Add File: {bad}", "+x"), tmp_path)
    assert not (tmp_path.parent / "outside.py").exists()


def test_add_existing_and_update_or_delete_missing_rejected(tmp_path):
    write(tmp_path, "here.py", "x\n")
    with pytest.raises(PatchError, match="Cannot add here.py: it already exists"):
        apply_patch(patch("*** Add File: here.py", "+y"), tmp_path)
    with pytest.raises(PatchError, match="Cannot update gone.py: no such file"):
        apply_patch(patch("*** Update File: gone.py", "-x"), tmp_path)
    with pytest.raises(PatchError, match="Cannot delete gone.py: no such file"):
        apply_patch(patch("*** Delete File: gone.py"), tmp_path)


def test_mismatch_message_names_file_hunk_and_nearest_lines(tmp_path):
    write(tmp_path, "mod.py", MOD)
    with pytest.raises(PatchError) as info:
        apply_patch(
            patch(
                "*** Update File: mod.py",
                "@@",
                " def foo():",
                "+    # ok",
                "@@",
                " def bar():",
                "-    return 7",
                "+    return 8",
            ),
            tmp_path,
        )
    message = str(info.value)
    assert message.startswith("mod.py: hunk 2 of 2 (patch line 6) did not match")
    assert "    -    return 7" in message  # the hunk's own lines
    assert "   5 | def bar():" in message  # nearest file lines, numbered as on disk
    assert " ! 6 |     return 1" in message  # the differing line is marked


def test_missing_anchor_message(tmp_path):
    write(tmp_path, "mod.py", MOD)
    with pytest.raises(PatchError, match=r"anchor '@@ def baz\(\):' was not found") as info:
        apply_patch(patch("*** Update File: mod.py", "@@ def baz():", "-    return 1"), tmp_path)
    assert "5 | def bar():" in str(info.value)


# --------------------------------------------------------------------------- command line


def run_cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pullsmith.tools.apply_patch", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_argument_stdin_and_file(tmp_path):
    write(tmp_path, "m.py", "a\n")
    done = run_cli(tmp_path, patch("*** Update File: m.py", "-a", "+b"))
    assert (done.returncode, done.stdout) == (0, "Done. M m.py\n")
    done = run_cli(tmp_path, stdin=patch("*** Add File: n.py", "+n"))
    assert (done.returncode, done.stdout) == (0, "Done. A n.py\n")
    write(tmp_path, "p.patch", patch("*** Delete File: n.py"))
    done = run_cli(tmp_path, "-f", "p.patch")
    assert (done.returncode, done.stdout) == (0, "Done. D n.py\n")
    assert (tmp_path / "m.py").read_text() == "b\n"


def test_cli_failure_prints_message_without_traceback(tmp_path):
    done = run_cli(tmp_path, patch("*** Update File: missing.py", "-a"))
    assert done.returncode == 1
    assert done.stderr == "Cannot update missing.py: no such file.\n"
    assert "Traceback" not in done.stderr


def test_main_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([patch("*** Add File: x.txt", "+hi")]) == 0
    assert capsys.readouterr().out == "Done. A x.txt\n"
    assert main(["-f", "nope.patch"]) == 1
    assert "cannot read the patch" in capsys.readouterr().err


def test_out_of_order_hunks_are_explained(tmp_path):
    write(tmp_path, "m.py", "a\nb\nc\n")
    with pytest.raises(PatchError, match="its lines are at line 1, before line 3"):
        apply_patch(patch("*** Update File: m.py", "@@", "-b", "+B", "@@", "-a", "+A"), tmp_path)


def test_later_operations_see_earlier_ones(tmp_path):
    result = apply_patch(
        patch("*** Add File: n.py", "+a", "*** Update File: n.py", "-a", "+b"), tmp_path
    )
    assert (tmp_path / "n.py").read_text() == "b\n"
    assert result.summary == "A n.py, M n.py"


def test_move_onto_existing_file_rejected(tmp_path):
    write(tmp_path, "a.py", "a\n")
    write(tmp_path, "b.py", "b\n")
    with pytest.raises(PatchError, match="Cannot move a.py to b.py: it already exists"):
        apply_patch(patch("*** Update File: a.py", "*** Move to: b.py"), tmp_path)
    assert (tmp_path / "a.py").read_text() == "a\n"


def test_move_keeps_permissions(tmp_path):
    script = write(tmp_path, "run.sh", "echo hi\n")
    script.chmod(0o755)
    apply_patch(patch("*** Update File: run.sh", "*** Move to: bin/run.sh"), tmp_path)
    assert (tmp_path / "bin/run.sh").stat().st_mode & 0o777 == 0o755


def test_delete_symlink_removes_only_the_link(tmp_path):
    target = write(tmp_path, "real.py", "x\n")
    (tmp_path / "link.py").symlink_to(target)
    apply_patch(patch("*** Delete File: link.py"), tmp_path)
    assert not (tmp_path / "link.py").is_symlink()
    assert target.read_text() == "x\n"


def test_symlink_leading_outside_root_rejected(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = write(tmp_path, "outside.py", "x\n")
    (root / "link.py").symlink_to(outside)
    with pytest.raises(PatchError, match="outside the root"):
        apply_patch(patch("*** Update File: link.py", "-x", "+y"), root)
    assert outside.read_text() == "x\n"


def test_added_lines_follow_the_file_when_the_patch_quotes_at_the_wrong_depth(tmp_path):
    source = (
        "def outer(s):\n"
        "    def inner(c):\n"
        "        depth = 0\n"
        "        return depth\n"
        "    return inner(s)\n"
    )
    (tmp_path / "m.py").write_text(source)
    patch = (
        "*** Begin Patch\n*** Update File: m.py\n"
        "@@ def inner(c):\n"
        "-    depth = 0\n"
        "+    depth = 1\n"
        "+    depth += 1\n"
        "     return depth\n"
        "*** End Patch\n"
    )
    apply_patch(patch, tmp_path)
    assert (tmp_path / "m.py").read_text() == source.replace(
        "        depth = 0\n", "        depth = 1\n        depth += 1\n"
    )


def test_a_patch_indented_deeper_than_the_file_is_shifted_back(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    patch = "*** Begin Patch\n*** Update File: m.py\n-        return 1\n+        return 2\n*** End Patch\n"
    apply_patch(patch, tmp_path)
    assert (tmp_path / "m.py").read_text() == "def f():\n    return 2\n"
