"""Whole-region prediction for validation and evaluation: overlapping tiles, blended logits.

A small in-memory predictor for the training backend (regions of a few hundred pixels); the
lazy, out-of-core inference engine lives in :mod:`napari_rat.inference`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_rat.train.crops import level_shapes


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    out = list(range(0, size - tile, step))
    out.append(size - tile)
    return out


def _window(shape: Sequence[int]) -> np.ndarray:
    """Blending weights: a tent, never zero, so every pixel is covered."""
    w = np.ones(shape, dtype=np.float32)
    for d, n in enumerate(shape):
        ramp = np.minimum(np.arange(n) + 1, n - np.arange(n)).astype(np.float32)
        ramp = np.minimum(ramp / max(n / 4, 1), 1.0)
        s = [1] * len(shape)
        s[d] = n
        w = w * ramp.reshape(s)
    return w


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    image: np.ndarray,
    spacing: Sequence[float],
    tile: Sequence[int],
    *,
    scales: Sequence[int] = (1,),
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Logits ``[K, *spatial]`` of a normalised image ``[C, *spatial]`` at ``spacing``.

    ``scales`` > 1 feed the model the multi-scale levels it was trained with (each tile
    downsampled by area averaging, at spacing x scale); the level-0 logits are returned.
    """
    ndim = len(tile)
    spatial = image.shape[1:]
    pad = [max(t - s, 0) for t, s in zip(tile, spatial, strict=True)]
    x = image
    if any(pad):
        x = np.pad(
            image,
            [(0, 0)] + [(0, p) for p in pad],
            mode="reflect" if all(s > p for s, p in zip(spatial, pad, strict=True)) else "edge",
        )
    shape = x.shape[1:]
    step = [max(1, int(t * (1 - overlap))) for t in tile]
    corners = np.stack(
        np.meshgrid(
            *[_starts(s, t, p) for s, t, p in zip(shape, tile, step, strict=True)], indexing="ij"
        ),
        -1,
    ).reshape(-1, ndim)
    weight = _window(tile)
    out = None
    norm = np.zeros(shape, dtype=np.float32)
    shapes = level_shapes(tile, scales)
    # Levels of a tile share its physical box; their spacing follows from their pixel count.
    spacings = [
        tuple(t * s / n for t, s, n in zip(tile, spacing, sh, strict=True)) for sh in shapes
    ]
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(corners), batch_size):
            if cancelled is not None and cancelled():
                raise InterruptedError("prediction cancelled")
            group = corners[b : b + batch_size]
            tiles = np.stack(
                [
                    x[(slice(None), *(slice(c, c + t) for c, t in zip(cr, tile, strict=True)))]
                    for cr in group
                ]
            )
            t0 = torch.from_numpy(tiles).to(device)
            levels = [t0] + [F.interpolate(t0, size=sh, mode="area") for sh in shapes[1:]]
            with torch.autocast(
                device_type=torch.device(device).type,
                dtype=autocast_dtype or torch.bfloat16,
                enabled=autocast_dtype is not None,
            ):
                logits = model(levels if len(levels) > 1 else levels[0], spacings)[0]
            logits = logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((logits.shape[1], *shape), dtype=np.float32)
            for cr, lg in zip(group, logits, strict=True):
                sl = tuple(slice(c, c + t) for c, t in zip(cr, tile, strict=True))
                out[(slice(None), *sl)] += lg * weight
                norm[sl] += weight
    finally:
        model.train(was_training)
    out /= norm
    return out[(slice(None), *(slice(0, s) for s in spatial))]


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample ``[C, *spatial]`` to ``1/factor`` times as many pixels per axis (area/linear)."""
    if factor == 1:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image))[None]
    size = [max(1, int(round(s / factor))) for s in image.shape[1:]]
    mode = "area" if factor > 1 else ("bilinear" if image.ndim == 3 else "trilinear")
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=size, mode=mode, **kwargs)[0].numpy()


def resize_logits(logits: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linearly resample logits ``[K, *spatial]`` onto ``shape``."""
    if tuple(logits.shape[1:]) == tuple(shape):
        return logits
    t = torch.from_numpy(np.ascontiguousarray(logits))[None]
    mode = "bilinear" if logits.ndim == 3 else "trilinear"
    return F.interpolate(t, size=list(shape), mode=mode, align_corners=False)[0].numpy()
