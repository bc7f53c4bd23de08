"""The one training loop, used in-process, under DeepSpeed and inside Ray Train workers.

:func:`train_events` is a generator: it yields :class:`TrainEvent` objects (start, progress,
validation, checkpoint, note, cancelled, finished) and stops early when ``cancel`` is set, after
saving. A widget wraps it in a thread worker; the CLI prints the events; Ray workers run it
with a store that reports to Ray. Only rank 0 logs (TensorBoard, ``metrics.jsonl``) and writes
the single-file ``best``/``last`` checkpoints.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_rat.config import ExperimentConfig, save_config
from napari_rat.inference.devices import resolve_device
from napari_rat.model import build_model, load_checkpoint, save_checkpoint
from napari_rat.train.checkpoint_store import LocalStore, StateStore
from napari_rat.train.data_sources import InMemoryImage
from napari_rat.train.datasets import DataBundle, build_data, collate, level_factors
from napari_rat.train.distributed import DistEnv, configure_threads, detect_dist_env
from napari_rat.train.engines import Engine, freeze_backbone
from napari_rat.train.evaluation import evaluate_regions, validation_options
from napari_rat.train.events import (
    EVENT_MARKER,
    EventKind,
    TrainEvent,
    event_line,
    parse_event_line,
)
from napari_rat.train.losses import segmentation_loss
from napari_rat.train.precision import precision_support
from napari_rat.train.progress import LoopState, MetricsLogger, ProgressWindow
from napari_rat.train.training_card import training_card

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"


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
) -> tuple[Engine, list[str]]:
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
    """Keyword arguments of :func:`save_checkpoint` that describe the training data (and, as
    a model card, what in-memory images taught and which weights were trained)."""
    extra: dict[str, Any] = {}
    if data.notes:
        extra["trained_on"] = data.notes
    if config.training.freeze_backbone:
        extra["trained"] = "decoder and head (backbone frozen)"
    return {
        "training_spacing": list(data.spacing),
        "units": config.data.units,
        "channel_names": [f"channel_{i}" for i in range(config.model.input_features)],
        "normalization": data.normalization.to_dict(),
        "extra": {
            "experiment": config.name,
            "data_source": config.data.source,
            "crop_size": config.data.crop_size,
            **extra,
        },
        "level_factors": level_factors(config.data),
    }


@dataclass
class _Run:
    """What one call of :func:`train_events` works with, set up by :func:`_set_up`."""

    config: ExperimentConfig
    kind: str
    dist: DistEnv
    device: torch.device
    folder: Path
    data: DataBundle
    engine: Engine
    store: StateStore
    logger: MetricsLogger
    per_epoch: int
    total: int
    notes: list[str]
    cancel: threading.Event | Callable[[], bool] | None
    deadline: float | None = None
    #: Where the starting weights came from (the checkpoint, or the model in memory).
    init_from: str | None = None
    #: When this session's training began (``time.perf_counter``), for the model card.
    started: float | None = None
    resumed: bool = False

    @property
    def main(self) -> bool:
        return self.dist.is_main

    def event(self, kind: EventKind, state: LoopState, **fields: Any) -> TrainEvent:
        """An event at the loop's current step (and ``epoch``, unless given)."""
        fields.setdefault("epoch", state.epoch)
        return TrainEvent(kind, step=state.step, **fields)

    def stop_reason(self) -> str | None:
        """``cancelled`` or ``time limit`` when the run must stop, else ``None``."""
        if _is_cancelled(self.cancel):
            return "cancelled"
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return "time limit"
        return None


def _set_up(
    config: ExperimentConfig,
    backend: str | None,
    init_from: str | torch.nn.Module | None,
    cancel: threading.Event | Callable[[], bool] | None,
    store: StateStore | None,
    dist: DistEnv | None,
    in_memory: list[InMemoryImage] | None = None,
) -> _Run:
    """Threads, seed, device, data, model (from ``init_from``, the backbone frozen when the
    config says so), engine, state store, logger."""
    t = config.training
    dist = dist or detect_dist_env()
    configure_threads(dist.local_world_size)
    kind = backend or (
        "deepspeed" if t.backend != "local" and config.deepspeed.enabled else "local"
    )
    _seed_everything(t.seed)
    device = resolve_device(t.device, dist.local_rank)
    folder = run_dir(config)
    data = build_data(config, rank=dist.rank, world_size=dist.world_size, in_memory=in_memory)
    model = build_model(config.model)
    start = None if init_from is None else _load_initial_weights(model, init_from, config)
    if t.freeze_backbone:
        freeze_backbone(model)
    per_epoch = steps_per_epoch(config, dist.world_size)
    total = per_epoch * t.epochs
    engine, notes = make_engine(kind, model, config, total, device, dist)
    if store is None:
        store = LocalStore(
            folder / "state",
            keep=config.cluster.num_to_keep,
            is_main=dist.is_main,
            barrier=_barrier(dist),
        )
    logger = MetricsLogger(folder if dist.is_main else None)
    return _Run(
        config=config,
        kind=kind,
        dist=dist,
        device=device,
        folder=folder,
        data=data,
        engine=engine,
        store=store,
        logger=logger,
        per_epoch=per_epoch,
        total=total,
        notes=notes,
        cancel=cancel,
        init_from=start,
    )


