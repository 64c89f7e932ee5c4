from inventory.export import format_row, to_csv, total_stock

ROWS = [
    ["A-1", "bolt", 120],
    ["A-2", "nut", 80],
    ["B-7", "washer", 15],
]


def test_format_row():
    assert format_row(["A-1", "bolt", 120]) == "A-1,bolt,120"


def test_csv_has_every_row():
    text = to_csv(["sku", "name", "stock"], ROWS)
    lines = text.splitlines()
    assert lines[0] == "sku,name,stock"
    assert lines[1:] == ["A-1,bolt,120", "A-2,nut,80", "B-7,washer,15"]
    assert text.endswith("\n"), "the last line ends with a newline, as every line does"


def test_total_stock():
    assert total_stock(ROWS) == 215
