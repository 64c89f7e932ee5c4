from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pullsmith.tools.search_replace import (
    Block,
    SearchReplaceError,
    TextFile,
    apply_to_text,
    main,
    parse_blocks,
    search_replace,
)

SCRIPT = Path(sys.executable).parent / "search_replace"


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


MOD = "def foo():\n    return 1\n\n\ndef bar():\n    return 2\n"


# --------------------------------------------------------------------------- parsing


def test_parse_one_block():
    [b] = parse_blocks(block("a\n", "b\n"), "f.py")
    assert b == Block("f.py", ["a"], ["b"], 1)


def test_parse_file_names_fences_and_prose():
    text = (
        "Here is the change:\n"
        "pkg/a.py\n"
        "```python\n" + block("a\n", "b\n") + "```\n"
        "\n"
        "`pkg/b.py`\n" + block("c\n", "d\n") + block("e\n", "f\n")
    )
    blocks = parse_blocks(text)
    assert [(b.file, b.search, b.replace) for b in blocks] == [
        ("pkg/a.py", ["a"], ["b"]),
        ("pkg/b.py", ["c"], ["d"]),
        ("pkg/b.py", ["e"], ["f"]),  # a block without a name line keeps the last file
    ]


def test_parse_prose_between_name_and_block_is_ignored():
    blocks = parse_blocks("pkg/a.py\nHere is the fix:\n" + block("a\n", "b\n"))
    assert blocks[0].file == "pkg/a.py"
    with pytest.raises(SearchReplaceError, match="no file for this block"):
        parse_blocks("Change this:\n" + block("a\n", "b\n"))


def test_parse_given_file_ignores_name_lines():
    blocks = parse_blocks("other.py\n" + block("a\n", "b\n"), "f.py")
    assert blocks[0].file == "f.py"


def test_parse_accepts_loose_markers_and_crlf():
    text = "<<<<<<<SEARCH\r\na\r\n=========\r\nb\r\n>>>>>>> REPLACE  \r\n"
    assert parse_blocks(text, "f")[0].search == ["a"]


def test_parse_empty_parts():
    [b] = parse_blocks(block("", ""), "f")
    assert (b.search, b.replace) == ([], [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<<<<<<< SEARCH\na\nb\n>>>>>>> REPLACE\n", "is missing '=======' between"),
        ("<<<<<<< SEARCH\na\n", "is missing '=======' and '>>>>>>> REPLACE'"),
        ("<<<<<<< SEARCH\na\n=======\nb\n", "is missing '>>>>>>> REPLACE' at its end; the input"),
        (
            "<<<<<<< SEARCH\na\n=======\nb\n<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n",
            "is missing '>>>>>>> REPLACE' at its end (a new '<<<<<<< SEARCH' starts at input line 5)",
        ),
        ("a\n=======\nb\n>>>>>>> REPLACE\n", "input line 2: found '=======' outside a block"),
        ("just words\n", "no '<<<<<<< SEARCH' block found"),
    ],
)
def test_parse_malformed_says_what_is_missing_and_shows_shape(text, expected):
    with pytest.raises(SearchReplaceError) as info:
        parse_blocks(text, "f.py")
    message = str(info.value)
    assert message.startswith("search_replace: ")
    assert expected in message
    assert "Expected shape:\n<<<<<<< SEARCH\n" in message


def test_parse_without_any_file_name():
    with pytest.raises(SearchReplaceError, match="no file for this block"):
        parse_blocks(block("a\n", "b\n"))


# --------------------------------------------------------------------------- matching


def test_exact_match():
    blocks = parse_blocks(block("def bar():\n    return 2\n", "def bar():\n    return 3\n"), "m")
    assert apply_to_text(MOD, blocks) == MOD.replace("return 2", "return 3")


def test_trailing_whitespace_tolerated():
    text = "a = 1   \nb = 2\n"
    blocks = parse_blocks(block("a = 1\nb = 2\n", "a = 10\nb = 20\n"), "m")
    assert apply_to_text(text, blocks) == "a = 10\nb = 20\n"


