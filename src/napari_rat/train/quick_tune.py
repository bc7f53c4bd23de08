"""Quick fine-tuning: the decoder and head learn from a few corrected labels and/or scribbles
of one image in memory, in seconds, through the one training loop.

:func:`quick_tune_events` builds a config (``data.source: in_memory``, ``training.freeze_backbone``,
one epoch of ``steps`` optimiser steps, the starting checkpoint's model, normalisation and
pyramid levels) and runs :func:`napari_rat.train.loop.train_events` on it in a scratch folder:
the same crops, loss, engine and checkpoint as any training. The backbone's weights stay
bit-identical; the loss counts only annotated pixels (unpainted scribble pixels do not).

The result is a model loaded from the checkpoint the loop wrote, as the inference engine loads
one (:func:`napari_rat.inference.model_loading.load_model_for_inference`), carrying in its
``checkpoint_info.extra`` a model card: what it was tuned on (``trained_on``), from which
weights (``init_from``) and what was trained (``trained``). :func:`save_tuned` writes it as a
checkpoint file, which the inference dock loads and which starts a full fine-tune
(``init_from``, e.g. on a cluster with :mod:`napari_rat.train.training_set`).

A GUI runs :func:`quick_tune` (or the generator) in a thread worker: ``cancel`` stops it
between two steps, leaving the model it started from untouched.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_rat.config import ExperimentConfig
from napari_rat.model import CheckpointInfo, read_checkpoint_info, save_checkpoint
from napari_rat.train.data_sources import InMemoryImage
from napari_rat.train.distributed import DistEnv
from napari_rat.train.events import TrainEvent
from napari_rat.train.loop import BEST_NAME, train_events
from napari_rat.train.normalization import Normalization

#: Defaults: enough steps to move a decoder, few enough for seconds on a laptop's CPU
#: (measured with ``napari-rat bench tune``, see the README).
DEFAULT_STEPS = 60
DEFAULT_BATCH_SIZE = 4
DEFAULT_LEARNING_RATE = 2e-3
DEFAULT_CROP = 64
#: Crops smaller than this many pixels are enlarged towards it: the attention prediction runs
#: is linear in pixels, and larger crops keep the cores busier per step.
DEFAULT_CROP_PIXELS = 128 * 128

Cancel = threading.Event | Callable[[], bool] | None


def _start(model_or_checkpoint: Any) -> tuple[str | torch.nn.Module, CheckpointInfo]:
    """The loop's ``init_from`` and the checkpoint info of a model, a file or ``"starter"``."""
    if isinstance(model_or_checkpoint, torch.nn.Module):
        info = getattr(model_or_checkpoint, "checkpoint_info", None)
        if info is None:
            raise ValueError(
                "quick_tune needs a model loaded from a checkpoint (it has no checkpoint_info); "
                "load it with napari_rat.model.load_checkpoint, or pass the checkpoint file"
            )
        return model_or_checkpoint, info
    from napari_rat.inference.model_loading import checkpoint_path

    path = checkpoint_path(model_or_checkpoint)
    return str(path), read_checkpoint_info(path)


def _scales(info: CheckpointInfo) -> list[int]:
    """``data.scales`` that feed the levels the checkpoint was trained on."""
    if info.level_factors is None:
        return list(info.extra.get("scales") or [1])
    scales = [level[0] for level in info.level_factors]
    if any(len(set(level)) != 1 for level in info.level_factors):
        raise ValueError(
            f"the checkpoint's pyramid levels {info.level_factors} differ between axes; quick "
            "tuning feeds the same factor on every axis (data.scales): fine-tune it with a "
            "full training run instead"
        )
    return scales


