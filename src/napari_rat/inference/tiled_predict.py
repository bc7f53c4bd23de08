"""Tiled, spacing-aware prediction over images of any size (no Qt).

:func:`predict` is a generator: it yields a :class:`Progress` after every tile (and during the
instance step) and returns a :class:`Prediction`. Stop iterating, call ``.close()``, or set the
``cancel`` event to cancel between tiles: nothing half-written is left behind (results are built
in a scratch zarr store that is moved into place only when complete, or deleted).

Each tile is read with a halo, normalised, fed to the model (together with block-averaged
coarser versions of the same region when the model was trained on several pyramid levels, each
with its own physical spacing, as RAT expects a pyramid: the checkpoint's ``level_factors``),
cropped to its core and written. Peak memory depends on the tile, never on the image. This is
the package's one predictor: the CLI, the docks, and training's validation and ``evaluate``
(on in-memory arrays) all run it. RoSE gets the data's true spacing (resolution awareness); with
``resample_to_training_spacing`` each tile is instead resampled to the model's training spacing
and the prediction resampled back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_rat.inference.chunked_labels import instances_chunked
from napari_rat.inference.devices import Precision, autocast_for, resolve_device
from napari_rat.inference.heap import release_freed_memory
from napari_rat.inference.instances import BOUNDARY_RADIUS, grow_radius, min_instance_pixels
from napari_rat.inference.normalization import IntensityStats, image_statistics
from napari_rat.inference.result_store import (
    new_array,
    open_new_group,
    placement_attrs,
    published,
    staged_store,
)
from napari_rat.inference.tiling import tile_grid
from napari_rat.io.units import to_model_units

#: Most a tile may grow (in pixels) when resampled to the training spacing: far beyond it, the
#: image's units or spacing are wrong rather than the image really that coarse.
MAX_RESAMPLE_GROWTH = 64.0


class PredictionCancelled(Exception):
    """Raised by :func:`run_prediction` when the cancel event was set."""


@dataclass(frozen=True)
class Progress:
    """Where a prediction is: ``stage`` (``"tiles"`` or ``"instances"``), ``done`` of ``total``."""

    stage: str
    done: int
    total: int


@dataclass
class PredictOptions:
    """How to predict.

    ``tile``/``halo`` are in pixels of the input (defaults: 256/32 in 2D, 64/12 in 3D);
    ``levels`` is the number of pyramid levels fed to the model (``None``: the levels the
    checkpoint was trained on, see :func:`level_factors`; a number: that many levels planned
    from the spacing); ``boundary_radius`` is how far
    (in pixels of the finest axis) instance seeds grow back into the foreground (``None``:
    :func:`~napari_rat.inference.instances.grow_radius` of the checkpoint's boundary band,
    3 pixels for a model without a checkpoint); instances
    smaller than ``min_instance_size`` (physical area or volume; ``None``: the checkpoint's head
    setting, chosen on validation during training, else 0) join the instance they touch most or
    are dropped, and smaller cores seed none (:mod:`napari_rat.inference.instances`).
    ``features`` adds the per-pixel features (``RATSegmentation.forward_features``: the
    decoder's last features and the blocks' tokens at pixel resolution) to the results, from
    the same forward.
    """

    tile: tuple[int, ...] | None = None
    halo: tuple[int, ...] | None = None
    levels: int | None = None
    device: str = "auto"
    precision: Precision = "auto"
    resample_to_training_spacing: bool = False
    instances: bool = True
    boundary_radius: int | None = None
    threshold: float = 0.5
    min_instance_size: float | None = None
    features: bool = False


@dataclass
class Prediction:
    """The result, placed like its source (``spacing``/``translation`` of the spatial axes).

    ``probabilities`` is ``[num_outputs, *spatial]`` float32 (softmax over the classes, then the
    boundary probability if the model has one); ``semantic`` the argmax class; ``labels`` the
    instance labels (or ``None``). Arrays are NumPy, or zarr arrays when written to ``store``.
    ``nan_pixels`` counts the input pixels without a finite value (NaN, infinite): they were
    fed as the image's low intensity and are background in the results (no instance there).
    ``features`` is ``[num_features, *spatial]`` float16 when asked for
    (``PredictOptions.features``), else ``None``.
    """

    probabilities: Any
    semantic: Any
    labels: Any
    class_names: list[str]
    channel_names: list[str]
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    store: Path | None = None
    num_instances: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    nan_pixels: int = 0
    features: Any = None
    #: How far the instance seeds grew back (:func:`grow_radius_for`): interactive
    #: segmentation grows its objects over the model's boundary band the same way.
    boundary_radius: int = BOUNDARY_RADIUS


def level_factors(
    info, spacing: Sequence[float], levels: int | None = None
) -> list[tuple[int, ...]]:
    """The pyramid levels fed to the model: per level, its downsampling factor per axis.

    ``levels=None`` gives the levels the model was trained on: the checkpoint's
    ``level_factors``; a checkpoint written before they were stored (or no checkpoint) gets as
    many levels as the count of its ``extra["scales"]`` (else 1), planned from ``spacing`` as
    before. A number of ``levels`` plans that many from ``spacing``
    (:func:`napari_rat.io.downsampling.plan_factors`: anisotropy-aware halving).
    """
    if levels is None:
        if info is not None and info.level_factors is not None:
            return [tuple(int(f) for f in level) for level in info.level_factors]
        levels = len((info.extra or {}).get("scales") or [1]) if info is not None else 1
    if levels < 1:
        raise ValueError(f"levels must be 1 or more, got {levels}")
    from napari_rat.io.downsampling import plan_factors

    shape = [1 << 20] * len(spacing)  # the rule only depends on the spacing here
    return plan_factors(shape, spacing, list(range(len(spacing))), levels=levels)


def _model_inputs(tile: torch.Tensor, spacing, factors) -> tuple[list[torch.Tensor], list]:
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[tile.dim() - 2]
    xs, spacings = [], []
    for f in factors:
        if all(v == 1 for v in f):
            xs.append(tile)
        else:
            xs.append(pool(tile, kernel_size=f, stride=f, ceil_mode=True))
        spacings.append(tuple(float(s) * v for s, v in zip(spacing, f, strict=True)))
    return xs, spacings


def _tile_outputs(model, tile, plan: _Plan, options: PredictOptions, features: bool):
    """The tile's probabilities ``[num_outputs, *tile]`` and, with ``features``, its per-pixel
    features ``[num_features, *tile]`` (else ``None``), from one forward."""
    shape = tile.shape[2:]
    model_spacing = plan.model_spacing
    if options.resample_to_training_spacing and plan.training_spacing is not None:
        size = [
            max(1, round(n * s / t))
            for n, s, t in zip(shape, model_spacing, plan.training_spacing, strict=True)
        ]
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
        tile = F.interpolate(tile, size=size, mode=mode, align_corners=False)
        model_spacing = tuple(plan.training_spacing)
    xs, spacings = _model_inputs(tile, model_spacing, plan.factors)
    feats = None
    if features:
        logits, feats = model.forward_features(xs, input_spacing=spacings)[0]
        logits, feats = logits.float(), feats.float()
    else:
        logits = model(xs, input_spacing=spacings)[0].float()
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    if logits.shape[2:] != shape:
        logits = F.interpolate(logits, size=list(shape), mode=mode, align_corners=False)
    if feats is not None and feats.shape[2:] != shape:
        feats = F.interpolate(feats, size=list(shape), mode=mode, align_corners=False)
    n_classes = logits.shape[1] - int(plan.boundary)
    probs = torch.softmax(logits[:, :n_classes], dim=1)
    if plan.boundary:
        probs = torch.cat([probs, torch.sigmoid(logits[:, n_classes:])], dim=1)
    return probs[0], None if feats is None else feats[0]


@dataclass(frozen=True)
class _Plan:
    """What a prediction computes before its first tile: checked inputs and settings."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    model_spacing: tuple[float, ...]
    training_spacing: Sequence[float] | None
    tiles: list
    chunks: tuple[int, ...]
    factors: list[tuple[int, ...]]
    device: torch.device
    stats: IntensityStats
    boundary: bool
    class_names: list[str]
    channel_names: list[str]
    num_features: int = 0


