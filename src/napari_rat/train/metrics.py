"""Segmentation metrics: foreground Dice and IoU, instance AP at an IoU threshold.

Instance "AP@t" follows the 2018 Data Science Bowl / StarDist convention:
``TP / (TP + FP + FN)`` where a predicted and a true instance match when their IoU exceeds
``t``; for ``t >= 0.5`` a match is unique, so no assignment problem arises. Pixels labelled
``-1`` in the ground truth are ignored.
"""

from __future__ import annotations

import numpy as np


def foreground_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU of ``pred > 0`` against ``truth > 0`` over pixels with ``truth >= 0``."""
    valid = truth >= 0
    p = (pred > 0) & valid
    t = (truth > 0) & valid
    inter = float(np.logical_and(p, t).sum())
    total = float(p.sum() + t.sum())
    union = float(np.logical_or(p, t).sum())
    return {
        "dice": 1.0 if total == 0 else 2 * inter / total,
        "iou": 1.0 if union == 0 else inter / union,
    }


def instance_counts(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """``tp``, ``fp``, ``fn`` of instance matching at IoU > ``threshold`` (>= 0.5)."""
    if threshold < 0.5:
        raise ValueError("instance matching here needs threshold >= 0.5 (unique matches)")
    valid = truth >= 0
    p = np.where(valid, pred, 0).astype(np.int64).ravel()
    t = np.where(valid, truth, 0).astype(np.int64).ravel()
    _, p = np.unique(p, return_inverse=True)
    _, t = np.unique(t, return_inverse=True)
    # Relabel so that 0 stays background when present.
    p_has_bg = (np.where(valid, pred, 0) == 0).any()
    t_has_bg = (np.where(valid, truth, 0) == 0).any()
    n_p, n_t = int(p.max()) + 1, int(t.max()) + 1
    pairs = np.bincount(p * n_t + t, minlength=n_p * n_t).reshape(n_p, n_t).astype(np.float64)
    p_size = pairs.sum(1, keepdims=True)
    t_size = pairs.sum(0, keepdims=True)
    iou = pairs / np.maximum(p_size + t_size - pairs, 1)
    if p_has_bg:
        iou = iou[1:]
    if t_has_bg:
        iou = iou[:, 1:]
    tp = int((iou > threshold).sum())
    return {"tp": tp, "fp": iou.shape[0] - tp, "fn": iou.shape[1] - tp}


def ap_from_counts(counts: dict[str, int]) -> float:
    """``TP / (TP + FP + FN)``; 1.0 when there is nothing to find and nothing found."""
    denom = counts["tp"] + counts["fp"] + counts["fn"]
    return 1.0 if denom == 0 else counts["tp"] / denom


def segmentation_metrics(
    pred_instances: np.ndarray, truth_instances: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """``dice``, ``iou`` (foreground) and ``ap50`` (instances) in one dict."""
    out = foreground_scores(pred_instances, truth_instances)
    counts = instance_counts(pred_instances, truth_instances, threshold)
    out["ap50"] = ap_from_counts(counts)
    out.update({k: float(v) for k, v in counts.items()})
    return out
