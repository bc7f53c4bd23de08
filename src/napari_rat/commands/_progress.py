"""A one-line text progress bar on stderr for long commands."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """``bar(done, total, label)`` redraws one line; ``bar.close()`` ends it."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._last = ""

    def __call__(self, done: int, total: int, label: str = "") -> None:
        frac = done / total if total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        line = (
            f"\r{label:<10} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{done}/{total} {elapsed:6.1f}s"
        )
        if line != self._last:
            self.stream.write(line)
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        if self._last:
            self.stream.write("\n")
            self.stream.flush()
            self._last = ""
