from __future__ import annotations

import io
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pullsmith.tools.replace_function import (
    ReplaceFunctionError,
    dedent_definition,
    main,
    normalize_name,
    outline,
    replace_function,
)

SCRIPT = Path(sys.executable).parent / "replace_function"

MOD = textwrap.dedent(
    '''\
    import functools


    def parse_row(line):
        """Split a row."""
        return line.split(",")


    class Parser:
        """Parses."""

        @staticmethod
        @functools.cache
        def parse(text):
            return [parse_row(x) for x in text.splitlines()]

        async def fetch(self, url):
            return url

        class Inner:
            def deep(self):
                return 1


    def helper():
        return 2
    '''
)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


@pytest.fixture
def mod(tmp_path: Path) -> Path:
    return write(tmp_path, "pkg/mod.py", MOD)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------- outline


def test_outline_names_every_definition():
    definitions, error = outline(MOD.splitlines())
    assert error is None
    assert [(d.qualname, d.kind, d.start + 1, d.end, d.line) for d in definitions] == [
        ("parse_row", "function", 4, 6, 4),
        ("Parser", "class", 9, 22, 9),
        ("Parser.parse", "function", 12, 15, 14),
        ("Parser.fetch", "function", 17, 18, 17),
        ("Parser.Inner", "class", 20, 22, 20),
        ("Parser.Inner.deep", "function", 21, 22, 21),
        ("helper", "function", 25, 26, 25),
    ]
    assert definitions[2].decorator == "@staticmethod"
    assert definitions[1].body_indent == "    "


def test_outline_by_indentation_when_the_file_does_not_parse():
    broken = MOD.replace("return url", "return (url")
    definitions, error = outline(broken.splitlines())
    assert error is not None and error.startswith("line ")
    found = {d.qualname: (d.start + 1, d.end) for d in definitions}
    assert found["Parser.parse"] == (12, 15)
    assert found["Parser.fetch"] == (17, 18)
    assert found["Parser.Inner.deep"] == (21, 22)
    assert found["helper"] == (25, 26)


def test_outline_finds_definitions_under_if_and_try():
    text = "try:\n    import x\nexcept ImportError:\n    def f():\n        pass\n"
    definitions, _ = outline(text.splitlines())
    assert [d.qualname for d in definitions] == ["f"]


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("parse_row", "parse_row"),
        ("def parse_row(line):", "parse_row"),
        ("async def fetch", "fetch"),
        ("Parser::parse", "Parser.parse"),
        ("parse_row()", "parse_row"),
        ("class Parser:", "Parser"),
    ],
)
def test_normalize_name(raw, name):
    assert normalize_name(raw) == name


# --------------------------------------------------------------------------- the new text


def test_dedent_unindented_indented_and_fenced():
    want = ["def f(x):", "    return x"]
    assert dedent_definition("def f(x):\n    return x\n").lines == want
    assert dedent_definition("        def f(x):\n            return x\n").lines == want
    assert dedent_definition("```python\ndef f(x):\n    return x\n```\n").lines == want


def test_dedent_body_copied_with_its_old_indentation():
    text = "def f(x):\n        y = x\n        return y\n"
    assert dedent_definition(text).lines == ["def f(x):", "    y = x", "    return y"]


def test_dedent_leaves_string_data_at_column_zero():
    text = '    def f():\n        q = """\nSELECT 1\n  FROM t\n        """\n        return q\n'
    snippet = dedent_definition(text)
    assert snippet.lines == [
        "def f():",
        '    q = """',
        "SELECT 1",
        "  FROM t",
        '    """',
        "    return q",
    ]
    assert snippet.indented("    ") == [
        "    def f():",
        '        q = """',
        "SELECT 1",
        "  FROM t",
        '        """',
        "        return q",
    ]


def test_dedent_refuses_text_that_does_not_parse():
    with pytest.raises(ReplaceFunctionError) as info:
        dedent_definition("def f(x:\n    return x\n")
    message = str(info.value)
    assert message.startswith(
        "replace_function: the new text does not parse (line 1 of the new text"
    )
    assert "'def f(x:'" in message


