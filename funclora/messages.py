"""How funclora words what it reports: an error in one line, and text cut to fit a column.

>>> one_line(ValueError("bad\\n   input"))
'bad input'
>>> cut("goldfish, Carassius auratus", 12, "~")
'goldfish, C~'
"""
from __future__ import annotations

__all__ = ["cut", "one_line"]


def cut(text: str, width: int, mark: str = "...") -> str:
    """`text` if it fits in `width` characters, else its start and `mark`, `width` characters in all."""
    return text if len(text) <= width else text[: width - len(mark)] + mark


def one_line(error: BaseException, width: int | None = 160) -> str:
    """The message of `error` on one line (its type name if it has none), cut to `width` characters
    (None: not cut), to quote inside a message of our own."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if width is None else cut(text, width)