def _load_initial_weights(
    model: torch.nn.Module, init_from: str | torch.nn.Module, config: ExperimentConfig
) -> str:
    """Copy the weights of ``init_from`` (a checkpoint file, or a model loaded from one, which
    stays untouched) into ``model``; returns what the model card calls the start.

    The model configs must agree except for the head and the attention implementation (whose
    weights are interchangeable)."""
    if isinstance(init_from, torch.nn.Module):
        start, info = init_from, getattr(init_from, "checkpoint_info", None)
        if info is None:
            raise ValueError(
                "init_from: the model has no checkpoint_info; load it with "
                "napari_rat.model.load_checkpoint, or pass its checkpoint file"
            )
        name = f"model in memory ({info.extra.get('experiment', 'unnamed')})"
    else:
        start, name = load_checkpoint(init_from), str(init_from)
    same = {"head", "sga_attention_type"}
    if start.checkpoint_info.model_config.model_dump(exclude=same) != config.model.model_dump(
        exclude=same
    ):
        raise ValueError(
            f"--init-from {name}: its model config differs from the experiment's model "
            "section; use the same model settings to fine-tune"
        )
    model.load_state_dict(start.state_dict())
    return name


def _resume(run: _Run, state: LoopState) -> Iterator[TrainEvent]:
    """Restore the newest saved state into ``state`` and the engine, saying what happened."""
    restored = run.store.load_latest(run.engine)
    if restored is None:
        yield TrainEvent("note", message="no saved state to resume from; starting fresh")
        return
    state.restore(restored)
    yield run.event("note", state, message=f"resumed at step {state.step} (epoch {state.epoch})")


def _batches(run: _Run, state: LoopState) -> torch.utils.data.DataLoader:
    """The rest of the current epoch's batches (all of them unless resumed mid-epoch)."""
    t = run.config.training
    dataset = run.data.train
    dataset.set_epoch(state.epoch)
    first = state.batch_in_epoch * t.accumulation_steps * t.batch_size
    needed = run.per_epoch * t.accumulation_steps * t.batch_size
    indices = [i % len(dataset) for i in range(first, needed)]
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=t.batch_size,
        collate_fn=collate,
        num_workers=t.num_workers,
        drop_last=True,
    )


def _batch_loss(run: _Run, batch: dict) -> torch.Tensor:
    """The loss of one batch: the mean over its pyramid levels."""
    t = run.config.training
    logits = run.engine.forward(batch["images"], batch["spacings"])
    losses = []
    for lv, out in enumerate(logits):
        loss, _ = segmentation_loss(
            out,
            batch["classes"][lv].to(out.device),
            batch["boundary"][lv].to(out.device),
            len(run.config.model.head.class_names),
            dice_weight=t.dice_weight,
            boundary_weight=t.boundary_weight,
            contact=batch["contact"][lv].to(out.device),
            contact_weight=t.contact_weight,
        )
        losses.append(loss)
    return torch.stack(losses).mean()


def _train_epoch(
    run: _Run, state: LoopState, window: ProgressWindow
) -> Generator[TrainEvent, None, str | None]:
    """Step through the epoch's batches, yielding progress; returns why it stopped early
    (``None`` when the epoch ran to its end)."""
    t = run.config.training
    engine = run.engine
    engine.train(True)
    for batch in _batches(run, state):
        # Stop only where no gradient is half-accumulated, so the saved state is whole.
        reason = run.stop_reason()
        if reason is not None and engine.at_accumulation_boundary:
            return reason
        # grad mode is per thread: a pooled worker thread (a dock's) may come without it
        with torch.enable_grad():
            loss = _batch_loss(run, batch)
            stepped = engine.backward(loss)
        window.add(loss, t.batch_size)
        if not stepped:
            continue
        state.step += 1
        state.batch_in_epoch += 1
        if state.step % t.log_every == 0 or state.step == run.total:
            metrics = window.report(engine, run.dist.world_size)
            if run.main:
                run.logger.log("train", state.step, state.epoch, metrics)
            yield run.event("progress", state, total_steps=run.total, metrics=metrics)
    return run.stop_reason()


def _validate(run: _Run, state: LoopState) -> Generator[TrainEvent, None, dict[str, float]]:
    """The engine's scores on the validation regions, when this epoch validates; returns
    them (empty when it does not)."""
    t = run.config.training
    epoch = state.epoch
    if not run.data.val or ((epoch + 1) % t.val_every != 0 and epoch + 1 != t.epochs):
        return {}
    precision = run.engine.precision if run.kind == "local" else "fp32"
    metrics = evaluate_regions(
        run.engine.module,
        run.data.val,
        run.config,
        options=validation_options(run.config, run.device, precision),
        select_min_instance_size=True,
    )
    if run.main:
        run.logger.log("val", state.step, epoch, metrics)
    yield run.event("validation", state, total_steps=run.total, metrics=metrics)
    return metrics