def test_dedent_refuses_empty_input():
    with pytest.raises(ReplaceFunctionError, match="no new definition on stdin"):
        dedent_definition("\n\n")


# --------------------------------------------------------------------------- replacing


def test_replace_top_level_function(mod):
    result = replace_function(
        mod, "parse_row", 'def parse_row(line):\n    """Split."""\n    return line.split(";")\n'
    )
    assert result.summary == "Replaced parse_row in " + str(mod) + " (lines 4-6 -> 4-6)."
    assert mod.read_text() == MOD.replace('"Split a row."', '"Split."').replace('(",")', '(";")')


def test_replace_decorated_method_reindents_and_reports_lines(mod):
    new = "@staticmethod\ndef parse(text):\n    rows = text.splitlines()\n    return rows\n"
    result = replace_function(mod, "Parser.parse", new, shown="pkg/mod.py")
    assert result.summary == "Replaced Parser.parse in pkg/mod.py (lines 12-15 -> 12-15)."
    lines = lines_of(mod)
    assert lines[11:16] == [
        "    @staticmethod",
        "    def parse(text):",
        "        rows = text.splitlines()",
        "        return rows",
        "",
    ]
    assert "functools.cache" not in mod.read_text()  # the decorators were part of the old def


def test_replace_async_method_by_bare_name(mod):
    result = replace_function(
        mod, "fetch", "    async def fetch(self, url):\n        await x\n        return 1\n"
    )
    assert result.old_lines == (17, 18)
    assert result.new_lines == (17, 19)
    assert lines_of(mod)[16:19] == [
        "    async def fetch(self, url):",
        "        await x",
        "        return 1",
    ]


def test_replace_nested_class_method(mod):
    replace_function(mod, "Inner.deep", "def deep(self):\n    return 2\n")
    assert lines_of(mod)[20:22] == ["        def deep(self):", "            return 2"]
    replace_function(mod, "Parser.Inner.deep", "def deep(self):\n    return 3\n")
    assert lines_of(mod)[21] == "            return 3"


def test_replace_whole_class(tmp_path):
    path = write(tmp_path, "c.py", "class A:\n    x = 1\n\n\ny = 2\n")
    replace_function(path, "A", "class A:\n    x = 2\n    z = 3\n")
    assert path.read_text() == "class A:\n    x = 2\n    z = 3\n\n\ny = 2\n"


def test_new_text_with_a_helper_after_it(mod):
    replace_function(
        mod, "helper", "def helper():\n    return _inner()\n\n\ndef _inner():\n    return 3\n"
    )
    assert mod.read_text().endswith(
        "def helper():\n    return _inner()\n\n\ndef _inner():\n    return 3\n"
    )


def test_unchanged_text_is_reported(mod):
    result = replace_function(mod, "helper", "def helper():\n    return 2\n")
    assert result.unchanged
    assert result.summary.endswith("The new text is the same as the old; nothing changed.")
    assert mod.read_text() == MOD


def test_crlf_file_and_missing_final_newline_kept(tmp_path):
    path = tmp_path / "w.py"
    path.write_bytes(b"def a():\r\n    return 1\r\n\r\n\r\ndef b():\r\n    return 2")
    replace_function(path, "a", "def a():\n    x = 5\n    return x\n")
    assert path.read_bytes() == (
        b"def a():\r\n    x = 5\r\n    return x\r\n\r\n\r\ndef b():\r\n    return 2"
    )
    replace_function(path, "b", "def b():\n    return 3\n")
    assert path.read_bytes().endswith(b"def b():\r\n    return 3")


def test_tab_indented_class(tmp_path):
    path = write(tmp_path, "t.py", "class A:\n\tdef f(self):\n\t\treturn 1\n")
    replace_function(path, "A.f", "def f(self):\n    return 2\n")
    assert path.read_text() == "class A:\n\tdef f(self):\n\t    return 2\n"


