"""The error a front door (a ``napari-rat`` subcommand or benchmark) refuses its input with.

It lives below both :mod:`napari_rat.commands` and :mod:`napari_rat.bench` so that neither
imports :mod:`napari_rat.cli` (which discovers the commands) to raise it.
"""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing error: printed as one line (no traceback) and exit code 2."""
