import pytest

from pullsmith.agent.protocol import FormatError, parse_action


def test_one_block_is_the_command():
    action = parse_action("Let me look.\n```bash\nls -la\ncat a.py\n```\n")
    assert action.command == "ls -la\ncat a.py"
    assert not action.finish


def test_unlabelled_and_sh_blocks_count_as_shell():
    assert parse_action("```\nls\n```").command == "ls"
    assert parse_action("```sh\npwd\n```").command == "pwd"


def test_python_block_is_not_a_command():
    with pytest.raises(FormatError, match="no ```bash block"):
        parse_action("Here is the fix:\n```python\nprint(1)\n```")


def test_only_the_first_of_several_blocks_runs_and_the_model_is_told():
    action = parse_action("```bash\nls\n```\nthen\n```bash\npwd\n```\n```bash\nfinish x\n```")
    assert action.command == "ls" and not action.finish
    assert action.ignored_blocks == 2
    assert "3 ```bash blocks; I ran only the first" in action.note
    assert parse_action("```bash\nls\n```").note == ""


def test_empty_block_is_refused():
    with pytest.raises(FormatError, match="empty"):
        parse_action("```bash\n\n```")


def test_finish_alone():
    action = parse_action('Done.\n```bash\nfinish "Fixed the off-by-one in to_csv"\n```')
    assert action.finish
    assert action.command == ""
    assert action.summary == "Fixed the off-by-one in to_csv"


def test_finish_after_commands_runs_them_first():
    reply = "```bash\ncat > a.py <<'EOF'\nx = 1\nEOF\nfinish 'wrote a.py'\n```"
    action = parse_action(reply)
    assert action.finish
    assert action.command == "cat > a.py <<'EOF'\nx = 1\nEOF"
    assert action.summary == "wrote a.py"


def test_finish_with_multiline_summary():
    action = parse_action('```bash\nfinish "first line\nsecond line"\n```')
    assert action.finish
    assert action.summary == "first line\nsecond line"


def test_finished_word_inside_a_command_is_not_finish():
    action = parse_action("```bash\necho finished\n```")
    assert not action.finish


def test_unclosed_heredoc_is_closed():
    action = parse_action("```bash\ncat > a.py <<'EOF'\nx = 1\n```")
    assert action.command == "cat > a.py <<'EOF'\nx = 1\nEOF"


def test_closed_heredocs_are_left_alone():
    body = "cat > a.py <<EOF\nx = 1\nEOF\ncat > b.py <<-'END'\n\ty = 2\n\tEND\npython a.py"
    assert parse_action(f"```bash\n{body}\n```").command == body


def test_heredoc_terminator_with_trailing_space_counts():
    body = "cat > a.py <<'EOF'\nx = 1\nEOF  \nls"
    assert parse_action(f"```bash\n{body}\n```").command == body


def test_a_bare_finish_line_without_a_fence_still_finishes():
    action = parse_action('All tests pass.\nfinish "to_csv now exports every row"')
    assert action.finish and action.command == ""
    assert action.summary == "to_csv now exports every row"
