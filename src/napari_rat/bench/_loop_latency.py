"""How quickly a napari viewer's Qt event loop answers, measured while it runs.

Two measurements run side by side inside the real event loop:

- **ticks**: a precise ``QTimer`` fires every ``tick_ms``; each tick's lateness is the time since
  the previous tick minus ``tick_ms`` (floored at 0: Qt catches up on a late timer with an early
  tick). A blocked loop shows up as one late tick as long as the block.
- **probes**: a plain Python thread, independent of the loop, posts an interaction every
  ``probe_ms`` (a queued signal, as input from the window system is queued). Recorded per probe:
  the time from posting until the interaction was handled (its handler included), and until the
  canvas next finished drawing.

Posting from another thread matters: a probe fired by a timer of the blocked loop itself would
start late and so under-report the wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QEventLoop, QObject, Qt, QTimer, Signal


@dataclass
class LoopLatency:
    """What one measurement saw: latencies in milliseconds, times in ``perf_counter`` seconds.

    ``tick_at``/``probe_at`` hold when each tick arrived and when each probe was posted, so a
    caller can split the series by phase (:meth:`summary` with ``between``).
    """

    start: float
    seconds: float
    tick_ms: float
    lateness_ms: list[float] = field(default_factory=list)
    tick_at: list[float] = field(default_factory=list)
    response_ms: list[float] = field(default_factory=list)
    redraw_ms: list[float] = field(default_factory=list)
    probe_at: list[float] = field(default_factory=list)

    def summary(self, between: tuple[float, float] | None = None) -> dict[str, dict[str, float]]:
        """Count, median, p99 and max of each series (``nan`` for an empty one).

        ``between``: only ticks arriving and probes posted in this ``perf_counter`` interval.
        """
        when = {"lateness_ms": self.tick_at, "response_ms": self.probe_at}
        when["redraw_ms"] = self.probe_at[: len(self.redraw_ms)]
        out = {}
        for name, times in when.items():
            values = np.asarray(getattr(self, name)[: len(times)], float)
            if between is not None:
                t = np.asarray(times, float)
                values = values[(t >= between[0]) & (t < between[1])]
            if values.size:
                stats = np.percentile(values, [50, 99])
                out[name] = {
                    "n": int(values.size),
                    "median": float(stats[0]),
                    "p99": float(stats[1]),
                    "max": float(values.max()),
                }
            else:
                out[name] = {"n": 0, "median": np.nan, "p99": np.nan, "max": np.nan}
        return out


class _Probe(QObject):
    """Receives the probe thread's posts in the GUI thread (queued connection)."""

    posted = Signal(float)

    def __init__(self, interact: Callable[[], None] | None, result: LoopLatency):
        super().__init__()
        self._interact = interact
        self._result = result
        self._waiting_draw: list[float] = []
        self.posted.connect(self._handle, Qt.ConnectionType.QueuedConnection)

    def _handle(self, t_post: float) -> None:
        if self._interact is not None:
            self._interact()
            self._waiting_draw.append(t_post)
        self._result.probe_at.append(t_post)
        self._result.response_ms.append(1000 * (time.perf_counter() - t_post))

    def on_draw(self, *_) -> None:
        now = time.perf_counter()
        self._result.redraw_ms.extend(1000 * (now - t) for t in self._waiting_draw)
        self._waiting_draw.clear()


def contrast_toggle(layer) -> Callable[[], None]:
    """An interaction: nudge the layer's contrast limits back and forth (a visible change)."""
    lo, hi = (float(v) for v in layer.contrast_limits)
    other = (lo, lo + 0.9 * (hi - lo) if hi > lo else hi + 1.0)
    state = {"flip": False}

    def interact() -> None:
        state["flip"] = not state["flip"]
        layer.contrast_limits = other if state["flip"] else (lo, hi)

    return interact


def measure_event_loop(
    viewer,
    *,
    until: Callable[[], bool] | None = None,
    seconds: float | None = None,
    interact: Callable[[], None] | None = None,
    tick_ms: int = 10,
    probe_ms: int = 100,
    tail_s: float = 0.0,
    timeout_s: float = 3600.0,
) -> LoopLatency:
    """Run the viewer's event loop and measure how late it answers.

    Parameters
    ----------
    viewer
        A napari viewer (its canvas's draw events time the redraws).
    until
        Stop once this returns true (checked at every tick); or give ``seconds``.
    seconds
        Measure for this long (the idle baseline).
    interact
        Called in the GUI thread for each probe (e.g. :func:`contrast_toggle`); ``None`` only
        times the delivery of the probes.
    tick_ms, probe_ms
        Timer interval and interval between probes.
    tail_s
        Keep measuring this long after ``until`` (the first draw of new layers).
    timeout_s
        Give up after this long.

    Returns
    -------
    LoopLatency
        ``seconds`` is the time until ``until`` held (or ``seconds``), tail excluded.
    """
    if (until is None) == (seconds is None):
        raise ValueError("give exactly one of `until` and `seconds`")
    result = LoopLatency(start=time.perf_counter(), seconds=0.0, tick_ms=float(tick_ms))
    probe = _Probe(interact, result)
    draw_events = viewer.window._qt_viewer.canvas.events.draw
    draw_events.connect(probe.on_draw)
    loop = QEventLoop()
    stop_probes = threading.Event()

    def post_probes() -> None:
        while not stop_probes.wait(probe_ms / 1000):
            probe.posted.emit(time.perf_counter())

    start = result.start
    state = {"last": start, "done_at": None}

    def on_tick() -> None:
        now = time.perf_counter()
        result.tick_at.append(now)
        result.lateness_ms.append(max(0.0, 1000 * (now - state["last"]) - tick_ms))
        state["last"] = now
        if state["done_at"] is None:
            finished = until() if until is not None else now - start >= seconds
            if finished or now - start > timeout_s:
                state["done_at"] = now
        if state["done_at"] is not None and now - state["done_at"] >= tail_s:
            loop.quit()

    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(tick_ms)
    ticker.timeout.connect(on_tick)
    poster = threading.Thread(target=post_probes, name="napari-rat-latency-probe", daemon=True)
    try:
        ticker.start()
        poster.start()
        loop.exec()
    finally:
        ticker.stop()
        stop_probes.set()
        poster.join()
        draw_events.disconnect(probe.on_draw)
        # Deliver probes already posted, so none is left queued for a deleted receiver.
        loop.processEvents()
    result.seconds = (state["done_at"] or time.perf_counter()) - start
    return result
