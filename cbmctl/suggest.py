"""'Did you mean ...?' for a misspelt name: a concept, a class, a loss, a dataset, a choice (difflib)."""
from __future__ import annotations

import difflib

from cbmctl.sanitize import safe_text

CUTOFF = 0.6  # difflib's ratio below which two names are not taken for one another


def closest(word: str, choices, n: int = 1) -> list[str]:
    """Up to `n` of `choices` closest to `word` (case ignored), best first; none when nothing is close."""
    choices = [str(c) for c in choices]
    lowered = {}
    for choice in choices:
        lowered.setdefault(choice.lower(), choice)
    found = difflib.get_close_matches(str(word).strip().lower(), list(lowered), n=n, cutoff=CUTOFF)
    return [lowered[f] for f in found]


def did_you_mean(word: str, choices) -> str:
    """'; did you mean 'X'?' to append to an error message, or '' when no choice is close."""
    found = closest(word, choices)
    return f"; did you mean {safe_text(repr(found[0]))}?" if found else ""
