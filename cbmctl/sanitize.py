"""Untrusted text made safe for a terminal.

Concept names, class names, file names, server answers and error messages may come from anyone. Printed
raw, an ESC or OSC sequence clears the screen or retitles the terminal, a C1 byte (U+009B) starts a
control sequence too, BEL rings, NUL and backspace hide text, a bidi override (U+202E) shows text in
another order than it is stored, and zero-width characters make two different names look the same.
rich does not protect against this: measured with rich 15, `Console.print` and `Text` remove only
BEL, BS, VT, FF and CR, and pass ESC, OSC, NUL, C1 and bidi/zero-width characters through.

    safe_text(text)     -> str   every control character shown visibly as an escape (ESC as `\\x1b`,
                                 U+202E as `\\u202e`, a newline as `\\n`), nothing else changed; use it on any untrusted string
                                 before click.echo / console.print(..., markup=False) / a rich Text cell.
                                 `keep_newlines=True` keeps "\\n" for text that is meant to span lines.
    has_control(text)   -> bool  whether text holds any such character (a tab counts).
    strip_control(text) -> str   the same characters removed, terminal escape sequences (CSI such as
                                 ESC[2J, OSC such as ESC]0;title BEL) as a whole (for repairing text).
    first_control(text) -> str | None   the first one, escaped, for an error message ("holds \\x1b").
    require_plain_folder(path, what)   a one-line error when a folder the user names for output holds one.

"Control character" here means Unicode categories Cc (C0 incl. NUL, TAB, LF, ESC; DEL; C1), Cf (format:
bidi embeddings/overrides/isolates, zero-width space/joiners, soft hyphen, BOM), Zl and Zp (line and
paragraph separators) and Cs (lone surrogates, which also cannot be encoded for output).
safe_text does not touch rich markup: a name such as "[red]x" in a table cell is still markup to rich, so
wrap it in rich.text.Text (or pass markup=False, or rich.markup.escape it) as well.
"""
from __future__ import annotations

import re
import unicodedata

_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# ECMA-48: OSC/DCS/APC/PM/SOS strings up to BEL or ST, CSI sequences up to their final byte, other
# two-character escapes; 7-bit (ESC x) and 8-bit (C1) introducers alike.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b[\]P^_X]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|\x1b[ -~]?")


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in _CONTROL_CATEGORIES


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _controls(text: str):
    # str.isprintable() is False for every control character (and for a few harmless ones such as
    # no-break space), so the common case costs one C call; only the rest is looked at per character.
    return () if text.isprintable() else (c for c in text if _is_control(c))


def safe_text(text: object, keep_newlines: bool = False) -> str:
    """`str(text)` with every control character replaced by a visible escape such as `\\x1b`."""
    text = str(text)
    if keep_newlines:
        return "\n".join(safe_text(line) for line in text.split("\n"))
    if text.isprintable():
        return text
    return "".join(_escape(c) if _is_control(c) else c for c in text)


def has_control(text: str) -> bool:
    """True when `text` holds a control, format (bidi, zero-width), separator or surrogate character."""
    return any(True for _ in _controls(text))


def strip_control(text: str) -> str:
    """`text` without its control characters."""
    if text.isprintable():
        return text
    return "".join(c for c in _ESCAPE_SEQUENCE.sub("", text) if not _is_control(c))


def first_control(text: str) -> str | None:
    """The first control character of `text`, escaped for a message (`\\x1b`), or None."""
    return next((_escape(c) for c in _controls(text)), None)


def require_plain_folder(path, what: str) -> None:
    """Refuse an output folder whose name holds a control character (`what` names the option, `out`): the
    files made under it would carry the character into every listing and shell that shows them."""
    from cbmctl.errors import CbmctlError
    found = first_control(str(path))
    if found is not None:
        raise CbmctlError(f"{what} holds a control character ({found}); choose a plain directory name")