def _save(
    run: _Run, state: LoopState, epoch: int, metrics: dict[str, float], best: bool
) -> Iterator[TrainEvent]:
    """The resumable state (every rank), then the single-file ``last`` and, when ``best``,
    ``best`` checkpoints (main rank)."""
    weights = run.engine.full_state_dict()  # collective under ZeRO-3
    run.store.save(run.engine, state.as_dict(), metrics)
    if not run.main:
        return
    meta = checkpoint_metadata(run.config, run.data)
    meta["extra"] = {**meta["extra"], "step": state.step, "metrics": metrics}
    meta["card"] = training_card(
        run.config,
        run.data,
        validation=metrics,
        step=state.step,
        seconds=time.perf_counter() - (run.started or time.perf_counter()),
        resumed=run.resumed,
    )
    if run.init_from is not None:
        meta["extra"]["init_from"] = run.init_from
    model_for_save = _StateHolder(weights)
    # The instance size picked on this validation goes with the weights it suits.
    model_config = _with_min_instance_size(run.config.model, metrics or state.best_metrics)
    last = save_checkpoint(model_for_save, run.folder / LAST_NAME, model_config, **meta)
    yield run.event("checkpoint", state, epoch=epoch, path=str(last))
    if best:
        path = save_checkpoint(model_for_save, run.folder / BEST_NAME, model_config, **meta)
        yield run.event("checkpoint", state, epoch=epoch, path=str(path), message="best")


def train_events(
    config: ExperimentConfig,
    *,
    backend: str | None = None,
    resume: bool = False,
    init_from: str | torch.nn.Module | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    store: StateStore | None = None,
    dist: DistEnv | None = None,
    on_epoch_end: Callable[[int, int], None] | None = None,
    in_memory: list[InMemoryImage] | None = None,
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
        A single-file checkpoint whose weights start the run (fine-tuning), or a model loaded
        from one (its weights are copied; it is left untouched).
    cancel
        A :class:`threading.Event` or a callable; when set, the loop saves and stops.
    store
        Where resumable state goes (default: ``<run>/state``).
    on_epoch_end
        Test hook called with ``(epoch, step)`` after each epoch's state is saved.
    in_memory
        The images of ``data.source: in_memory`` (see :mod:`napari_rat.train.quick_tune`).
    """
    run = _set_up(config, backend, init_from, cancel, store, dist, in_memory)
    t = config.training
    state = LoopState()
    try:
        if run.main:
            save_config(config, run.folder / "config.yaml")
        for note in run.notes:
            yield TrainEvent("note", message=note)
        if resume:
            run.resumed = True
            yield from _resume(run, state)
        yield run.event(
            "start",
            state,
            total_steps=run.total,
            message=f"{run.kind} on {run.device}, rank {run.dist.rank}/{run.dist.world_size}, "
            f"{run.engine.precision}, {run.per_epoch} steps/epoch",
        )
        started = run.started = time.perf_counter()
        if t.time_limit_minutes is not None:
            run.deadline = started + 60 * t.time_limit_minutes
        window = ProgressWindow()
        while state.epoch < t.epochs:
            epoch = state.epoch
            stop_reason = yield from _train_epoch(run, state, window)
            metrics = {} if stop_reason is not None else (yield from _validate(run, state))
            if stop_reason is None:
                state.epoch, state.batch_in_epoch = epoch + 1, 0
            improved = bool(metrics) and metrics["score"] > state.best_score
            if improved:
                state.best_score, state.best_metrics = metrics["score"], metrics
            best = improved or (not run.data.val and stop_reason is None)
            yield from _save(run, state, epoch, metrics, best)
            if on_epoch_end is not None:
                on_epoch_end(epoch, state.step)
            if stop_reason is not None:
                yield run.event(
                    "cancelled",
                    state,
                    total_steps=run.total,
                    epoch=epoch,
                    message=f"stopped ({stop_reason}); resume with --resume",
                )
                return
        yield run.event(
            "finished",
            state,
            total_steps=run.total,
            metrics=state.best_metrics,
            path=str(run.folder / BEST_NAME),
            message=f"{time.perf_counter() - started:.1f} s",
        )
    finally:
        run.logger.close()


def _with_min_instance_size(model_config, metrics: dict[str, float]):
    """``model_config`` with the head's ``min_instance_size`` chosen on validation, if unset."""
    head = model_config.head
    if head.min_instance_size is not None or "min_instance_size" not in metrics:
        return model_config
    head = head.model_copy(update={"min_instance_size": float(metrics["min_instance_size"])})
    return model_config.model_copy(update={"head": head})


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


__all__ = [
    "EVENT_MARKER",
    "TrainEvent",
    "event_line",
    "parse_event_line",
    "run_dir",
    "steps_per_epoch",
    "train",
    "train_events",
]
