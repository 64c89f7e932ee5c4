"""Text cut to fit: one line for a message, a commit subject or a PR title."""

from __future__ import annotations


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (its whitespace runs made single spaces), cut to `limit` characters
    with "…" at the end when it was longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def subject_line(line: str, limit: int = 72) -> tuple[str, str]:
    """A subject of at most `limit` characters from `line`, and what of it a body must still
    say: the first sentence when it fits (the rest goes to the body), else the words that fit
    with "…" (and the whole line in the body), so no word of it is lost."""
    line = " ".join(line.split())
    if len(line) <= limit:
        return line, ""
    end = max(line.rfind(mark, 0, limit) for mark in (". ", "; "))
    if end >= limit // 3:
        return line[: end + (1 if line[end] == "." else 0)], line[end + 2 :]
    cut = line.rfind(" ", 0, limit - 1)
    cut = cut if cut >= limit // 3 else limit - 1
    return line[:cut].rstrip(" ,:") + "…", line
