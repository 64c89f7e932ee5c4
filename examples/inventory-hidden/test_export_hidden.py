"""Hidden checks the agent never sees: the e2e test copies this in after the run."""

from inventory.export import to_csv


def test_single_row():
    assert to_csv(["a"], [[1]]) == "a\n1\n"


def test_many_rows_keep_their_order():
    rows = [[n, n * n] for n in range(10)]
    lines = to_csv(["n", "square"], rows).splitlines()
    assert len(lines) == 11
    assert lines[-1] == "9,81"
