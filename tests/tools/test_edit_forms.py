from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pullsmith.tools.apply_patch import PatchError, apply_patch
from pullsmith.tools.edit_forms import (
    FAILURE_MARKERS,
    FORMS,
    SUCCESS_MARKERS,
    EditUse,
    classify,
    scan,
    whole_file_writes,
)
from pullsmith.tools.replace_function import ReplaceFunctionError, replace_function
from pullsmith.tools.search_replace import SearchReplaceError, search_replace


def forms(command: str, exit_code: int = 0, output: str = "") -> list[tuple[str, bool]]:
    return [(use.form, use.ok) for use in classify(command, exit_code, output)]


def test_forms_and_edit_use_shape():
    assert FORMS == ("whole-file", "apply-patch", "replace-function", "search-replace", "sed")
    use = EditUse("sed", True, "sed -i")
    with pytest.raises(dataclasses.FrozenInstanceError):
        use.ok = False  # type: ignore[misc]
    assert hash(use) == hash(EditUse("sed", True, "sed -i"))


def test_no_edit_in_plain_commands():
    assert classify("ls -la && python -m pytest -q 2>&1 | tail -5", 1, "1 failed") == []
    assert classify("", 0, "") == []


# --------------------------------------------------------------------------- whole-file


@pytest.mark.parametrize(
    "command",
    [
        "cat > pkg/a.py <<'EOF'\nx = 1\nEOF",
        'cat <<"EOF" > pkg/a.py\nx = 1\nEOF',
        "cat >pkg/a.py <<EOF\nx = 1\nEOF",
        "cat<<EOF>pkg/a.py\nx = 1\nEOF",
        "cat >> pkg/a.py << 'EOF'\nx = 1\nEOF",
        "cat > pkg/a.py <<-EOF\n\tx = 1\n\tEOF",
        "tee pkg/a.py <<'EOF'\nx = 1\nEOF",
        "tee -a pkg/a.py > /dev/null <<'EOF'\nx = 1\nEOF",
        "printf 'x = 1\\n' > pkg/a.py",
        "echo 'x = 1' > pkg/a.py",
        'echo "x = 1" >> pkg/a.py',
        "mkdir -p pkg && cat > pkg/a.py <<'EOF'\nx = 1\nEOF\n",
    ],
)
def test_whole_file_writes(command):
    [use] = classify(command, 0, "")
    assert use == EditUse("whole-file", True, use.detail)
    assert use.detail.endswith("pkg/a.py")


@pytest.mark.parametrize(
    "command",
    [
        "echo hi > /dev/null",
        "echo hi 2>&1",
        "printf x >&2",
        "python run.py > out.txt",
        "cat a.py > b.py",  # a copy, not a written text
        "cat pkg/a.py",
        "echo 'cat > f.py <<EOF'",
        "# cat > f.py <<EOF\nls",
        "ls 2> errors.txt",
    ],
)
def test_not_whole_file_writes(command):
    assert classify(command, 0, "") == []


def test_heredoc_bodies_are_not_commands():
    command = (
        "cat > notes.sh <<'EOF'\n"
        "sed -i 's/a/b/' x\n"
        "apply_patch <<'EOT'\n"
        "cat > other.py <<'X'\n"
        "EOF\n"
        "python -m pytest -q"
    )
    assert forms(command) == [("whole-file", True)]


def test_two_whole_file_writes_in_order():
    command = "cat > a.py <<'EOF'\na\nEOF\ncat > b.py <<'EOF'\nb\nEOF\n"
    assert [u.detail for u in classify(command, 0, "")] == ["cat > a.py", "cat > b.py"]


def test_unterminated_heredoc_fails_that_write_only():
    command = "cat > a.py <<'EOF'\na\nEOF\ncat > b.py <<'EOF'\nb\nEOF \n"  # 'EOF ' does not end it
    output = "bash: warning: here-document at line 4 delimited by end-of-file (wanted `EOF')"
    first, second = classify(command, 0, output)
    assert first == EditUse("whole-file", True, "cat > a.py")
    assert second == EditUse(
        "whole-file", False, "cat > b.py: here-document not terminated (no line 'EOF')"
    )


def test_heredoc_warning_explained_by_another_heredoc_does_not_fail_the_write():
    command = "cat > a.py <<'EOF'\na\nEOF\npython - <<'PY'\nprint(1)\n"
    output = "bash: warning: here-document at line 4 delimited by end-of-file (wanted `PY')"
    assert forms(command, 0, output) == [("whole-file", True)]


