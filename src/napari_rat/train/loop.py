"""The one training loop, used in-process, under DeepSpeed and inside Ray Train workers.

:func:`train_events` is a generator: it yields :class:`TrainEvent` objects (start, progress,
validation, checkpoint, note, cancelled, finished) and stops early when ``cancel`` is set, after
saving. A widget wraps it in a thread worker; the CLI prints the events; Ray workers run it
with a store that reports to Ray. Only rank 0 logs (TensorBoard, ``metrics.jsonl``) and writes
the single-file ``best``/``last`` checkpoints.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_rat.config import ExperimentConfig, save_config
from napari_rat.model import build_model, load_checkpoint, save_checkpoint
from napari_rat.train.checkpoint_store import LocalStore, StateStore
from napari_rat.train.datasets import DataBundle, build_data, collate
from napari_rat.train.distributed import DistEnv, configure_threads, detect_dist_env
from napari_rat.train.evaluation import evaluate_regions
from napari_rat.train.losses import segmentation_loss
from napari_rat.train.precision import precision_support, resolve_device

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"


@dataclass
class TrainEvent:
    """One thing that happened; ``kind`` says which, the other fields what."""

    kind: str
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
        return TrainEvent(
            kind=str(body["kind"]),
            step=int(body.get("step", 0)),
            total_steps=int(body.get("total_steps", 0)),
            epoch=int(body.get("epoch", 0)),
            metrics={str(k): float(v) for k, v in body.get("metrics", {}).items()},
            path=body.get("path"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def run_dir(config: ExperimentConfig) -> Path:
    """``<training.output_dir>/<training.run_name>``."""
    return Path(config.training.output_dir) / config.training.run_name


def steps_per_epoch(config: ExperimentConfig, world_size: int) -> int:
    """Optimiser steps per epoch (``training.steps_per_epoch`` or from ``data.num_samples``)."""
    t = config.training
    if t.steps_per_epoch is not None:
        return t.steps_per_epoch
    per_rank = max(config.data.num_samples // world_size, t.batch_size)
    return max(per_rank // (t.batch_size * t.accumulation_steps), 1)


class _Logger:
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code using the global RNG
    torch.manual_seed(seed)


def _is_cancelled(cancel: threading.Event | Callable[[], bool] | None) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def make_engine(
    kind: str,
    model: torch.nn.Module,
    config: ExperimentConfig,
    total_steps: int,
    device: torch.device,
    dist: DistEnv,
):
    """A :class:`~napari_rat.train.engines.LocalEngine` or a DeepSpeed engine, and notes."""
    notes = []
    if kind == "deepspeed":
        from napari_rat.train.deepspeed_backend import DeepSpeedEngine

        precision, note = precision_support(
            config.model, device, config.training.precision, mode="cast"
        )
        if note:
            notes.append(note)
        return DeepSpeedEngine(model, config, total_steps, device, precision, dist), notes
    from napari_rat.train.engines import LocalEngine

    precision, note = precision_support(config.model, device, config.training.precision)
    if note:
        notes.append(note)
    engine = LocalEngine(
        model, config, total_steps, device, precision, distributed=dist.world_size > 1
    )
    return engine, notes


def _barrier(dist: DistEnv) -> Callable[[], None]:
    def barrier() -> None:
        if dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    return barrier


def checkpoint_metadata(config: ExperimentConfig, data: DataBundle) -> dict[str, Any]:
    """Keyword arguments of :func:`save_checkpoint` that describe the training data."""
    return {
        "training_spacing": list(data.spacing),
        "units": config.data.units,
        "channel_names": [f"channel_{i}" for i in range(config.model.input_features)],
        "normalization": data.normalization.to_dict(),
        "extra": {
            "experiment": config.name,
            "data_source": config.data.source,
            "scales": config.data.scales if config.data.multi_scale else [1],
            "crop_size": config.data.crop_size,
        },
    }


def train_events(
    config: ExperimentConfig,
    *,
    backend: str | None = None,
    resume: bool = False,
    init_from: str | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    store: StateStore | None = None,
    dist: DistEnv | None = None,
    on_epoch_end: Callable[[int, int], None] | None = None,
) -> Iterator[TrainEvent]:
    """Train ``config``'s model, yielding :class:`TrainEvent` objects.

    Parameters
    ----------
    backend
        ``local`` or ``deepspeed`` (how this process steps the model); default from the config
        (``ray`` workers pass ``deepspeed`` or ``local`` themselves).
    resume
        Continue from the newest saved state of this run (a fresh start when there is none).
    init_from
        A single-file checkpoint whose weights start the run (fine-tuning).
    cancel
        A :class:`threading.Event` or a callable; when set, the loop saves and stops.
    store
        Where resumable state goes (default: ``<run>/state``).
    on_epoch_end
        Test hook called with ``(epoch, step)`` after each epoch's state is saved.
    """
    t = config.training
    dist = dist or detect_dist_env()
    configure_threads(dist.local_world_size)
    kind = backend or (
        "deepspeed" if t.backend != "local" and config.deepspeed.enabled else "local"
    )
    _seed_everything(t.seed)
    device = resolve_device(t.device, dist.local_rank)
    folder = run_dir(config)
    main = dist.is_main
    data = build_data(config, rank=dist.rank, world_size=dist.world_size)
    model = build_model(config.model)
    if init_from is not None:
        start = load_checkpoint(init_from)
        if start.checkpoint_info.model_config.model_dump(
            exclude={"head"}
        ) != config.model.model_dump(exclude={"head"}):
            raise ValueError(
                f"--init-from {init_from}: its model config differs from the experiment's model "
                "section; use the same model settings to fine-tune"
            )
        model.load_state_dict(start.state_dict())
    per_epoch = steps_per_epoch(config, dist.world_size)
    total = per_epoch * t.epochs
    engine, notes = make_engine(kind, model, config, total, device, dist)
    if store is None:
        store = LocalStore(
            folder / "state", keep=config.cluster.num_to_keep, is_main=main, barrier=_barrier(dist)
        )
    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best_score": -1.0, "best_metrics": {}}
    logger = _Logger(folder if main else None)
    try:
        if main:
            save_config(config, folder / "config.yaml")
        for note in notes:
            yield TrainEvent("note", message=note)
        if resume:
            restored = store.load_latest(engine)
            if restored is None:
                yield TrainEvent("note", message="no saved state to resume from; starting fresh")
            else:
                state.update(restored)
                yield TrainEvent(
                    "note",
                    step=state["step"],
                    epoch=state["epoch"],
                    message=f"resumed at step {state['step']} (epoch {state['epoch']})",
                )
        yield TrainEvent(
            "start",
            step=state["step"],
            total_steps=total,
            epoch=state["epoch"],
            message=f"{kind} on {device}, rank {dist.rank}/{dist.world_size}, "
            f"{engine.precision}, {per_epoch} steps/epoch",
        )
        accumulation = t.accumulation_steps
        started = time.perf_counter()
        deadline = None if t.time_limit_minutes is None else started + 60 * t.time_limit_minutes
        window_start, window_samples, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
        while state["epoch"] < t.epochs:
            epoch = state["epoch"]
            dataset = data.train
            dataset.set_epoch(epoch)
            first = state["batch_in_epoch"] * accumulation * t.batch_size
            needed = per_epoch * accumulation * t.batch_size
            indices = [i % len(dataset) for i in range(first, needed)]
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dataset, indices),
                batch_size=t.batch_size,
                collate_fn=collate,
                num_workers=t.num_workers,
                drop_last=True,
            )
            engine.train(True)
            stop_reason = None
            for batch in loader:
                if _is_cancelled(cancel):
                    stop_reason = "cancelled"
                elif deadline is not None and time.perf_counter() > deadline:
                    stop_reason = "time limit"
                if stop_reason and engine_at_boundary(engine):
                    break
                stop_reason = None
                logits = engine.forward(batch["images"], batch["spacings"])
                losses = []
                for lv, out in enumerate(logits):
                    loss, parts = segmentation_loss(
                        out,
                        batch["classes"][lv].to(out.device),
                        batch["boundary"][lv].to(out.device),
                        len(config.model.head.class_names),
                        dice_weight=t.dice_weight,
                        boundary_weight=t.boundary_weight,
                    )
                    losses.append(loss)
                loss = torch.stack(losses).mean()
                stepped = engine.backward(loss)
                window_samples += t.batch_size
                window_loss += float(loss.detach())
                window_n += 1
                if not stepped:
                    continue
                state["step"] += 1
                state["batch_in_epoch"] += 1
                if state["step"] % t.log_every == 0 or state["step"] == total:
                    elapsed = time.perf_counter() - window_start
                    metrics = {
                        "loss": window_loss / max(window_n, 1),
                        "lr": engine.lr,
                        "grad_norm": engine.last_grad_norm,
                        "samples_per_s": window_samples * dist.world_size / max(elapsed, 1e-9),
                    }
                    if main:
                        logger.log("train", state["step"], epoch, metrics)
                    yield TrainEvent(
                        "progress",
                        step=state["step"],
                        total_steps=total,
                        epoch=epoch,
                        metrics=metrics,
                    )
                    window_start, window_samples, window_loss, window_n = (
                        time.perf_counter(),
                        0,
                        0.0,
                        0,
                    )
            if stop_reason is None and _is_cancelled(cancel):
                stop_reason = "cancelled"
            if stop_reason is None and deadline is not None and time.perf_counter() > deadline:
                stop_reason = "time limit"
            epoch_done = stop_reason is None
            metrics: dict[str, float] = {}
            if epoch_done and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs):
                if data.val:
                    metrics = evaluate_regions(
                        engine.module,
                        data.val,
                        config,
                        device=device,
                        autocast=engine.precision if kind == "local" else "fp32",
                        select_min_instance_size=True,
                    )
                    if main:
                        logger.log("val", state["step"], epoch, metrics)
                    yield TrainEvent(
                        "validation",
                        step=state["step"],
                        total_steps=total,
                        epoch=epoch,
                        metrics=metrics,
                    )
            if epoch_done:
                state["epoch"] = epoch + 1
                state["batch_in_epoch"] = 0
            improved = bool(metrics) and metrics["score"] > state["best_score"]
            if improved:
                state["best_score"] = metrics["score"]
                state["best_metrics"] = metrics
            weights = engine.full_state_dict()  # collective under ZeRO-3
            store.save(engine, dict(state), metrics)
            if main:
                meta = checkpoint_metadata(config, data)
                meta["extra"] = {**meta["extra"], "step": state["step"], "metrics": metrics}
                model_for_save = _StateHolder(weights)
                # The instance size picked on this validation goes with the weights it suits.
                chosen = metrics or state["best_metrics"]
                model_config = _with_min_instance_size(config.model, chosen)
                last = save_checkpoint(model_for_save, folder / LAST_NAME, model_config, **meta)
                yield TrainEvent("checkpoint", step=state["step"], epoch=epoch, path=str(last))
                if improved or (not data.val and epoch_done):
                    best = save_checkpoint(model_for_save, folder / BEST_NAME, model_config, **meta)
                    yield TrainEvent(
                        "checkpoint",
                        step=state["step"],
                        epoch=epoch,
                        path=str(best),
                        message="best",
                    )
            if on_epoch_end is not None:
                on_epoch_end(epoch, state["step"])
            if stop_reason is not None:
                yield TrainEvent(
                    "cancelled",
                    step=state["step"],
                    total_steps=total,
                    epoch=epoch,
                    message=f"stopped ({stop_reason}); resume with --resume",
                )
                return
        yield TrainEvent(
            "finished",
            step=state["step"],
            total_steps=total,
            epoch=state["epoch"],
            metrics=state["best_metrics"],
            path=str(folder / BEST_NAME),
            message=f"{time.perf_counter() - started:.1f} s",
        )
    finally:
        logger.close()


def _with_min_instance_size(model_config, metrics: dict[str, float]):
    """``model_config`` with the head's ``min_instance_size`` chosen on validation, if unset."""
    head = model_config.head
    if head.min_instance_size is not None or "min_instance_size" not in metrics:
        return model_config
    head = head.model_copy(update={"min_instance_size": float(metrics["min_instance_size"])})
    return model_config.model_copy(update={"head": head})


def engine_at_boundary(engine) -> bool:
    """Whether no gradient is half-accumulated (safe to stop and save)."""
    return getattr(engine, "_micro", 0) % getattr(engine, "accumulation", 1) == 0


class _StateHolder(torch.nn.Module):
    """Lets :func:`save_checkpoint` write an already gathered ``state_dict``."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):  # noqa: D102 - mirrors nn.Module
        return self._state


def train(
    config: ExperimentConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    **kwargs: Any,
) -> TrainEvent:
    """Run :func:`train_events` to the end, passing each event to ``callback``.

    Returns the last event (``finished`` or ``cancelled``).
    """
    last = None
    for event in train_events(config, **kwargs):
        if callback is not None:
            callback(event)
        last = event
    if last is None:  # pragma: no cover - the generator always yields
        raise RuntimeError("training produced no events")
    return last


__all__ = ["TrainEvent", "run_dir", "steps_per_epoch", "train", "train_events"]
