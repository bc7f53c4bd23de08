"""Intensity normalisation of model inputs, from the settings stored in a checkpoint.

A checkpoint's ``normalization`` dict says how its training images were scaled: ``mode`` (or
``method``, with ``percentiles: [low, high]``, as the training backend writes it)
``"percentile"`` (``low``/``high`` percentiles mapped to 0/1, the default), ``"zscore"`` (mean 0,
standard deviation 1) or ``"none"``. At inference the same statistics are computed on the new
image, from a bounded sample of it, so large images are never loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: At most this many pixels are read to compute statistics.
SAMPLE_PIXELS = 1 << 22


@dataclass(frozen=True)
class IntensityStats:
    """Per-channel ``offset`` and ``scale``: normalised = (x - offset) / scale."""

    offset: tuple[float, ...]
    scale: tuple[float, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Normalise ``[C, *spatial]`` data (float32 out)."""
        shape = (-1,) + (1,) * (data.ndim - 1)
        off = np.asarray(self.offset, dtype=np.float32).reshape(shape)
        sc = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        return ((data.astype(np.float32, copy=False) - off) / sc).astype(np.float32, copy=False)


def _sample(image) -> np.ndarray:
    """A strided sample of ``[C, *spatial]`` with at most :data:`SAMPLE_PIXELS` per channel."""
    spatial = image.shape[1:]
    n = math.prod(spatial)
    step = max(1, math.ceil((n / SAMPLE_PIXELS) ** (1 / len(spatial))))
    sl = (slice(None),) + (slice(None, None, step),) * len(spatial)
    sample = image[sl]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample, dtype=np.float32).reshape(image.shape[0], -1)


#: Normalisation modes and the default percentiles.
MODES = ("percentile", "zscore", "none")
DEFAULT_PERCENTILES = (1.0, 99.8)


def normalization_settings(
    normalization: Mapping[str, Any] | None = None,
) -> tuple[str, tuple[float, float]]:
    """``(mode, (low, high))`` from a checkpoint's ``normalization`` dict.

    Reads ``mode`` (else ``method``) and ``percentiles: [low, high]`` (else ``low``/``high``);
    missing keys take the defaults (``percentile``, 1 and 99.8).

    Raises
    ------
    ValueError
        For a mode other than ``percentile``, ``zscore`` or ``none``.
    """
    settings = dict(normalization or {})
    # Checkpoints written by napari_rat.train say "method" and "percentiles": [low, high].
    mode = settings.get("mode", settings.get("method", "percentile"))
    if mode not in MODES:
        raise ValueError(f"unknown normalization mode {mode!r}; use percentile, zscore or none")
    low, high = (
        settings.get("low", DEFAULT_PERCENTILES[0]),
        settings.get("high", DEFAULT_PERCENTILES[1]),
    )
    if "percentiles" in settings:  # wins over low/high, as it always has
        low, high = settings["percentiles"]
    return mode, (float(low), float(high))


def image_statistics(image, normalization: Mapping[str, Any] | None = None) -> IntensityStats:
    """Statistics of ``image`` (``[C, *spatial]``) for the given normalisation settings."""
    mode, (low, high) = normalization_settings(normalization)
    channels = image.shape[0]
    if mode == "none":
        return IntensityStats((0.0,) * channels, (1.0,) * channels)
    sample = _sample(image)
    # NaN pixels (no data) are left out; the predictor treats them as background.
    empty = [c for c in range(channels) if not np.isfinite(sample[c]).any()]
    if empty:
        raise ValueError(
            f"channel {empty[0]} of the image has no finite pixel (all NaN or infinite in a "
            "sample of it); check the image, or choose another channel"
        )
    sample = np.where(np.isfinite(sample), sample, np.nan)
    if mode == "zscore":
        offset = np.nanmean(sample, axis=1)
        scale = np.nanstd(sample, axis=1)
    else:
        lo = np.nanpercentile(sample, low, axis=1)
        hi = np.nanpercentile(sample, high, axis=1)
        offset, scale = lo, hi - lo
    scale = np.where(scale > 1e-12, scale, 1.0)
    return IntensityStats(tuple(float(v) for v in offset), tuple(float(v) for v in scale))
