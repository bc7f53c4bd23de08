"""Inference without Qt: tiled, lazy, cancellable prediction and instance labels.

- :func:`predict` (a generator yielding :class:`Progress`, returning :class:`Prediction`) and
  :func:`run_prediction` to drive it; :class:`PredictOptions` for tile, halo, levels, device.
  It is the package's one predictor: training's validation and ``evaluate`` run it too.
- :mod:`~napari_rat.inference.devices` the one device rule and autocast helper.
- :mod:`~napari_rat.inference.tiling` the tile grid; :mod:`~napari_rat.inference.chunked_labels`
  instance labels chunk by chunk; :mod:`~napari_rat.inference.normalization` input scaling.
- :func:`compute_features` per-pixel features through the same engine, kept in the on-disk
  :class:`FeatureCache`; :class:`InteractiveSegmenter` scribbles and clicks on them, and
  :func:`commit_object` (:mod:`~napari_rat.inference.interactive`,
  :mod:`~napari_rat.inference.commit`).
"""

from napari_rat.inference.commit import commit_object
from napari_rat.inference.devices import resolve_device
from napari_rat.inference.feature_cache import FeatureCache
from napari_rat.inference.features import FeatureMaps, compute_features
from napari_rat.inference.interactive import InteractiveSegmenter
from napari_rat.inference.normalization import IntensityStats, image_statistics
from napari_rat.inference.tiled_predict import (
    Prediction,
    PredictionCancelled,
    PredictOptions,
    Progress,
    predict,
    run_prediction,
)
from napari_rat.inference.tiling import Tile, tile_grid

__all__ = [
    "FeatureCache",
    "FeatureMaps",
    "InteractiveSegmenter",
    "IntensityStats",
    "PredictOptions",
    "Prediction",
    "PredictionCancelled",
    "Progress",
    "Tile",
    "commit_object",
    "compute_features",
    "image_statistics",
    "predict",
    "resolve_device",
    "run_prediction",
    "tile_grid",
]