def test_file_mode_kept(mod):
    mod.chmod(0o754)
    replace_function(mod, "helper", "def helper():\n    return 9\n")
    assert stat.S_IMODE(mod.stat().st_mode) == 0o754
    assert sorted(p.name for p in mod.parent.iterdir()) == ["mod.py"]


def test_property_setter_chosen_by_decorator(tmp_path):
    text = (
        "class A:\n"
        "    @property\n"
        "    def x(self):\n"
        "        return self._x\n"
        "\n"
        "    @x.setter\n"
        "    def x(self, value):\n"
        "        self._x = value\n"
    )
    path = write(tmp_path, "p.py", text)
    replace_function(path, "A.x", "@x.setter\ndef x(self, value):\n    self._x = int(value)\n")
    assert path.read_text() == text.replace("self._x = value", "self._x = int(value)")


def test_same_name_twice_without_a_telling_decorator_is_ambiguous(tmp_path):
    text = "import sys\nif sys.platform == 'win32':\n    def f():\n        return 1\nelse:\n    def f():\n        return 2\n"
    path = write(tmp_path, "p.py", text)
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(path, "f", "def f():\n    return 3\n", shown="p.py")
    assert str(info.value) == (
        "replace_function: f is defined 2 times in p.py (lines 3, 6) and the new text does not "
        "say which (start it with the decorator of the one to replace), or use search_replace "
        "for it; the file was not changed."
    )
    assert path.read_text() == text


def test_bare_method_name_in_two_classes_is_ambiguous(tmp_path):
    text = "class A:\n    def run(self):\n        pass\n\n\nclass B:\n    def run(self):\n        pass\n"
    path = write(tmp_path, "p.py", text)
    with pytest.raises(
        ReplaceFunctionError,
        match=r"run matches 2 definitions in p.py: A.run \(line 2\), B.run \(line 7\); name one",
    ):
        replace_function(path, "run", "def run(self):\n    return 1\n", shown="p.py")


# --------------------------------------------------------------------------- refusals


def test_not_found_lists_definitions_and_suggests(mod):
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(mod, "parse_rows", "def parse_rows(line):\n    pass\n", shown="pkg/mod.py")
    message = str(info.value)
    first, listing, add = message.splitlines()
    assert first == (
        "replace_function: parse_rows not found in pkg/mod.py; the file was not changed. "
        "Did you mean: parse_row?"
    )
    assert listing.startswith("Functions and classes in pkg/mod.py: parse_row (line 4), ")
    assert "Parser (class, line 9)" in listing
    assert add == (
        "To add parse_rows as a new definition at the end of the file, run the same command "
        "with --add: replace_function --add pkg/mod.py parse_rows <<'EOF' ... EOF"
    )
    assert mod.read_text() == MOD


def test_not_found_caps_the_listing(tmp_path):
    text = "".join(f"def f{i}():\n    pass\n\n\n" for i in range(40))
    path = write(tmp_path, "many.py", text)
    with pytest.raises(ReplaceFunctionError, match=r"f24 \(line 97\), \.\.\. \(15 more\)\."):
        replace_function(path, "g", "def g():\n    pass\n")


def test_new_text_must_define_name(mod):
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(mod, "helper", "def helpers():\n    return 3\n")
    assert str(info.value).startswith(
        "replace_function: the new text defines function helpers, not helper;"
    )
    with pytest.raises(
        ReplaceFunctionError,
        match=r"defines no function or class \(it starts with 'x = 1'\), not helper",
    ):
        replace_function(mod, "helper", "x = 1\n")
    with pytest.raises(ReplaceFunctionError, match="defines class Parser, not Parser.fetch"):
        replace_function(
            mod, "Parser.fetch", "class Parser:\n    async def fetch(self):\n        pass\n"
        )
    assert mod.read_text() == MOD


def test_mixed_tabs_and_spaces_refused(tmp_path):
    path = write(tmp_path, "s.py", "class A:\n    def f(self):\n        return 1\n")
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(path, "A.f", "def f(self):\n\treturn 2\n        return 3\n", shown="s.py")
    assert str(info.value).startswith("replace_function: the new text does not parse (line 3")
    assert path.read_text() == "class A:\n    def f(self):\n        return 1\n"


