"""The nearest valid name to a misspelled one, for messages that say "did you mean ...?".

One helper for every front door that names what it accepts: command-line options
(:mod:`napari_rat.cli`), config keys (:mod:`napari_rat.config`) and units
(:mod:`napari_rat.io.units`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest_name(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (``difflib`` similarity of at least 0.6), or ``None``."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'epochs'?)"`` for the closest choice, or ``""`` when none is close."""
    match = nearest_name(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
