"""What the "Train on cluster" dock shows of its jobs: the poller that reads them in a worker,
and the job table, the selected job's log and its loss / validation plot.

The poller hands the GUI thread only what is new, ready to show (:class:`PollUpdate`): lines
to append and a finished plot image, drawn off the GUI thread with matplotlib's Agg canvas.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

POLL_S = 2.0
JOB_COLUMNS = ("job", "run", "status", "step", "loss", "val score")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class PollUpdate:
    """What one poll hands to the GUI thread: only what is new, ready to show."""

    summaries: list
    job: str | None  # the job the lines and the plot are of
    new_lines: list[str]
    from_start: bool  # the lines begin the job's log (the log view starts over)
    plot: tuple | None  # (series, RGBA image) when the plot changed, else None


def poll_jobs(client, selected, closing):
    """Worker generator: every few seconds, the jobs, and the selected job's new log lines
    (``from_start`` when they begin its log) and its plot when its metrics changed.

    The GUI thread only appends lines and sets a finished image: replacing a growing log's whole
    text blocked the viewer for seconds, and drawing the plot there cost it hundreds of ms per
    new metric while the training workers held the CPU.
    """
    from napari_rat.train.loop import EVENT_MARKER

    shown_job, seen, plotted = None, 0, None
    while not closing():
        summaries = client.jobs()  # reads every running job's log
        job = selected()
        if job != shown_job:
            shown_job, seen, plotted = job, 0, None
        new: list[str] = []
        from_start, plot = seen == 0, None
        if job:
            lines = client.logs(job, max_age_s=POLL_S / 2).splitlines()  # just read by jobs()
            fresh, seen = lines[seen:], len(lines)
            # the machine lines feed the plot and the table; the log shows what people read,
            # without the terminal colours Ray puts around worker names
            new = [_ANSI.sub("", line) for line in fresh if EVENT_MARKER not in line]
            series = _metric_series(client.events(job, max_age_s=POLL_S / 2))
            if series != plotted:
                plotted, plot = series, (series, _render_metrics(*series))
        yield PollUpdate(summaries, job, new, from_start, plot)
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline and not closing():
            time.sleep(0.1)


class JobLog:
    """The selected job's log: appended to, never rewritten, and capped (oldest lines go)."""

    MAX_LINES = 5000

    def __init__(self) -> None:
        from qtpy.QtWidgets import QPlainTextEdit

        self.widget = QPlainTextEdit()
        self.widget.setReadOnly(True)
        self.widget.setMaximumBlockCount(self.MAX_LINES)
        self.widget.setMinimumHeight(120)

    def add(self, lines: list[str], *, from_start: bool) -> None:
        if from_start:
            self.widget.clear()
        if lines:
            self.widget.appendPlainText("\n".join(lines))
            bar = self.widget.verticalScrollBar()
            bar.setValue(bar.maximum())

    @property
    def value(self) -> str:
        return self.widget.toPlainText()


class JobTable:
    """A read-only table of the jobs."""

    def __init__(self) -> None:
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.widget = QTableWidget(0, len(JOB_COLUMNS))
        self.widget.setHorizontalHeaderLabels(list(JOB_COLUMNS))
        self.widget.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.widget.setMinimumHeight(100)

    def show(self, summaries) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        self.widget.setRowCount(len(summaries))
        for row, s in enumerate(summaries):
            latest = s.latest
            cells = (
                s.submission_id,
                s.run_name,
                s.status,
                f"{latest['step']:.0f}" if "step" in latest else "",
                f"{latest['loss']:.4f}" if "loss" in latest else "",
                f"{latest['val_score']:.3f}" if "val_score" in latest else "",
            )
            for col, text in enumerate(cells):
                self.widget.setItem(row, col, QTableWidgetItem(text))

    def rows(self) -> list[list[str]]:
        return [
            [self.widget.item(r, c).text() for c in range(self.widget.columnCount())]
            for r in range(self.widget.rowCount())
        ]


PLOT_SIZE_PX = (400, 240)


def _metric_series(events) -> tuple[tuple, tuple]:
    """(step, loss) of the progress events and (step, score) of the validation events."""
    loss = tuple(
        (e.step, e.metrics["loss"]) for e in events if e.kind == "progress" and "loss" in e.metrics
    )
    score = tuple(
        (e.step, e.metrics["score"])
        for e in events
        if e.kind == "validation" and "score" in e.metrics
    )
    return loss, score


def _render_metrics(loss: tuple, score: tuple) -> np.ndarray:
    """The loss and validation plot as an RGBA image, drawn with matplotlib's Agg canvas (no
    Qt: safe in a worker thread, one figure per call)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = PLOT_SIZE_PX
    figure = Figure(figsize=(width / 100, height / 100), dpi=100, tight_layout=True)
    canvas = FigureCanvasAgg(figure)
    loss_axes = figure.add_subplot(111)
    score_axes = loss_axes.twinx()
    if loss:
        loss_axes.plot(*zip(*loss, strict=True), color="tab:blue", label="loss")
    if score:
        score_axes.plot(*zip(*score, strict=True), "o-", color="tab:orange", label="val score")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss", color="tab:blue")
    score_axes.set_ylabel("val score", color="tab:orange")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class MetricsPlot:
    """Training loss and validation score against the step: an image drawn by the poller
    (:func:`_render_metrics`) and shown here."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QLabel

        self.widget = QLabel()
        self.widget.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.widget.setMinimumHeight(PLOT_SIZE_PX[1])
        self.shown: tuple = ((), ())  # the (loss, score) series on show

    def show(self, series: tuple, image: np.ndarray) -> None:
        from qtpy.QtGui import QImage, QPixmap

        height, width = image.shape[:2]
        qimage = QImage(image.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        self.widget.setPixmap(QPixmap.fromImage(qimage))  # copies the pixels
        self.shown = series

    def clear(self) -> None:
        self.widget.clear()
        self.shown = ((), ())