def _check_model_and_image(model: torch.nn.Module, image, spacing: Sequence[float]):
    """``(spatial dims, spacing)``, or an error naming what does not fit the model."""
    if not hasattr(model, "num_outputs"):
        raise TypeError(
            f"{type(model).__name__} has no segmentation head; use a RATSegmentation model "
            "(a checkpoint of variant 'rat_segmentation')"
        )
    dims = model.spatial_dims
    if image.ndim != dims + 1:
        raise ValueError(
            f"image has shape {tuple(image.shape)}; the model expects [channels, "
            f"{dims} spatial axes]"
        )
    if image.shape[0] != model.backbone.input_features:
        raise ValueError(
            f"image has {image.shape[0]} channels; the model expects "
            f"{model.backbone.input_features}"
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dims or any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be {dims} positive values, got {spacing}")
    return dims, spacing


def _check_resample_growth(info, model_spacing, training_spacing) -> None:
    growth = math.prod(m / t for m, t in zip(model_spacing, training_spacing, strict=True))
    if growth > MAX_RESAMPLE_GROWTH:
        unit = info.units if info else "the model's unit"
        raise ValueError(
            f"resampling to the training spacing {tuple(training_spacing)} ({unit}) would "
            f"make every tile {growth:,.0f} times larger (spacing {model_spacing} in {unit}); "
            "check the image's units, or predict without resampling"
        )


def _plan(model, image, spacing, translation, options, stats, units) -> _Plan:
    """Check the inputs and settle every setting of the run (nothing is computed yet)."""
    info = getattr(model, "checkpoint_info", None)
    dims, spacing = _check_model_and_image(model, image, spacing)
    translation = tuple(float(t) for t in (translation or (0.0,) * dims))
    shape = tuple(int(n) for n in image.shape[1:])
    tile, halo = tile_and_halo(options, dims)
    tiles = tile_grid(shape, tile, halo, uniform_reads=True)
    device = resolve_device(options.device)
    normalization = dict(info.normalization) if info else {}
    stats = stats or image_statistics(image, normalization)
    training_spacing = info.training_spacing if info else None
    to_model = to_model_units(units, info.units if info else None, dims)
    model_spacing = tuple(s * f for s, f in zip(spacing, to_model, strict=True))
    if options.resample_to_training_spacing and training_spacing is not None:
        _check_resample_growth(info, model_spacing, training_spacing)
    factors = level_factors(info, spacing, options.levels)
    if len(factors[0]) != dims:
        raise ValueError(
            f"the checkpoint's level_factors {factors} are for {len(factors[0])} axes; the "
            f"model has {dims}"
        )
    boundary = bool(getattr(model, "boundary", False))
    class_names = list(getattr(model, "class_names", []))
    num_features = 0
    if options.features:
        if not hasattr(model, "forward_features"):
            raise TypeError(
                f"{type(model).__name__} gives no per-pixel features; use a RATSegmentation "
                "model (a checkpoint of variant 'rat_segmentation')"
            )
        num_features = int(model.num_features)
    return _Plan(
        shape=shape,
        spacing=spacing,
        translation=translation,
        model_spacing=model_spacing,
        training_spacing=training_spacing,
        tiles=tiles,
        chunks=tuple(min(t, n) for t, n in zip(tile, shape, strict=True)),
        factors=factors,
        device=device,
        stats=stats,
        boundary=boundary,
        class_names=class_names,
        channel_names=[*class_names, *(["boundary"] if boundary else [])],
        num_features=num_features,
    )


def tile_and_halo(options: PredictOptions, dims: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tile and halo a prediction uses: the options', else 256/32 in 2D and 64/12 in 3D."""
    tile = options.tile or ((256,) * dims if dims < 3 else (64,) * dims)
    halo = options.halo or ((32,) * dims if dims < 3 else (12,) * dims)
    return tuple(int(t) for t in tile), tuple(int(h) for h in halo)


def training_tiles(crop_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tiles read at a training crop's size: a core of 3/4 of it and a halo of 1/8 on each
    side. A dense-attention model's output depends on the tile (every token attends to the
    whole of it): these run it as its training validated it."""
    halo = tuple(max(int(c) // 8, 0) for c in crop_size)
    tile = tuple(max(int(c) - 2 * h, 1) for c, h in zip(crop_size, halo, strict=True))
    return tile, halo


def _predict_tiles(
    model,
    image,
    plan: _Plan,
    options,
    probs,
    semantic,
    cancel,
    tiles=None,
    within=None,
    features=None,
):
    """Every tile (of ``tiles``, default the plan's) through the model into
    ``probs``/``semantic`` (and its per-pixel features into ``features``, when given), writing
    only inside ``within`` (slices; default everywhere); yields :class:`Progress`, returns the
    count of non-finite input pixels written."""
    nan_pixels = 0
    stats, n_classes = plan.stats, len(plan.class_names)
    tiles = plan.tiles if tiles is None else tiles
    # no_grad, not inference_mode: RoSE caches position tensors across calls (lru_cache),
    # and an inference tensor in that cache would break later training in this process. Only
    # around the forward, never across a `yield`: grad mode is per thread, and a generator
    # suspended (or abandoned on cancel) inside `no_grad` left its worker thread without
    # gradients, so the next job in that pooled thread (a quick tune) could not train.
    for done, t in enumerate(tiles, 1):
        if cancel is not None and cancel.is_set():
            raise PredictionCancelled("prediction cancelled")
        core, crop = _clipped(t, within)
        data = np.asarray(image[(slice(None), *t.read)], dtype=np.float32)
        data, missing = _mask_missing(data, stats)
        x = torch.from_numpy(stats.apply(data)).unsqueeze(0).to(plan.device)
        with torch.no_grad(), autocast_for(plan.device, options.precision):
            p, f = _tile_outputs(model, x, plan, options, features is not None)
        p = p[(slice(None), *crop)].cpu().numpy()
        if missing is not None:
            missing = missing[crop]
        if features is not None:
            f = f[(slice(None), *crop)].cpu().numpy().astype(np.float16)
            if missing is not None:
                f[:, missing] = 0.0
            features[(slice(None), *core)] = f
            del f
        if missing is not None:
            nan_pixels += int(missing.sum())
            p[:, missing] = 0.0
            p[0, missing] = 1.0  # background, sure
        probs[(slice(None), *core)] = p
        semantic[core] = np.argmax(p[:n_classes], axis=0).astype(np.uint8)
        del data, x, p
        release_freed_memory()  # what the forward freed: else the peak grows with the run
        yield Progress("tiles", done, len(tiles))
    return nan_pixels


def _clipped(t, within):
    """The tile's core and crop, cut to ``within`` (slices of the image; ``None``: whole)."""
    if within is None:
        return t.core, t.crop
    core, crop = [], []
    for c, k, w in zip(t.core, t.crop, within, strict=True):
        lo, hi = max(c.start, w.start), min(c.stop, w.stop)
        core.append(slice(lo, hi))
        crop.append(slice(k.start + lo - c.start, k.start + hi - c.start))
    return tuple(core), tuple(crop)


def tiles_within(plan: _Plan, region: Sequence[slice]) -> list:
    """The plan's tiles whose core meets ``region`` (slices of the image)."""
    return [
        t
        for t in plan.tiles
        if all(c.start < r.stop and r.start < c.stop for c, r in zip(t.core, region, strict=True))
    ]


def plan_prediction(
    model, image, spacing, translation=None, *, options=None, stats=None, units=None
) -> _Plan:
    """Check the inputs and settle every setting of a run, as :func:`predict` does first.

    The seam for running the engine elsewhere (``napari_rat.cluster.predict``): the plan is
    made once, then :func:`predict_tiles_into` runs any subset of its tiles and
    :func:`instances_into` the instance step, each exactly as :func:`predict` runs them.
    """
    return _plan(model, image, spacing, translation, options or PredictOptions(), stats, units)


def predict_tiles_into(
    model, image, plan: _Plan, probs, semantic, *, options=None, tiles=None, within=None
) -> Generator[Progress, None, int]:
    """Run ``tiles`` of ``plan`` (default all) into the open arrays ``probs``/``semantic``,
    writing only inside ``within`` (slices: a block of the image; default everywhere).
    A generator like :func:`predict`'s tile step; returns the count of non-finite pixels.
    ``model`` must already be on ``plan.device`` in eval mode."""
    options = options or PredictOptions()
    return (
        yield from _predict_tiles(model, image, plan, options, probs, semantic, None, tiles, within)
    )


def instances_into(
    model, plan: _Plan, probs, root, *, options=None, cancel=None
) -> Generator[Progress, None, tuple[Any, int]]:
    """The instance step of :func:`predict` over ``probs``, its arrays made in the zarr group
    ``root``; returns ``(labels, count)``."""
    options = options or PredictOptions()
    return (
        yield from _instances(
            probs,
            root,
            plan.shape,
            plan.chunks,
            plan.boundary,
            options,
            cancel,
            plan.spacing,
            _min_pixels(model, plan, options),
            grow_radius_for(checkpoint_head(model), options),
        )
    )


def checkpoint_head(model):
    """The head config of the checkpoint ``model`` was loaded from, or ``None``."""
    info = getattr(model, "checkpoint_info", None)
    return None if info is None else info.model_config.head


def grow_radius_for(head, options: PredictOptions) -> int:
    """How far seeds grow back: the option, else :func:`grow_radius` of the ``head``'s boundary
    band (``None``, a model without a checkpoint: the 1-pixel band). Prediction passes its
    checkpoint's head (:func:`checkpoint_head`), validation the head of the config in training."""
    if options.boundary_radius is not None:
        return int(options.boundary_radius)
    return grow_radius(head.boundary_width if head is not None else 1)


def _min_pixels(model, plan: _Plan, options: PredictOptions) -> float:
    """The instance size limit in pixels: the option in the image's unit, else the
    checkpoint's setting in the model's."""
    dims = len(plan.shape)
    head = checkpoint_head(model)
    if options.min_instance_size is None and head is not None:
        return min_instance_pixels(head.min_instance_size or 0.0, plan.model_spacing, dims)
    return min_instance_pixels(options.min_instance_size or 0.0, plan.spacing, dims)


def predict(
    model: torch.nn.Module,
    image,
    spacing: Sequence[float],
    translation: Sequence[float] | None = None,
    *,
    options: PredictOptions | None = None,
    stats: IntensityStats | None = None,
    store: str | Path | None = None,
    cancel: threading.Event | None = None,
    units: Sequence[str | None] | str | None = None,
) -> Generator[Progress, None, Prediction]:
    """Predict over a whole image or volume, tile by tile.

    Parameters
    ----------
    model
        A segmentation model (``RATSegmentation``, e.g. from ``load_checkpoint``). It is run in
        eval mode on the chosen device and given back in the mode it came in.
    image
        ``[C, *spatial]`` array (NumPy, dask or zarr; read lazily, tile by tile).
    spacing, translation
        Physical voxel size and origin of the spatial axes.
    options
        Tile, halo, levels, device, precision, resampling and instance settings.
    stats
        Intensity statistics for normalisation; by default computed from the image with the
        checkpoint's normalisation settings.
    store
        A directory for a zarr store holding the results (built aside, moved into place when
        complete); ``None`` keeps the results in memory.
    cancel
        Set it to stop between tiles.
    units
        The length unit of ``spacing`` (one, or one per spatial axis). The model is given the
        spacing in its checkpoint's unit (:mod:`~napari_rat.io.units`); ``None`` (or
        ``pixel``) means the model's own unit. The results keep the image's unit.

    Yields
    ------
    Progress
        After each tile, then during the instance step.

    Returns
    -------
    Prediction
    """
    options = options or PredictOptions()
    plan = _plan(model, image, spacing, translation, options, stats, units)
    was_training = model.training
    try:
        with staged_store(store) as built:
            root = None if built is None else open_new_group(built)
            shape, chunks = plan.shape, plan.chunks
            probs = new_array(
                root, "probabilities", (len(plan.channel_names), *shape), (1, *chunks), np.float32
            )
            semantic = new_array(root, "semantic", shape, chunks, np.uint8)
            features = None
            if plan.num_features:
                features = new_array(
                    root,
                    "features",
                    (plan.num_features, *shape),
                    (plan.num_features, *chunks),
                    np.float16,
                )
            model = model.to(plan.device).eval()
            nan_pixels = yield from _predict_tiles(
                model, image, plan, options, probs, semantic, cancel, features=features
            )
            labels, n_instances = None, 0
            radius = grow_radius_for(checkpoint_head(model), options)
            if options.instances:
                labels, n_instances = yield from _instances(
                    probs,
                    root,
                    shape,
                    chunks,
                    plan.boundary,
                    options,
                    cancel,
                    plan.spacing,
                    _min_pixels(model, plan, options),
                    radius,
                )
            result = Prediction(
                probs,
                semantic,
                labels,
                plan.class_names,
                plan.channel_names,
                plan.spacing,
                plan.translation,
                num_instances=n_instances,
                extra={"stats": plan.stats, "levels": plan.factors},
                nan_pixels=nan_pixels,
                features=features,
                boundary_radius=radius,
            )
            if root is not None:
                root.attrs.update({"napari_rat": placement_attrs(result)})
        if store is None:
            return result
        return published(result, Path(store), with_labels=options.instances)
    finally:
        model.train(was_training)


def _mask_missing(data: np.ndarray, stats: IntensityStats) -> tuple[np.ndarray, np.ndarray | None]:
    """``data`` with its non-finite pixels (any channel) at each channel's low intensity, and
    where they were (a spatial mask; ``None`` when there are none).

    One NaN in a tile would make the whole tile's output NaN (the model mixes every pixel).
    ``data`` may be a view of the caller's image: it is copied, never changed.
    """
    bad = ~np.isfinite(data)
    if not bad.any():
        return data, None
    low = np.asarray(stats.offset, np.float32).reshape((-1,) + (1,) * (data.ndim - 1))
    return np.where(bad, low, data).astype(np.float32, copy=False), bad.any(axis=0)


def _instances(probs, root, shape, chunks, boundary, options, cancel, spacing, min_pixels, radius):
    """The package's instance algorithm over the probability chunks (see ``instances``)."""
    thr = options.threshold

    def foreground(sl):
        return (1.0 - np.asarray(probs[(slice(0, 1), *sl)])[0]) > thr

    def cores(sl):
        fg = foreground(sl)
        if boundary:
            fg &= np.asarray(probs[(slice(-1, None), *sl)])[0] <= thr
        return fg

    scratch = new_array(root, "seeds", shape, chunks, np.int32)
    labels = new_array(root, "labels", shape, chunks, np.int32)
    steps = instances_chunked(
        foreground,
        cores,
        scratch,
        labels,
        shape,
        chunks,
        radius=radius,
        spacing=spacing,
        min_pixels=min_pixels,
    )
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            n = stop.value
            break
        yield Progress("instances", done, total)
        if done < total and cancel is not None and cancel.is_set():
            raise PredictionCancelled("prediction cancelled")
    if root is not None:
        del root["seeds"]
    return labels, n


def run_prediction(
    gen: Generator[Progress, None, Prediction],
    on_progress: Callable[[Progress], None] | None = None,
) -> Prediction:
    """Drive a :func:`predict` generator to the end and return its :class:`Prediction`."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress:
            on_progress(p)
