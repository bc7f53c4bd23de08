"""The training loop's bookkeeping: where it is (:class:`LoopState`, saved for ``--resume``),
loss and throughput since the last report (:class:`ProgressWindow`), and the rank-0 metrics log
(:class:`MetricsLogger`: ``metrics.jsonl`` always, TensorBoard when installed)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_rat.train.engines import Engine


@dataclass
class LoopState:
    """Where the loop is; saved with every resumable state and restored by ``--resume``."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best_score: float = -1.0
    best_metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able form the state stores write."""
        return asdict(self)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take over the fields of a saved state (unknown keys are ignored)."""
        for key in self.__dataclass_fields__:
            if key in saved:
                setattr(self, key, saved[key])


@dataclass
class ProgressWindow:
    """Loss and throughput since the last progress report."""

    start: float = field(default_factory=time.perf_counter)
    samples: int = 0
    loss: float = 0.0
    batches: int = 0

    def add(self, loss: torch.Tensor, batch_size: int) -> None:
        self.samples += batch_size
        self.loss += float(loss.detach())
        self.batches += 1

    def report(self, engine: Engine, world_size: int) -> dict[str, float]:
        """The progress metrics; the window starts again."""
        elapsed = time.perf_counter() - self.start
        metrics = {
            "loss": self.loss / max(self.batches, 1),
            "lr": engine.lr,
            "grad_norm": engine.last_grad_norm,
            "samples_per_s": self.samples * world_size / max(elapsed, 1e-9),
        }
        self.start, self.samples, self.loss, self.batches = time.perf_counter(), 0, 0.0, 0
        return metrics


class MetricsLogger:
    """Rank-0 metrics: JSON lines always, TensorBoard when it is installed."""

    def __init__(self, folder: Path | None):
        self.file = None
        self.tb = None
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, kind: str, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if self.file is None:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, "time": time.time(), **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