def test_result_that_does_not_parse_leaves_file_untouched(tmp_path):
    # Alone the new method parses; after a one-line class it does not.
    path = write(tmp_path, "s.py", "class A: pass\n")
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(path, "A.m", "def m(self):\n    return 1\n", add=True, shown="s.py")
    assert str(info.value) == (
        "replace_function: the result would not parse (line 3 of s.py, line 1 of the new text: "
        "unexpected indent: 'def m(self):'); s.py was not changed."
    )
    assert path.read_text() == "class A: pass\n"


def test_syntax_error_in_new_text_names_line(mod):
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(mod, "helper", "def helper():\n    x = (1,\n    return x\n")
    assert "line 2 of the new text" in str(info.value) or "line 3 of the new text" in str(
        info.value
    )
    assert mod.read_text() == MOD


def test_broken_file_can_have_the_broken_function_replaced(tmp_path):
    path = write(tmp_path, "b.py", "def a():\n    return (1\n\n\ndef b():\n    return 2\n")
    result = replace_function(path, "a", "def a():\n    return 1\n")
    assert path.read_text() == "def a():\n    return 1\n\n\ndef b():\n    return 2\n"
    assert result.warnings == []


def test_broken_file_elsewhere_gets_a_warning(tmp_path):
    path = write(tmp_path, "b.py", "def a():\n    return (1\n\n\ndef b():\n    return 2\n")
    result = replace_function(path, "b", "def b():\n    return 3\n", shown="b.py")
    assert result.warnings and result.warnings[0].startswith("Warning: b.py still does not parse")
    assert path.read_text().endswith("def b():\n    return 3\n")


def test_non_python_file_refused(tmp_path):
    path = write(tmp_path, "notes.md", "# hi\n")
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(path, "f", "def f():\n    pass\n", shown="notes.md")
    assert str(info.value) == (
        "replace_function: notes.md is not a Python file; replace_function only handles "
        "Python. To edit it use search_replace notes.md <<'EOF' with SEARCH/REPLACE blocks, "
        "or apply_patch."
    )


def test_python_script_without_suffix_accepted(tmp_path):
    path = write(tmp_path, "tool", "#!/usr/bin/env python3\ndef f():\n    pass\n")
    replace_function(path, "f", "def f():\n    return 1\n")
    assert path.read_text().endswith("    return 1\n")


def test_missing_file_refused_with_similar_names(tmp_path):
    write(tmp_path, "pkg/parser.py", "x = 1\n")
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(
            tmp_path / "pkg/parsr.py", "f", "def f():\n    pass\n", shown="pkg/parsr.py"
        )
    assert str(info.value) == (
        "replace_function: pkg/parsr.py does not exist. Similar files: pkg/parser.py. To create "
        "a new file, write it whole: cat > pkg/parsr.py <<'EOF' ... EOF"
    )


def test_bad_name_refused(mod):
    with pytest.raises(ReplaceFunctionError, match="is not a function name"):
        replace_function(mod, "a b", "def f():\n    pass\n")


# --------------------------------------------------------------------------- --add


def test_add_at_module_end(tmp_path):
    path = write(tmp_path, "a.py", "def f():\n    pass\n")
    result = replace_function(path, "g", "def g():\n    return 1\n", add=True, shown="a.py")
    assert path.read_text() == "def f():\n    pass\n\n\ndef g():\n    return 1\n"
    assert result.summary == "Added g to a.py (lines 5-6)."


def test_add_before_main_guard(tmp_path):
    path = write(tmp_path, "a.py", "def f():\n    pass\n\n\nif __name__ == '__main__':\n    f()\n")
    replace_function(path, "g", "def g():\n    return 1\n", add=True)
    assert path.read_text() == (
        "def f():\n    pass\n\n\ndef g():\n    return 1\n\n\nif __name__ == '__main__':\n    f()\n"
    )