def test_heredoc_warning_without_a_static_reason_fails_the_writes():
    output = (
        "bash: line 3: warning: here-document at line 1 delimited by end-of-file (wanted `EOF')"
    )
    [use] = classify("cat > a.py <<'EOF'\na\nEOF", 0, output)
    assert use == EditUse(
        "whole-file", False, "cat > a.py: bash: here-document delimited by end-of-file"
    )


@pytest.mark.parametrize(
    "output",
    [
        "bash: -c: line 3: syntax error near unexpected token `('",
        "bash: -c: line 9: syntax error: unexpected end of file",
        "bash: -c: line 4: unexpected EOF while looking for matching `''",
    ],
)
def test_bash_syntax_problem_fails_whole_file(output):
    [use] = classify("echo 'it's' > a.txt", 2, output)
    assert not use.ok
    assert use.detail == f"echo > a.txt: {output}"


def test_target_that_cannot_be_opened_fails():
    output = "bash: line 1: nodir/x.py: No such file or directory"
    [use] = classify("cat > nodir/x.py <<'EOF'\nx\nEOF", 1, output)
    assert use == EditUse("whole-file", False, f"cat > nodir/x.py: {output}")
    # Another file's error says nothing about this write.
    assert forms(
        "cat > x.py <<'EOF'\nx\nEOF\ncat y.py", 1, "cat: y.py: No such file or directory"
    ) == [("whole-file", True)]


def test_whole_file_ignores_exit_code():
    assert forms("cat > a.py <<'EOF'\nx\nEOF\npython -m pytest -q", 1, "1 failed") == [
        ("whole-file", True)
    ]


# --------------------------------------------------------------------------- the tools


def test_tool_results_matched_in_order():
    command = (
        "apply_patch <<'EOF'\n*** Begin Patch\nEOF\n"
        "replace_function m.py f <<'EOF'\ndef f(): pass\nEOF\n"
        "search_replace m.py <<'EOF'\nEOF\n"
    )
    output = (
        "Done. M m.py\n"
        "replace_function: f not found in m.py; the file was not changed.\n"
        "search_replace: block 1 of 1 (input line 1): the SEARCH text was not found in m.py\n"
    )
    assert classify(command, 1, output) == [
        EditUse("apply-patch", True, "Done. M m.py"),
        EditUse(
            "replace-function",
            False,
            "replace_function: f not found in m.py; the file was not changed.",
        ),
        EditUse(
            "search-replace",
            False,
            "search_replace: block 1 of 1 (input line 1): the SEARCH text was not found in m.py",
        ),
    ]


def test_tool_without_result_line_falls_back_to_exit_code():
    command = "cd nowhere && search_replace m.py <<'EOF'\nEOF"
    assert forms(command, 1, "bash: cd: nowhere: No such file or directory") == [
        ("search-replace", False)
    ]
    [use] = classify(command, 0, "")
    assert use == EditUse(
        "search-replace", True, "search_replace: no result line in the output; exit code 0"
    )


def test_second_use_after_a_failure_counts_by_exit_code():
    command = "replace_function a.py f <<'A'\nx\nA\nreplace_function a.py g <<'B'\ny\nB"
    output = "replace_function: the new text defines no function or class, not f"
    assert forms(command, 1, output) == [("replace-function", False), ("replace-function", False)]


def test_tool_in_a_loop_counts_every_result():
    command = "for f in a.py b.py; do search_replace $f <<'EOF'\nEOF\ndone\nls"
    output = "Done. Applied 1 block(s) to a.py.\nsearch_replace: block 1 of 1 (input line 1): x\n"
    assert forms(command, 1, output) == [("search-replace", True), ("search-replace", False)]


def test_tool_by_path_and_module():
    assert forms(
        ".venv/bin/replace_function m.py f <<'EOF'\nEOF",
        0,
        "Done. Replaced f in m.py (lines 1-2 -> 1-3).",
    ) == [("replace-function", True)]
    assert forms("python3 -m pullsmith.tools.apply_patch -f p.patch", 0, "Done. A x.py") == [
        ("apply-patch", True)
    ]
    assert forms(
        "timeout 30 search_replace m.py <<'EOF'\nEOF", 0, "Done. Applied 1 block(s) to m.py."
    ) == [("search-replace", True)]
    assert forms("env -i X=1 apply_patch -f p", 0, "Done. D x") == [("apply-patch", True)]
    assert classify("search_replace --help", 0, "usage: ...") == []
    assert classify("which apply_patch", 0, "/x/apply_patch") == []