def quick_tune_config(
    info: CheckpointInfo,
    spatial_shape: Sequence[int],
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    crop_size: Sequence[int] | None = None,
    device: str = "cpu",
    output_dir: str | os.PathLike = "runs",
    seed: int = 0,
    attention: str | None = None,
) -> ExperimentConfig:
    """The experiment a quick tune runs: ``info``'s model with its backbone frozen, trained
    ``steps`` steps on in-memory crops (by default the checkpoint's crop, enlarged to about
    :data:`DEFAULT_CROP_PIXELS`, no larger than the image; its pyramid levels), normalised as
    the checkpoint says.

    ``attention``: the backbone's implementation while tuning; by default the one prediction
    runs (:func:`~napari_rat.inference.model_loading.inference_attention`: ``local`` for a
    ``dense`` checkpoint), so the decoder learns from the features it will be fed, and fast.
    """
    from napari_rat.inference.model_loading import inference_attention

    dims = info.model_config.spatial_dims
    stored_attention = info.model_config.sga_attention_type
    model = info.model_config.model_copy(
        update={"sga_attention_type": attention or inference_attention(stored_attention)}
    )
    if crop_size is None:
        stored = info.extra.get("crop_size") or [DEFAULT_CROP] * dims
        grow = max(1.0, (DEFAULT_CROP_PIXELS / math.prod(stored)) ** (1 / dims))
        crop_size = [round(c * grow) for c in stored]
    crop = list(crop_size)
    if len(crop) != dims:
        raise ValueError(f"crop_size {crop} must have {dims} values (the model is {dims}D)")
    crop = [max(1, min(int(c), int(s))) for c, s in zip(crop, spatial_shape, strict=True)]
    norm = Normalization.from_dict(info.normalization)
    return ExperimentConfig.model_validate(
        {
            "name": "quick-tune",
            "model": model.model_dump(mode="json"),
            "data": {
                "source": "in_memory",
                "units": info.units,
                "crop_size": crop,
                "scales": _scales(info),
                "normalization": norm.method,
                "normalization_percentiles": list(norm.percentiles),
                "val_fraction": 0.0,
                "holdout_fraction": 0.0,
                "num_samples": steps * batch_size,
                "seed": seed,
            },
            "training": {
                "backend": "local",
                "epochs": 1,
                "steps_per_epoch": steps,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "warmup_steps": min(5, steps // 4),
                "precision": "fp32",
                "device": device,
                "output_dir": str(output_dir),
                "run_name": "quick-tune",
                "log_every": 1,
                "seed": seed,
                "freeze_backbone": True,
            },
        }
    )


def quick_tune_events(
    model_or_checkpoint: torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    spacing: Sequence[float],
    *,
    labels: np.ndarray | None = None,
    scribbles: np.ndarray | None = None,
    units: str | Sequence[str | None] | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    crop_size: Sequence[int] | None = None,
    device: str = "cpu",
    cancel: Cancel = None,
    name: str = "in-memory image",
    seed: int = 0,
) -> Generator[TrainEvent, None, torch.nn.Module | None]:
    """Fine-tune the decoder and head, yielding the loop's events; returns the tuned model
    (``None`` when cancelled). See :func:`quick_tune` for the parameters.

    Raises
    ------
    napari_rat.train.data_sources.DatasetError
        Annotations that cannot teach (wrong shape or type, empty, classes the model lacks),
        raised before any training step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    init_from, info = _start(model_or_checkpoint)
    dims = info.model_config.spatial_dims
    spacing = [float(s) for s in spacing]
    if units is not None:
        from napari_rat.io.units import to_model_units

        factors = to_model_units(units, info.units, len(spacing))
        spacing = [s * f for s, f in zip(spacing, factors, strict=True)]
    source = InMemoryImage(image, spacing, labels=labels, scribbles=scribbles, name=name)
    # Checked here too, so bad input fails before the loop sets anything up.
    source.check(info.model_config)
    with tempfile.TemporaryDirectory(prefix="napari-rat-quick-tune-") as folder:
        config = quick_tune_config(
            info,
            source.spatial_shape(dims),
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            crop_size=crop_size,
            device=device,
            output_dir=folder,
            seed=seed,
        )
        last = None
        for event in train_events(
            config,
            backend="local",
            init_from=init_from,
            cancel=cancel,
            dist=DistEnv(),
            in_memory=[source],
        ):
            last = event
            yield event
        if last is None or last.kind != "finished":
            return None
        from napari_rat.inference.model_loading import load_model_for_inference

        tuned = load_model_for_inference(Path(folder) / config.training.run_name / BEST_NAME)
    # The card keeps the start's attention type (the weights fit either), so a full fine-tune
    # from the saved file trains as the start was trained.
    card = tuned.checkpoint_info
    tuned.checkpoint_info = dataclasses.replace(
        card,
        model_config=card.model_config.model_copy(
            update={"sga_attention_type": info.model_config.sga_attention_type}
        ),
        extra={**card.extra, "tuned_with_attention": config.model.sga_attention_type},
    )
    return tuned


def quick_tune(
    model_or_checkpoint: torch.nn.Module | str | os.PathLike,
    image: np.ndarray,
    spacing: Sequence[float],
    *,
    labels: np.ndarray | None = None,
    scribbles: np.ndarray | None = None,
    progress: Callable[[TrainEvent], None] | None = None,
    **options: Any,
) -> torch.nn.Module | None:
    """Fine-tune a model's decoder and head (backbone frozen) on one image's annotations.

    Parameters
    ----------
    model_or_checkpoint
        A model loaded from a checkpoint (left untouched), a checkpoint file or ``"starter"``.
    image
        Raw intensities ``[*spatial]`` or ``[C, *spatial]``.
    spacing
        Physical pixel size per spatial axis (in ``units``, default the checkpoint's unit).
    labels
        Corrected instance labels (0 background, one value per object); every pixel counts.
    scribbles
        Painted classes: 0 not painted (ignored), 1 background, 2 the first class after
        background, ... Where painted they win over ``labels``.
    progress
        Called with each :class:`~napari_rat.train.events.TrainEvent` (``progress`` events
        carry ``step``, ``total_steps`` and the loss).
    options
        ``units``, ``steps`` (default 60), ``batch_size``, ``learning_rate``, ``crop_size``,
        ``device``, ``cancel`` (a :class:`threading.Event` or callable: stops between steps),
        ``name`` (the image's name in the model card), ``seed``.

    Returns
    -------
    The tuned model, loaded as the inference engine loads a checkpoint, with its model card
    in ``checkpoint_info.extra``; ``None`` when cancelled.
    """
    events = quick_tune_events(
        model_or_checkpoint, image, spacing, labels=labels, scribbles=scribbles, **options
    )
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


def save_tuned(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write a tuned model (or any model loaded from a checkpoint) as a checkpoint file, its
    model card and metadata kept (atomically, with :func:`napari_rat.model.save_checkpoint`)."""
    info: CheckpointInfo | None = getattr(model, "checkpoint_info", None)
    if info is None:
        raise ValueError(
            "this model has no checkpoint_info to save with it; save it with "
            "napari_rat.model.save_checkpoint and its model config"
        )
    return save_checkpoint(
        model,
        path,
        info.model_config,
        training_spacing=info.training_spacing,
        units=info.units,
        channel_names=info.channel_names,
        normalization=info.normalization,
        extra=info.extra,
        level_factors=info.level_factors,
        card=info.card,
    )
