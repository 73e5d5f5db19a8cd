"""Untrusted names (classes, concepts, paths, metadata) made safe for the TUI and fitted to a width.

Every name shown by the TUI comes from files a user may have been sent. Two things can go wrong: control
characters (ESC, OSC, BEL, bidi overrides) reach the terminal, and text such as "[red]x" is read as
markup by rich or textual (a `str` given to Static.update, DataTable.add_row or a Table cell is markup).
So names pass through `safe_text` (control characters shown as visible escapes) and go to widgets only
as rich `Text` objects (never parsed as markup) or as raw Segment text that has been made safe.
"""
from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.text import Text

from cbmctl.sanitize import safe_text

ELLIPSIS = "…"


def plain(text: object, style: str = "") -> Text:
    """`text` as a rich Text that shows exactly its characters (control characters escaped)."""
    return Text(safe_text(text), style=style)


def cut(text: str, width: int) -> str:
    """`text` (already safe) in at most `width` cells, ending in an ellipsis where it had to be cut."""
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1).rstrip() + ELLIPSIS


def fit(text: str, width: int) -> str:
    """`text` (already safe) in exactly `width` cells: padded with spaces, or cut with an ellipsis."""
    return set_cell_size(cut(text, width), max(width, 0))


def wrap_words(text: str, width: int, lines: int) -> list[str]:
    """`text` (already safe) broken at spaces into at most `lines` lines of at most `width` cells; a word
    longer than a line, or what does not fit in the last line, is cut with an ellipsis."""
    result: list[str] = []
    words = text.split()
    while words and len(result) < lines:
        line = words.pop(0)
        while words and cell_len(line) + 1 + cell_len(words[0]) <= width:
            line += " " + words.pop(0)
        if words and len(result) == lines - 1:
            line += " " + " ".join(words)   # the last line takes the rest, cut below
            words = []
        result.append(cut(line, width))
    return result or [""]


def longest(names, default: int = 0) -> int:
    """The widest of `names` in cells."""
    return max((cell_len(name) for name in names), default=default)
