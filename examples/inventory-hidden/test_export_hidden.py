"""Hidden checks the agent never sees: the e2e test copies this in after the run."""

from inventory.export import to_csv


def test_single_row():
    assert to_csv(["a"], [[1]]) == "a\n1\n"


def test_no_rows():
    assert to_csv(["a", "b"], []) == "a,b\n"


def test_quotes_escaped_in_last_row():
    assert to_csv(["q"], [["x"], ['say "hi"']]).splitlines()[-1] == '"say ""hi"""'