def test_tool_name_in_heredoc_or_quotes_is_not_a_use():
    assert classify("echo 'use apply_patch'", 0, "use apply_patch") == []
    assert forms("cat > doc.md <<'EOF'\nrun replace_function f.py g\nEOF", 0, "") == [
        ("whole-file", True)
    ]


def test_markers_do_not_cross_tools():
    command = "apply_patch <<'EOF'\nx\nEOF"
    assert forms(command, 0, "Done. Applied 1 block(s) to m.py.\nDone. A m.py") == [
        ("apply-patch", True)
    ]


def _apply_patch_errors(tmp_path: Path) -> list[str]:
    (tmp_path / "m.py").write_text("a\n")
    (tmp_path / "b.py").write_text("b\n")
    patches = [
        "hello",
        "*** Begin Patch\n*** Frobnicate: x\n*** End Patch",
        "*** Begin Patch\n*** End Patch",
        "*** Begin Patch\n*** Update File: m.py\n@@\n-zzz\n*** End Patch",
        "*** Begin Patch\n*** Update File: m.py\n@@ nope\n-a\n*** End Patch",
        "*** Begin Patch\n*** Update File: missing.py\n-a\n*** End Patch",
        "*** Begin Patch\n*** Delete File: missing.py\n*** End Patch",
        "*** Begin Patch\n*** Add File: m.py\n+x\n*** End Patch",
        "*** Begin Patch\n*** Update File: m.py\n*** Move to: b.py\n*** End Patch",
        "*** Begin Patch\n*** Add File: /abs.py\n+x\n*** End Patch",
        "*** Begin Patch\n*** Add File: ../out.py\n+x\n*** End Patch",
        "*** Begin Patch\n*** Add File: sub/..\n+x\n*** End Patch",
    ]
    messages = []
    for text in patches:
        with pytest.raises(PatchError) as info:
            apply_patch(text, tmp_path)
        messages.append(str(info.value))
    return messages


def test_every_apply_patch_error_matches_its_failure_marker(tmp_path):
    for message in _apply_patch_errors(tmp_path):
        first = message.splitlines()[0]
        assert FAILURE_MARKERS["apply-patch"].match(first), first
        assert not SUCCESS_MARKERS["apply-patch"].match(first)
        [use] = classify("apply_patch <<'EOF'\nEOF", 1, message)
        assert use.ok is False