def test_indentation_difference_reindents_replacement():
    text = "class A:\n    def f(self):\n        return 1\n"
    # The model sent the method unindented; the replacement is indented to match.
    blocks = parse_blocks(
        block("def f(self):\n    return 1\n", "def f(self):\n    x = 2\n    return x\n"), "m"
    )
    assert apply_to_text(text, blocks) == (
        "class A:\n    def f(self):\n        x = 2\n        return x\n"
    )


def test_over_indented_search_is_dedented():
    text = "def f():\n    return 1\n"
    blocks = parse_blocks(
        block("    def f():\n        return 1\n", "    def f():\n        return 2\n"), "m"
    )
    assert apply_to_text(text, blocks) == "def f():\n    return 2\n"


def test_non_uniform_indentation_does_not_match():
    text = "if x:\n    a()\n    b()\n"
    blocks = parse_blocks(block("if x:\n    a()\n        b()\n", "pass\n"), "m")
    with pytest.raises(SearchReplaceError, match="not found"):
        apply_to_text(text, blocks)


def test_blank_line_padding_is_forgiven():
    text = "a\nb\nc\n"
    blocks = parse_blocks(block("\nb\n\n", "\nB\n\n"), "m")
    assert apply_to_text(text, blocks) == "a\nB\nc\n"


def test_blocks_apply_in_sequence():
    blocks = parse_blocks(block("a\n", "b\n") + block("b\n", "c\n"), "m")
    assert apply_to_text("a\n", blocks) == "c\n"


def test_ambiguous_match_lists_lines():
    blocks = parse_blocks(block("    return 1\n", "    return 5\n"), "m.py")
    with pytest.raises(SearchReplaceError) as info:
        apply_to_text(MOD.replace("return 2", "return 1"), blocks, "m.py")
    message = str(info.value)
    assert message.startswith("search_replace: block 1 of 1 (input line 1): ")
    assert "matches 2 times in m.py (at lines 2, 6)" in message
    assert "add more unchanged lines" in message


def test_not_found_shows_similar_lines_with_numbers():
    blocks = parse_blocks(block("def bar():\n    return 3\n", "x\n"), "m.py")
    with pytest.raises(SearchReplaceError) as info:
        apply_to_text(MOD, blocks, "m.py")
    message = str(info.value)
    assert "the SEARCH text was not found in m.py, even ignoring whitespace" in message
    assert "Most similar lines of m.py" in message
    assert "    5 | def bar():" in message
    assert "  ! 6 |     return 2" in message
    assert len(message.splitlines()) <= 3 + 12


def test_not_found_in_big_file_caps_quote_at_twelve_lines():
    text = "".join(f"line {i}\n" for i in range(1000))
    search = "".join(f"line {i}\n" for i in range(500, 530)).replace("line 520", "line 52O")
    blocks = parse_blocks(block(search, "x\n"), "big.txt")
    with pytest.raises(SearchReplaceError) as info:
        apply_to_text(text, blocks, "big.txt")
    quoted = [ln for ln in str(info.value).splitlines() if " | " in ln]
    assert len(quoted) == 12
    assert any(ln.startswith("  ! 521 | line 520") for ln in quoted)  # the differing line


def test_not_found_when_already_applied():
    blocks = parse_blocks(block("    return 0\n", "    return 2\n"), "m.py")
    with pytest.raises(SearchReplaceError, match="seems to be applied already"):
        apply_to_text(MOD, blocks, "m.py")


# --------------------------------------------------------------------------- files


def test_file_line_endings_and_missing_final_newline_kept(tmp_path):
    path = write(tmp_path, "w.txt", "one\r\ntwo\r\nthree")
    search_replace(block("two\n", "TWO\nmore\n"), "w.txt", tmp_path)
    assert path.read_bytes() == b"one\r\nTWO\r\nmore\r\nthree"
    search_replace(block("three\n", "3\n"), "w.txt", tmp_path)
    assert path.read_bytes() == b"one\r\nTWO\r\nmore\r\n3"


