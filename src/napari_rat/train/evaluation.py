"""Evaluation: metrics on whole regions, the resolution-robustness study, an Otsu floor.

Resolution robustness: each region is resampled to ``1/f`` times as many pixels per axis
(spacing ``f`` times coarser), predicted at that spacing, and the logits are resampled back onto
the native grid, where they are scored against the native ground truth. So every row of the
table is scored against the same labels; ``f = 1`` is the native spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_rat.config import ExperimentConfig
from napari_rat.inference.instances import (
    drop_small_instances,
    instances_from_logits,
    relabel_sequential,
)
from napari_rat.train.metrics import ap_from_counts, instance_counts
from napari_rat.train.precision import autocast_dtype
from napari_rat.train.tiled_predict import predict_logits, rescale_image, resize_logits


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

    def metrics(self) -> dict[str, float]:
        dice = 1.0 if self.total == 0 else 2 * self.inter / self.total
        iou = 1.0 if self.union == 0 else self.inter / self.union
        ap = ap_from_counts({"tp": self.tp, "fp": self.fp, "fn": self.fn})
        return {"dice": dice, "iou": iou, "ap50": ap, "score": (dice + ap) / 2}


# Candidate minimum instance sizes, in pixels at the validation spacing, that training tries on
# the validation split when the head's ``min_instance_size`` is ``None``.
MIN_INSTANCE_PIXELS = (0, 8, 16, 32, 64, 128)


def predict_region_logits(
    model: torch.nn.Module,
    image: np.ndarray,
    spacing: Sequence[float],
    config: ExperimentConfig,
    *,
    factor: float = 1.0,
    device: str | torch.device = "cpu",
    autocast: str = "fp32",
) -> np.ndarray:
    """Logits of a normalised region ``[C, *spatial]`` predicted at ``factor`` x spacing and
    brought back onto the region's native grid."""
    scaled = rescale_image(image, factor)
    scaled_spacing = [s * image.shape[1 + d] / scaled.shape[1 + d] for d, s in enumerate(spacing)]
    scales = config.data.scales if config.data.multi_scale else [1]
    logits = predict_logits(
        model,
        scaled,
        scaled_spacing,
        config.data.crop_size,
        scales=scales,
        device=device,
        autocast_dtype=autocast_dtype(autocast),
    )
    return resize_logits(logits, image.shape[1:])


def _instances(logits: np.ndarray, spacing, config: ExperimentConfig) -> np.ndarray:
    """The head's instances, before any minimum-size filter."""
    head = config.model.head
    return instances_from_logits(
        logits, len(head.class_names), boundary=head.boundary, spacing=list(spacing)
    )


def evaluate_regions(
    model: torch.nn.Module,
    regions: Sequence,
    config: ExperimentConfig,
    *,
    factor: float = 1.0,
    device: str | torch.device = "cpu",
    autocast: str = "fp32",
    select_min_instance_size: bool = False,
) -> dict[str, float]:
    """Pooled ``dice``, ``iou``, ``ap50`` and ``score`` (mean of Dice and AP) over regions.

    The instances use the head's ``min_instance_size``. With ``select_min_instance_size`` and
    the head's size unset (training, on the validation split), every size of
    :data:`MIN_INSTANCE_PIXELS` is tried on the same logits and the best score is returned
    (ties go to the smaller size); the chosen physical size is returned as
    ``min_instance_size``. Never select on the data you report.
    """
    fixed = config.model.head.min_instance_size
    logits = [
        predict_region_logits(
            model, r.image, r.spacing, config, factor=factor, device=device, autocast=autocast
        )
        for r in regions
    ]
    if fixed is not None or not select_min_instance_size or not regions:
        candidates = [float(fixed or 0.0)]
    else:
        pixel = float(np.prod(regions[0].spacing))
        candidates = [n * pixel for n in MIN_INSTANCE_PIXELS]
    # The instances once per region; each candidate size only filters them (as
    # ``instances_from_probabilities`` does last).
    unfiltered = [_instances(lg, r.spacing, config) for r, lg in zip(regions, logits, strict=True)]
    scored = []
    for size in candidates:
        score = RegionScore()
        for region, labels in zip(regions, unfiltered, strict=True):
            if size > 0:
                labels = relabel_sequential(drop_small_instances(labels, size, region.spacing))
            score.add(labels, region.labels)
        scored.append({**score.metrics(), "min_instance_size": size})
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


def evaluate_otsu(regions: Sequence, factor: float = 1.0) -> dict[str, float]:
    """The Otsu floor on the same regions and the same resampling as the model."""
    score = RegionScore()
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
        score.add(labels, region.labels)
    return score.metrics()


def _fit(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = np.zeros(shape, dtype=array.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    out[sl] = array[sl]
    return out


def robustness_table(
    model: torch.nn.Module,
    regions: Sequence,
    config: ExperimentConfig,
    factors: Sequence[float],
    *,
    baseline: bool = True,
    device: str | torch.device = "cpu",
) -> list[dict[str, float]]:
    """One row per spacing factor: the model's metrics and, with ``baseline``, Otsu's."""
    rows = []
    for f in factors:
        row = {"factor": float(f)}
        row.update(
            {
                f"model_{k}": v
                for k, v in evaluate_regions(
                    model, regions, config, factor=f, device=device
                ).items()
            }
        )
        if baseline:
            row.update({f"otsu_{k}": v for k, v in evaluate_otsu(regions, f).items()})
        rows.append(row)
    return rows
