"""Evaluation: metrics on whole regions, the resolution-robustness study, an Otsu floor.

Resolution robustness: each region is resampled to ``1/f`` times as many pixels per axis
(spacing ``f`` times coarser), predicted at that spacing, and the probabilities are resampled
back onto the native grid, where they are scored against the native ground truth. So every row
of the table is scored against the same labels; ``f = 1`` is the native spacing.

Every prediction here is the inference engine's (:func:`napari_rat.inference.predict`, on the
in-memory region, with the engine's tiles and the checkpoint's pyramid levels): validation and
``napari-rat evaluate`` score the predictor that ``napari-rat predict`` and the docks run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from napari_rat.config import ExperimentConfig
from napari_rat.inference.instances import instances_from_probabilities
from napari_rat.inference.normalization import IntensityStats
from napari_rat.inference.tiled_predict import (
    PredictOptions,
    grow_radius_for,
    predict,
    run_prediction,
    training_tiles,
)
from napari_rat.train.metrics import ap_from_counts, instance_counts


@dataclass
class RegionScore:
    """Pixel counts for pooled Dice/IoU and instance counts for pooled AP."""

    inter: float = 0.0
    total: float = 0.0
    union: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        valid = truth >= 0
        p, t = (pred > 0) & valid, (truth > 0) & valid
        self.inter += float((p & t).sum())
        self.total += float(p.sum() + t.sum())
        self.union += float((p | t).sum())
        c = instance_counts(pred, truth)
        self.tp += c["tp"]
        self.fp += c["fp"]
        self.fn += c["fn"]

    def merge(self, other: RegionScore) -> None:
        """Pool ``other``'s counts into these."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def metrics(self) -> dict[str, float]:
        dice = 1.0 if self.total == 0 else 2 * self.inter / self.total
        iou = 1.0 if self.union == 0 else self.inter / self.union
        ap = ap_from_counts({"tp": self.tp, "fp": self.fp, "fn": self.fn})
        return {"dice": dice, "iou": iou, "ap50": ap, "score": (dice + ap) / 2}


# Candidate minimum instance sizes, in pixels at the validation spacing, that training tries on
# the validation split when the head's ``min_instance_size`` is ``None``.
MIN_INSTANCE_PIXELS = (0, 8, 16, 32, 64, 128)


def validation_options(
    config: ExperimentConfig, device: str | torch.device = "cpu", precision: str = "fp32"
) -> PredictOptions:
    """The engine's settings for validating ``config``'s model while it trains.

    The engine's default tiles and halos (those of ``napari-rat predict``), except for the
    package's ``dense`` attention, whose cost is quadratic in the tile: its tiles are read at
    the training crop size (:func:`~napari_rat.inference.tiled_predict.training_tiles`; what
    ``--as-trained`` runs at inference).
    """
    options = PredictOptions(device=str(device), precision=precision)
    if config.model.sga_attention_type == "dense":
        options.tile, options.halo = training_tiles(config.data.crop_size)
    return options