def test_mixed_endings_outside_the_edit_are_untouched(tmp_path):
    path = write(tmp_path, "w.txt", "a\r\nb\nc\r\n")
    search_replace(block("b\n", "B\n"), "w.txt", tmp_path)
    assert path.read_bytes() == b"a\r\nB\r\nc\r\n"


def test_bom_kept(tmp_path):
    path = tmp_path / "b.py"
    path.write_bytes(b"\xef\xbb\xbfx = 1\n")
    search_replace(block("x = 1\n", "x = 2\n"), "b.py", tmp_path)
    assert path.read_bytes() == b"\xef\xbb\xbfx = 2\n"


def test_multiple_blocks_all_or_nothing(tmp_path):
    path = write(tmp_path, "m.py", MOD)
    text = block("    return 1\n", "    return 10\n") + block("nothing here\n", "x\n")
    with pytest.raises(SearchReplaceError, match=r"block 2 of 2 \(input line 6\)") as info:
        search_replace(text, "m.py", tmp_path)
    assert "Nothing was changed" in str(info.value)
    assert "as after the blocks before this one" in str(info.value)
    assert path.read_text() == MOD


def test_multiple_files_all_or_nothing(tmp_path):
    a = write(tmp_path, "a.py", "a = 1\n")
    b = write(tmp_path, "b.py", "b = 1\n")
    text = "a.py\n" + block("a = 1\n", "a = 2\n") + "b.py\n" + block("zzz\n", "b = 2\n")
    with pytest.raises(SearchReplaceError):
        search_replace(text, None, tmp_path)
    assert (a.read_text(), b.read_text()) == ("a = 1\n", "b = 1\n")
    text = "a.py\n" + block("a = 1\n", "a = 2\n") + "b.py\n" + block("b = 1\n", "b = 2\n")
    result = search_replace(text, None, tmp_path)
    assert (a.read_text(), b.read_text()) == ("a = 2\n", "b = 2\n")
    assert result.summary == "Applied 2 block(s) to a.py, b.py."


def test_empty_search_creates_file(tmp_path):
    result = search_replace(block("", "print('hi')\n"), "pkg/new.py", tmp_path)
    assert (tmp_path / "pkg/new.py").read_text() == "print('hi')\n"
    assert result.summary == "Applied 1 block(s) to pkg/new.py (new file)."
    assert result.created == ["pkg/new.py"]


def test_empty_search_fills_empty_file_but_not_a_full_one(tmp_path):
    write(tmp_path, "e.txt", "")
    search_replace(block("", "x\n"), "e.txt", tmp_path)
    assert (tmp_path / "e.txt").read_text() == "x\n"
    with pytest.raises(SearchReplaceError, match="the SEARCH part is empty but e.txt is not"):
        search_replace(block("", "y\n"), "e.txt", tmp_path)
    assert (tmp_path / "e.txt").read_text() == "x\n"


def test_missing_file_with_search_suggests_similar(tmp_path):
    write(tmp_path, "parser.py", "x\n")
    with pytest.raises(SearchReplaceError) as info:
        search_replace(block("x\n", "y\n"), "parsr.py", tmp_path)
    assert "parsr.py does not exist (to create it, leave the SEARCH part empty)" in str(info.value)
    assert "Similar files: parser.py." in str(info.value)