def test_add_to_empty_file(tmp_path):
    path = write(tmp_path, "e.py", "")
    replace_function(path, "g", "def g():\n    return 1\n", add=True)
    assert path.read_text() == "def g():\n    return 1\n"


def test_add_method_at_end_of_class(mod):
    result = replace_function(
        mod, "Parser.close", "def close(self):\n    return None\n", add=True, shown="m.py"
    )
    assert result.summary == "Added Parser.close to m.py at the end of class Parser (lines 24-25)."
    lines = lines_of(mod)
    assert lines[19:25] == [
        "    class Inner:",
        "        def deep(self):",
        "            return 1",
        "",
        "    def close(self):",
        "        return None",
    ]


def test_add_refuses_existing_name_and_missing_class(mod):
    with pytest.raises(
        ReplaceFunctionError,
        match=r"helper already exists in .* \(lines 25-26\); to replace it, run the command without --add",
    ):
        replace_function(mod, "helper", "def helper():\n    pass\n", add=True)
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(mod, "Parsr.close", "def close(self):\n    pass\n", add=True)
    message = str(info.value)
    assert "class Parsr not found" in message and "Did you mean: Parser?" in message
    assert "Classes in" in message
    assert mod.read_text() == MOD


# --------------------------------------------------------------------------- command line


def run_cli(cwd: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed")
def test_console_script(tmp_path):
    write(tmp_path, "pkg/mod.py", MOD)
    done = run_cli(
        tmp_path, "pkg/mod.py", "parse_row", stdin="def parse_row(line):\n    return [line]\n"
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "Done. Replaced parse_row in pkg/mod.py (lines 4-6 -> 4-5).\n",
        "",
    )
    failed = run_cli(tmp_path, "pkg/mod.py", "nope", stdin="def nope():\n    pass\n")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.startswith("replace_function: nope not found in pkg/mod.py")
    assert "Traceback" not in failed.stderr
    added = run_cli(tmp_path, "--add", "pkg/mod.py", "nope", stdin="def nope():\n    pass\n")
    assert added.stdout == "Done. Added nope to pkg/mod.py (lines 28-29).\n"


def test_main_in_process(mod, monkeypatch, capsys):
    monkeypatch.chdir(mod.parent.parent)
    monkeypatch.setattr(sys, "stdin", io.StringIO("def helper():\n    return 5\n"))
    assert main(["pkg/mod.py", "helper"]) == 0
    assert (
        capsys.readouterr().out == "Done. Replaced helper in pkg/mod.py (lines 25-26 -> 25-26).\n"
    )


def test_main_accepts_swapped_arguments(mod, monkeypatch, capsys):
    monkeypatch.chdir(mod.parent.parent)
    monkeypatch.setattr(sys, "stdin", io.StringIO("def helper():\n    return 5\n"))
    assert main(["helper", "pkg/mod.py"]) == 0
    assert capsys.readouterr().out.startswith("Done. Replaced helper in pkg/mod.py")


def test_main_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["only_file.py"]) == 1
    assert capsys.readouterr().err == (
        "replace_function: the following arguments are required: name; usage: "
        "replace_function FILE NAME <<'EOF' ... EOF\n"
    )


def test_main_write_error_and_internal_error_are_one_line(mod, monkeypatch, capsys):
    monkeypatch.chdir(mod.parent.parent)

    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pullsmith.tools.replace_function.write_atomic", denied)
    monkeypatch.setattr(sys, "stdin", io.StringIO("def helper():\n    return 5\n"))
    assert main(["pkg/mod.py", "helper"]) == 1
    assert capsys.readouterr().err == (
        "replace_function: cannot write pkg/mod.py: Permission denied; it was not changed.\n"
    )

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("pullsmith.tools.replace_function.replace_function", boom)
    monkeypatch.setattr(sys, "stdin", io.StringIO("x"))
    assert main(["pkg/mod.py", "helper"]) == 1
    assert capsys.readouterr().err == "replace_function: internal error: RuntimeError('boom')\n"
