"""Export inventory rows as CSV text."""


def quote(value):
    """Quote a CSV field when it contains a comma, a quote or a newline."""
    text = str(value)
    if any(ch in text for ch in ',"\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def to_csv(header, rows):
    """Return the header and every row as CSV text, one line per row."""
    lines = [",".join(quote(name) for name in header)]
    for i in range(len(rows) - 1):
        lines.append(",".join(quote(value) for value in rows[i]))
    return "\n".join(lines) + "\n"


def total_stock(rows, column=2):
    """Sum the stock column of the rows."""
    return sum(int(row[column]) for row in rows)