def test_not_utf8_and_directory_refused(tmp_path):
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SearchReplaceError, match="bin.dat is not UTF-8 text"):
        search_replace(block("a\n", "b\n"), "bin.dat", tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(SearchReplaceError, match="d is a directory"):
        search_replace(block("a\n", "b\n"), "d", tmp_path)


def test_mode_kept_and_write_is_atomic(tmp_path):
    path = write(tmp_path, "run.sh", "echo a\n")
    path.chmod(0o751)
    search_replace(block("echo a\n", "echo b\n"), "run.sh", tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o751
    assert path.read_text() == "echo b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sh"]  # no temp file left


def test_symlink_target_is_edited(tmp_path):
    real = write(tmp_path, "real.txt", "a\n")
    (tmp_path / "link.txt").symlink_to(real)
    search_replace(block("a\n", "b\n"), "link.txt", tmp_path)
    assert (tmp_path / "link.txt").is_symlink()
    assert real.read_text() == "b\n"


def test_python_file_that_stops_parsing_gets_a_warning(tmp_path):
    write(tmp_path, "m.py", MOD)
    result = search_replace(block("def bar():\n", "def bar(:\n"), "m.py", tmp_path)
    assert result.warnings and "m.py no longer parses as Python (line 5" in result.warnings[0]
    result = search_replace(block("def bar(:\n", "def bar():\n"), "m.py", tmp_path)
    assert result.warnings == []


def test_textfile_round_trip():
    for text in ["", "\n", "a", "a\n", "a\r\nb\r\n", "a\rb\n", "\ufeffa\n", "a\n\n"]:
        assert TextFile.from_text(text).encode().decode() == text


# --------------------------------------------------------------------------- command line


def run_cli(cwd: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed")
def test_console_script_success_and_failure(tmp_path):
    write(tmp_path, "m.py", MOD)
    done = run_cli(tmp_path, "m.py", stdin=block("    return 2\n", "    return 3\n"))
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "Done. Applied 1 block(s) to m.py.\n",
        "",
    )
    failed = run_cli(tmp_path, "m.py", stdin=block("nope\n", "x\n"))
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("search_replace: block 1 of 1")
    assert "Traceback" not in failed.stderr


def test_main_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "m.py", MOD)
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("m.py\n" + block("    return 1\n", "    return 0\n"))
    )
    assert main([]) == 0
    assert capsys.readouterr().out == "Done. Applied 1 block(s) to m.py.\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["m.py"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("search_replace: no blocks on stdin")


def test_main_usage_error_is_one_prefixed_message(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["a", "b"]) == 1
    err = capsys.readouterr().err
    assert re.match(r"search_replace: unrecognized arguments: b; usage: search_replace FILE", err)


def test_main_internal_error_has_no_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("pullsmith.tools.search_replace.search_replace", boom)
    monkeypatch.setattr(sys, "stdin", io.StringIO(block("a\n", "b\n")))
    assert main(["f"]) == 1
    assert capsys.readouterr().err == "search_replace: internal error: RuntimeError('boom')\n"


def test_unwritable_file_reports_one_line(tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:
        pytest.skip("root can write anything")
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "ro"
    sub.mkdir()
    write(sub, "f.txt", "a\n")
    (sub / "f.txt").chmod(0o444)
    sub.chmod(0o555)
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO(block("a\n", "b\n")))
        assert main(["ro/f.txt"]) == 1
        assert capsys.readouterr().err.startswith("search_replace: writing ro/f.txt failed")
    finally:
        sub.chmod(0o755)


def test_write_failure_undoes_earlier_files(tmp_path, monkeypatch):
    a = write(tmp_path, "a.txt", "a\n")
    write(tmp_path, "b.txt", "b\n")
    import pullsmith.tools.search_replace as module

    real = module.write_atomic
    calls = []

    def flaky(path, data):
        calls.append(path.name)
        if path.name == "b.txt":
            raise PermissionError(13, "Permission denied")
        real(path, data)

    monkeypatch.setattr(module, "write_atomic", flaky)
    text = "a.txt\n" + block("a\n", "A\n") + "b.txt\n" + block("b\n", "B\n")
    with pytest.raises(SearchReplaceError) as info:
        search_replace(text, None, tmp_path)
    assert str(info.value) == (
        "search_replace: writing b.txt failed (Permission denied); earlier files undone."
    )
    assert a.read_text() == "a\n"
    assert calls == ["a.txt", "b.txt", "a.txt"]
