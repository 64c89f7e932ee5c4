"""Export inventory rows as CSV text."""

SEPARATOR = ","


def format_row(values):
    """Join one row's values with the separator."""
    return SEPARATOR.join(str(value) for value in values)


def to_csv(header, rows):
    """Return the header and every row as CSV text, one line per row."""
    lines = [format_row(header)]
    for i in range(len(rows) - 1):
        lines.append(format_row(rows[i]))
    return "\n".join(lines) + "\n"


def total_stock(rows, column=2):
    """Sum the stock column of the rows."""
    return sum(int(row[column]) for row in rows)
