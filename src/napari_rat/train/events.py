"""What the training loop reports: :class:`TrainEvent`, and its one-line JSON form in logs.

A cluster client finds the event lines (:func:`event_line`) in a job's log and parses them back
(:func:`parse_event_line`), so metrics stream without a shared disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, get_args

#: What a :class:`TrainEvent` reports.
EventKind = Literal[
    "start", "progress", "validation", "checkpoint", "note", "cancelled", "finished"
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


@dataclass
class TrainEvent:
    """One thing that happened; ``kind`` says which, the other fields what."""

    kind: EventKind
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "progress":
            m = self.metrics
            return (
                f"step {self.step}/{self.total_steps} epoch {self.epoch} loss {m['loss']:.4f} "
                f"lr {m['lr']:.2e} {m['samples_per_s']:.1f} samples/s"
            )
        if self.kind == "validation":
            parts = " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
            return f"validation epoch {self.epoch}: {parts}"
        return f"{self.kind}: {self.message or self.path or ''}".rstrip(": ")


#: Marks the machine-readable event lines in a training log (see :func:`event_line`).
EVENT_MARKER = "napari-rat-event "
_LINE_KINDS = ("progress", "validation", "checkpoint", "finished")


def event_line(event: TrainEvent) -> str | None:
    """One log line holding ``event`` as JSON, for the kinds a watcher plots or reports.

    A cluster client finds these lines in a job's log (:func:`parse_event_line`), so metrics
    stream without a shared disk. ``None`` for the other kinds.
    """
    if event.kind not in _LINE_KINDS:
        return None
    body = {
        "kind": event.kind,
        "step": event.step,
        "total_steps": event.total_steps,
        "epoch": event.epoch,
        "metrics": {k: float(v) for k, v in event.metrics.items()},
    }
    if event.path:
        body["path"] = event.path
    return EVENT_MARKER + json.dumps(body, sort_keys=True)


def parse_event_line(line: str) -> TrainEvent | None:
    """The event of a line written by :func:`event_line`, wherever it sits in the line (Ray
    prefixes worker output with the worker's name); ``None`` for any other line."""
    at = line.find(EVENT_MARKER)
    if at < 0:
        return None
    try:
        body = json.loads(line[at + len(EVENT_MARKER) :])
        if body["kind"] not in EVENT_KINDS:
            return None
        return TrainEvent(
            kind=body["kind"],
            step=int(body.get("step", 0)),
            total_steps=int(body.get("total_steps", 0)),
            epoch=int(body.get("epoch", 0)),
            metrics={str(k): float(v) for k, v in body.get("metrics", {}).items()},
            path=body.get("path"),
        )
    except (ValueError, KeyError, TypeError):
        return None
