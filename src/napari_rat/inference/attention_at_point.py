"""What the model groups with one point of an input: the core of the attention dock.

:func:`attention_at_point` takes a model input (a :class:`~napari_rat.inference.sources.
PredictionInput`: the pixels with their spacing, origin and units), normalises it as the model
was trained, expresses positions in the model's unit, and returns per block the point's
attention over the input pixels and the block's native grouping
(:mod:`napari_rat.model.attention_maps`). No Qt, no napari: the dock calls it in a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_rat.inference.normalization import image_statistics
from napari_rat.inference.sources import PredictionInput
from napari_rat.io.units import to_model_units


@dataclass(frozen=True)
class AttentionAtPoint:
    """Per block: the point's attention over the input pixels (``attention[b]``, shaped like
    the input's spatial axes, summing to the point token's share of each pixel) and each
    pixel's group token (``grouping[b]``, flat indices into block ``b``'s grid, ``-1`` where no
    window covers it)."""

    attention: list[np.ndarray]
    grouping: list[np.ndarray]


def attention_at_point(
    model: torch.nn.Module, source: PredictionInput, point: Sequence[float]
) -> AttentionAtPoint:
    """The attention of ``point`` over ``source`` and the native grouping, per block.

    Parameters
    ----------
    model
        A loaded model (:func:`~napari_rat.inference.model_loading.load_model_for_inference`);
        the input goes to the device its parameters are on.
    source
        The input ``[C, *spatial]`` with its spacing, origin (``translation``) and units.
    point
        The point in the same physical coordinates as ``source.translation`` (world
        coordinates of the input's axes, in ``source.units``).
    """
    from napari_rat.model.attention_maps import native_grouping, point_attention

    dims = model.spatial_dims
    info = getattr(model, "checkpoint_info", None)
    device = next(model.parameters()).device
    stats = image_statistics(source.image, info.normalization if info else None)
    x = torch.from_numpy(stats.apply(np.asarray(source.image, np.float32)))[None].to(device)
    # The position inside the input, and the spacing, in the model's unit.
    to_model = np.asarray(to_model_units(source.units, info.units if info else None, dims))
    inside = (np.asarray(point, float) - np.asarray(source.translation, float)) * to_model
    spacing = tuple(float(s) for s in np.asarray(source.spacing, float) * to_model)
    return AttentionAtPoint(
        attention=point_attention(model, x, [spacing], inside),
        grouping=native_grouping(model, x, [spacing]),
    )