def predict_region_probabilities(
    model: torch.nn.Module,
    image: np.ndarray,
    spacing: Sequence[float],
    options: PredictOptions,
    *,
    factor: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """The engine's probabilities of a normalised region ``[C, *spatial]`` predicted at
    ``factor`` x spacing (one number, or one per spatial axis), brought back (linearly) onto
    the region's native grid."""
    scaled = rescale_image(image, factor)
    scaled_spacing = [s * image.shape[1 + d] / scaled.shape[1 + d] for d, s in enumerate(spacing)]
    channels = image.shape[0]
    already_normalised = IntensityStats((0.0,) * channels, (1.0,) * channels)
    result = run_prediction(
        predict(
            model,
            scaled,
            scaled_spacing,
            options=dataclasses.replace(options, instances=False),
            stats=already_normalised,
        )
    )
    return _resize(np.asarray(result.probabilities), image.shape[1:])


def _instances(
    probs: np.ndarray, spacing, head, options: PredictOptions, size: float
) -> np.ndarray:
    """The engine's instances of its probabilities, with minimum instance size ``size``."""
    return instances_from_probabilities(
        1.0 - probs[0],
        probs[-1] if head.boundary else None,
        threshold=options.threshold,
        boundary_threshold=options.threshold,
        spacing=list(spacing),
        radius=grow_radius_for(head, options),
        min_instance_size=size,
    )


def evaluate_regions(
    model: torch.nn.Module,
    regions: Sequence,
    config: ExperimentConfig,
    *,
    factor: float | Sequence[float] = 1.0,
    options: PredictOptions | None = None,
    select_min_instance_size: bool = False,
    per_region: bool = False,
) -> dict:
    """Pooled ``dice``, ``iou``, ``ap50`` and ``score`` (mean of Dice and AP) over regions;
    with ``per_region``, also ``per_region``: the same metrics of each region alone, from the
    same predictions.

    The regions are predicted by the engine with ``options`` (default:
    :func:`validation_options`, on the CPU in fp32).

    The instances use the head's ``min_instance_size``. With ``select_min_instance_size`` and
    the head's size unset (training, on the validation split), every size of
    :data:`MIN_INSTANCE_PIXELS` is tried on the same predictions and the best score is returned
    (ties go to the smaller size); the chosen physical size is returned as
    ``min_instance_size``. Never select on the data you report.
    """
    fixed = config.model.head.min_instance_size
    options = options or validation_options(config)
    probabilities = [
        predict_region_probabilities(model, r.image, r.spacing, options, factor=factor)
        for r in regions
    ]
    if fixed is not None or not select_min_instance_size or not regions:
        candidates = [float(fixed or 0.0)]
    else:
        pixel = float(np.prod(regions[0].spacing))
        candidates = [n * pixel for n in MIN_INSTANCE_PIXELS]
    # The instances of each candidate size from the same probabilities (the size also decides
    # which cores seed an instance, so each is the engine's own result at that size).
    scored = []
    for size in candidates:
        score, alone = RegionScore(), []
        for region, probs in zip(regions, probabilities, strict=True):
            labels = _instances(probs, region.spacing, config.model.head, options, size)
            alone.append(RegionScore())
            alone[-1].add(labels, region.labels)
            score.merge(alone[-1])
        metrics = {**score.metrics(), "min_instance_size": size}
        if per_region:
            metrics["per_region"] = [a.metrics() for a in alone]
        scored.append(metrics)
    return max(scored, key=lambda m: m["score"])  # the first (smallest size) of equal scores


def otsu_instances(image: np.ndarray, spacing: Sequence[float], sigma: float = 2.0) -> np.ndarray:
    """The floor: Gaussian smoothing (``sigma`` in physical units), Otsu, connected components."""
    smooth = ndi.gaussian_filter(
        np.asarray(image, dtype=np.float32).mean(0), [sigma / s for s in spacing]
    )
    threshold = otsu_threshold(smooth)
    labels, _ = ndi.label(smooth > threshold)
    return labels.astype(np.int32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of ``values``."""
    hist, edges = np.histogram(values.ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def evaluate_otsu(
    regions: Sequence, factor: float | Sequence[float] = 1.0, *, per_region: bool = False
) -> dict:
    """The Otsu floor on the same regions and the same resampling as the model (with
    ``per_region``, also each region's metrics alone, as :func:`evaluate_regions`)."""
    score, alone = RegionScore(), []
    for region in regions:
        scaled = rescale_image(region.image, factor)
        sp = [
            s * region.image.shape[1 + d] / scaled.shape[1 + d]
            for d, s in enumerate(region.spacing)
        ]
        labels = otsu_instances(scaled, sp)
        if scaled.shape[1:] != region.image.shape[1:]:
            zoom = [a / b for a, b in zip(region.image.shape[1:], labels.shape, strict=True)]
            labels = ndi.zoom(labels, zoom, order=0, grid_mode=True, mode="nearest")
            labels = _fit(labels, region.image.shape[1:])
        alone.append(RegionScore())
        alone[-1].add(labels, region.labels)
        score.merge(alone[-1])
    metrics = score.metrics()
    if per_region:
        metrics["per_region"] = [a.metrics() for a in alone]
    return metrics


def _fit(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = np.zeros(shape, dtype=array.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    out[sl] = array[sl]
    return out


@dataclass
class RobustnessTables:
    """:func:`robustness_tables`' rows: ``pooled`` over the regions, and ``by_region``, one
    table (the same rows and keys) per region, scored alone from the same predictions."""

    pooled: list[dict[str, float]]
    by_region: list[list[dict[str, float]]]


def robustness_tables(
    model: torch.nn.Module,
    regions: Sequence,
    config: ExperimentConfig,
    factors: Sequence[float],
    *,
    baseline: bool = True,
    options: PredictOptions | None = None,
    compare: Sequence[tuple[str, torch.nn.Module]] = (),
    axes: Sequence[int] | None = None,
) -> RobustnessTables:
    """One row per spacing factor: the model's metrics (``model_dice``, ...), those of each
    ``compare`` model under its name (``<name>_dice``, ...) and, with ``baseline``, Otsu's;
    pooled over the regions, and region by region (each model and factor predicted once).

    ``axes``: the spatial axes the factor coarsens (e.g. ``[0]``: z alone, the anisotropy of
    a volume); default every axis.

    ``options``: the engine's settings (default: :func:`validation_options`). A compared
    model loaded from a checkpoint is scored with its own head settings (minimum instance
    size), on the same regions and factors.
    """
    taken = {"model", "otsu", "factor"}
    for name, _ in compare:
        if name in taken or not name:
            raise ValueError(f"compared model name {name!r} is empty or taken; rename it")
        taken.add(name)
    scored = [("model", model, config)] + [
        (name, other, _config_of(other, config)) for name, other in compare
    ]
    rows, by_region = [], [[] for _ in regions]
    ndim = regions[0].image.ndim - 1 if regions else 0
    for f in factors:
        row = {"factor": float(f)}
        alone = [{"factor": float(f)} for _ in regions]
        per_axis = axis_factors(f, ndim, axes)
        results = [
            (
                name,
                evaluate_regions(
                    m, regions, cfg, factor=per_axis, options=options, per_region=True
                ),
            )
            for name, m, cfg in scored
        ]
        if baseline:
            results.append(("otsu", evaluate_otsu(regions, per_axis, per_region=True)))
        for name, metrics in results:
            for region_row, region_metrics in zip(alone, metrics.pop("per_region"), strict=True):
                region_row.update({f"{name}_{k}": v for k, v in region_metrics.items()})
                if "min_instance_size" in metrics:
                    region_row[f"{name}_min_instance_size"] = metrics["min_instance_size"]
            row.update({f"{name}_{k}": v for k, v in metrics.items()})
        rows.append(row)
        for table, region_row in zip(by_region, alone, strict=True):
            table.append(region_row)
    return RobustnessTables(rows, by_region)


def _config_of(model: torch.nn.Module, config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the model section of ``model``'s checkpoint, when it has one."""
    info = getattr(model, "checkpoint_info", None)
    if info is None:
        return config
    return config.model_copy(update={"model": info.model_config})


def axis_factors(factor: float, ndim: int, axes: Sequence[int] | None = None) -> tuple[float, ...]:
    """``factor`` on each of ``axes`` (default all ``ndim`` spatial axes), 1 on the others.

    Raises
    ------
    ValueError
        For an axis the data does not have.
    """
    chosen = range(ndim) if axes is None else list(axes)
    if any(not 0 <= a < ndim for a in chosen):
        raise ValueError(f"axes {list(chosen)} do not exist in {ndim}D data")
    return tuple(float(factor) if d in chosen else 1.0 for d in range(ndim))


def rescale_image(image: np.ndarray, factor: float | Sequence[float]) -> np.ndarray:
    """Resample ``[C, *spatial]`` to ``1/factor`` times as many pixels per axis (area when
    every axis gets coarser or stays, else linear); ``factor``: one number or one per axis."""
    ndim = image.ndim - 1
    factors = axis_factors(factor, ndim) if np.isscalar(factor) else tuple(factor)
    if all(f == 1 for f in factors):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    size = [max(1, int(round(s / f))) for s, f in zip(image.shape[1:], factors, strict=True)]
    coarser = all(f >= 1 for f in factors)
    mode = "area" if coarser else ("bilinear" if image.ndim == 3 else "trilinear")
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=size, mode=mode, **kwargs)[0].numpy()


def _resize(maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linearly resample ``[K, *spatial]`` maps onto ``shape``."""
    if tuple(maps.shape[1:]) == tuple(shape):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps))[None]
    mode = "bilinear" if maps.ndim == 3 else "trilinear"
    return F.interpolate(t, size=list(shape), mode=mode, align_corners=False)[0].numpy()
