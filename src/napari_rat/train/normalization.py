"""Intensity normalisation of training images: chosen by the config, stored in the checkpoint.

The statistics and their application are :mod:`napari_rat.inference.normalization`'s, so a
training image is normalised exactly as inference will normalise a new image from the
checkpoint's settings. The checkpoint stores the method and its parameters (``to_dict``), not
one dataset's values; the statistics measured on the training images are stored beside them for
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_rat.inference.normalization import (
    DEFAULT_PERCENTILES,
    IntensityStats,
    image_statistics,
    normalization_settings,
)


@dataclass
class Normalization:
    """``percentile``: map the low/high percentiles to 0/1; ``zscore``: zero mean, unit std;
    ``none``: unchanged. Per channel, measured on each image."""

    method: str = "percentile"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    measured: list[dict[str, Any]] = field(default_factory=list)

    def statistics(self, image: np.ndarray) -> IntensityStats:
        """Per-channel offset and scale that normalise ``image`` (``[C, *spatial]``)."""
        return image_statistics(image, self.to_dict())

    def apply(self, image: np.ndarray, stats: IntensityStats | None = None) -> np.ndarray:
        """Normalised float32 copy of ``image`` (statistics measured on it unless given)."""
        stats = self.statistics(image) if stats is None else stats
        return stats.apply(np.asarray(image))

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
        """Inverse of :meth:`to_dict` (reads the keys inference reads); an empty dict means the
        default percentile method."""
        method, percentiles = normalization_settings(data)
        return cls(method=method, percentiles=percentiles)
