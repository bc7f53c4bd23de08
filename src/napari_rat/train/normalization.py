"""Intensity normalisation: chosen by the config, applied per image, stored in the checkpoint.

The checkpoint stores the method and its parameters (``to_dict``), not one dataset's values,
so that inference normalises a new image the way training normalised each training image.
The statistics measured on the training images are stored beside them for reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: At most this many pixels are read to estimate an image's statistics.
_STAT_SAMPLES = 1_000_000


@dataclass
class Normalization:
    """``percentile``: map the low/high percentiles to 0/1; ``zscore``: zero mean, unit std."""

    method: str = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    measured: list[dict[str, float]] = field(default_factory=list)

    def statistics(self, image: np.ndarray) -> dict[str, float]:
        """The values that map ``image`` (``[C, *spatial]`` or ``[*spatial]``) to the unit range."""
        flat = np.asarray(image, dtype=np.float32).ravel()
        if flat.size > _STAT_SAMPLES:
            flat = flat[:: flat.size // _STAT_SAMPLES + 1]
        if self.method == "percentile":
            lo, hi = np.percentile(flat, self.percentiles)
            return {"offset": float(lo), "scale": float(max(hi - lo, 1e-6))}
        if self.method == "zscore":
            return {"offset": float(flat.mean()), "scale": float(max(flat.std(), 1e-6))}
        return {"offset": 0.0, "scale": 1.0}

    def apply(self, image: np.ndarray, stats: dict[str, float] | None = None) -> np.ndarray:
        """Normalised float32 copy of ``image`` (statistics measured on it unless given)."""
        stats = self.statistics(image) if stats is None else stats
        return ((np.asarray(image, dtype=np.float32) - stats["offset"]) / stats["scale"]).astype(
            np.float32
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description for the checkpoint."""
        return {
            "method": self.method,
            "percentiles": list(self.percentiles),
            "per_image": True,
            "measured_on_training_images": self.measured,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Normalization:
        """Inverse of :meth:`to_dict`; an empty dict means the default percentile method."""
        data = data or {}
        return cls(
            method=data.get("method", "percentile"),
            percentiles=tuple(data.get("percentiles", (1.0, 99.8))),
        )