def test_real_tool_messages_match_markers(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    done = replace_function(tmp_path / "m.py", "f", "def f():\n    return 2\n", shown="m.py")
    assert SUCCESS_MARKERS["replace-function"].match("Done. " + done.summary)
    added = replace_function(tmp_path / "m.py", "g", "def g():\n    pass\n", add=True)
    assert SUCCESS_MARKERS["replace-function"].match("Done. " + added.summary)
    with pytest.raises(ReplaceFunctionError) as info:
        replace_function(tmp_path / "m.py", "h", "def h():\n    pass\n")
    assert FAILURE_MARKERS["replace-function"].match(str(info.value))
    applied = search_replace(
        "<<<<<<< SEARCH\n    return 2\n=======\n    return 3\n>>>>>>> REPLACE\n", "m.py", tmp_path
    )
    assert SUCCESS_MARKERS["search-replace"].match("Done. " + applied.summary)
    with pytest.raises(SearchReplaceError) as info2:
        search_replace("nothing", "m.py", tmp_path)
    assert FAILURE_MARKERS["search-replace"].match(str(info2.value))
    result = apply_patch("*** Begin Patch\n*** Add File: n.py\n+x\n*** End Patch", tmp_path)
    assert SUCCESS_MARKERS["apply-patch"].match("Done. " + result.summary)


# --------------------------------------------------------------------------- sed


@pytest.mark.parametrize(
    "command",
    [
        "sed -i 's/a/b/' f.py",
        "sed -i.bak -e 's/a/b/' f.py",
        "sed -Ei 's/a+/b/' f.py",
        "sed --in-place 's/a/b/' f.py",
        "sed -e 's/a/b/' -i f.py",
        "find . -name '*.py' -exec sed -i 's/a/b/' {} +",
        "grep -l a *.py | xargs sed -i 's/a/b/'",
    ],
)
def test_sed_in_place(command):
    assert forms(command) == [("sed", True)]


def test_sed_without_in_place_is_not_an_edit():
    assert classify("sed -n '1,20p' f.py", 0, "") == []
    assert classify("sed 's/a/b/' f.py > g.py", 0, "") == []


def test_sed_error_fails_it():
    output = "sed: -e expression #1, char 5: unterminated `s' command"
    assert classify("sed -i 's/a/b f.py", 1, output) == [EditUse("sed", False, output)]
    assert forms("sed -i 's/a/b/' f.py && pytest -q", 1, "1 failed") == [("sed", True)]


# --------------------------------------------------------------------------- scanning


def test_scan_drops_bodies_and_neutralizes_quotes():
    skeleton, heredocs = scan("cat > a <<'EOF'\nbody > x\nEOF\necho \"a > b\" # c > d\n")
    assert "body" not in skeleton and "c > d" not in skeleton
    assert '"a___b"' in skeleton
    assert [(h.delimiter, h.terminated) for h in heredocs] == [("EOF", True)]


def test_two_heredocs_on_one_line():
    _, heredocs = scan("paste <<A <<B\n1\nA\n2\nB\n")
    assert [(h.delimiter, h.terminated) for h in heredocs] == [("A", True), ("B", True)]


def test_classify_is_deterministic():
    command = "cat > a <<'EOF'\nx\nEOF\nsed -i s/a/b/ a\napply_patch <<'EOF'\nEOF"
    output = "Done. M a\nbash: warning: here-document at line 9 delimited by end-of-file"
    assert classify(command, 0, output) == classify(command, 0, output)


# --------------------------------------------------------------------------- real bash


BIN = str(Path(sys.executable).parent)


def run_bash(command: str, cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout


@pytest.mark.skipif(
    shutil.which("bash") is None or not (Path(BIN) / "search_replace").exists(),
    reason="needs bash and the console scripts",
)
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("cat > a.py <<'EOF'\nx = 1\nEOF\n", [("whole-file", True)]),
        ("cat > a.py <<'EOF'\nx = 1\n  EOF\n", [("whole-file", False)]),
        ("cat > no/a.py <<'EOF'\nx = 1\nEOF\n", [("whole-file", False)]),
        ("echo 'it's' > a.txt\n", [("whole-file", False)]),
        (
            "search_replace m.py <<'EOF'\n<<<<<<< SEARCH\n    return 1\n=======\n    return 2\n"
            ">>>>>>> REPLACE\nEOF\n",
            [("search-replace", True)],
        ),
        (
            "search_replace m.py <<'EOF'\n<<<<<<< SEARCH\nnope\n=======\n>>>>>>> REPLACE\nEOF\n",
            [("search-replace", False)],
        ),
        (
            "replace_function m.py f <<'EOF'\ndef f():\n    return 3\nEOF\n",
            [("replace-function", True)],
        ),
        (
            "replace_function m.py g <<'EOF'\ndef g():\n    return 3\nEOF\n",
            [("replace-function", False)],
        ),
        (
            "apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: m.py\n-    return 1\n+    return 4\n"
            "*** End Patch\nEOF\n",
            [("apply-patch", True)],
        ),
        (
            "apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: x.py\n-a\nEOF\n",
            [("apply-patch", False)],
        ),
        ("sed -i 's/return 1/return 5/' m.py", [("sed", True)]),
        ("sed -i 's/return 1/return 5' m.py", [("sed", False)]),
    ],
)
def test_classify_real_bash_runs(tmp_path, command, expected):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    exit_code, output = run_bash(command, tmp_path)
    assert forms(command, exit_code, output) == expected, output


def test_whole_file_writes_gives_each_replaced_file_and_its_heredoc():
    command = (
        "cat > a.py <<'EOF'\nx = 1\ny = 2\nEOF\n"
        "cat >> b.py <<EOF\nappended\nEOF\n"
        "cat <<-X > c.py\n\tq\nX\n"
        "echo 'cat > d.py <<EOF' && printf 'z' > e.py\n"
        "cat > f.py <<'EOF'\nnever ended\n"
    )
    assert whole_file_writes(command) == [("a.py", "x = 1\ny = 2\n"), ("c.py", "q\n")]
