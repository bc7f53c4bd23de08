"""A model run on every plane (or volume) of a stack with more axes than it takes.

A 2D model on each z plane of a volume (or each plane of a time series), a 3D model on each
volume of a time series: :func:`predict_planes` runs the one engine (:func:`predict`) on each,
one after the other, and stacks the results into one :class:`Prediction` placed like the
stack. Instance labels are numbered on across planes, so each stays one instance. The
``napari-rat predict --planes`` command and the inference dock's "every plane" region both run
it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from napari_rat.inference.result_store import (
    new_array,
    open_new_group,
    placement_attrs,
    published,
    staged_store,
)
from napari_rat.inference.tiled_predict import Prediction, PredictOptions, Progress, predict


def predict_planes(
    model,
    image,
    spacing: Sequence[float],
    translation: Sequence[float] | None = None,
    *,
    options: PredictOptions | None = None,
    store: str | Path | None = None,
    cancel: threading.Event | None = None,
    units: Sequence[str | None] | str | None = None,
) -> Generator[Progress, None, Prediction]:
    """Predict every plane of ``image`` with a model of fewer spatial dimensions.

    Parameters
    ----------
    model
        A segmentation model whose ``spatial_dims`` is smaller than the image's.
    image
        ``[C, *stack, *plane]``: the leading spatial axes are stepped through, the last
        ``model.spatial_dims`` are the model's (NumPy, dask or zarr; read plane by plane).
    spacing, translation
        Physical voxel size and origin of every spatial axis; the stack axes' place the
        planes, the others are the model's.
    options, cancel
        As for :func:`predict`, for every plane (each plane is normalised on its own, as a
        2D image is).
    store
        A directory for a zarr store holding the stacked results (built aside, moved into
        place when complete); ``None`` keeps them in memory.
    units
        The length unit of ``spacing`` (one, or one per spatial axis).

    Yields
    ------
    Progress
        The plane's progress, its stage saying which plane (``"plane 3/30, tiles"``).

    Returns
    -------
    Prediction
        Over the whole stack (``probabilities`` ``[outputs, *stack, *plane]``).
    """
    options = options or PredictOptions()
    dims = int(model.spatial_dims)
    spacing = tuple(float(s) for s in spacing)
    ndim = len(spacing)
    if image.ndim != ndim + 1:
        raise ValueError(
            f"image has {image.ndim - 1} spatial axes but {ndim} spacings; give one per axis"
        )
    lead = ndim - dims
    if lead < 1:
        raise ValueError(
            f"plane by plane needs an image with more spatial axes than the {dims}D model "
            f"takes; this one has {ndim}: predict it whole"
        )
    if options.features:
        raise ValueError("plane by plane does not keep per-pixel features; predict one plane")
    translation = (0.0,) * ndim if translation is None else tuple(float(t) for t in translation)
    plane_units = units if units is None or isinstance(units, str) else tuple(units)[lead:]
    stack = tuple(int(n) for n in image.shape[1 : 1 + lead])
    planes = list(itertools.product(*(range(n) for n in stack)))
    with staged_store(store) as built:
        root = None if built is None else open_new_group(built)
        probs = semantic = labels = None
        top = nan_pixels = 0
        result = None
        for k, index in enumerate(planes):
            where = (slice(None), *index)
            run = predict(
                model,
                image[where],
                spacing[lead:],
                translation[lead:],
                options=options,
                cancel=cancel,
                units=plane_units,
            )
            result = yield from _planewise(run, f"plane {k + 1}/{len(planes)}")
            if probs is None:
                plane = tuple(result.semantic.shape)
                chunks = (1,) * lead + tuple(min(256, n) for n in plane)
                outputs = result.probabilities.shape[0]
                probs = new_array(
                    root, "probabilities", (outputs, *stack, *plane), (1, *chunks), np.float32
                )
                semantic = new_array(root, "semantic", (*stack, *plane), chunks, np.uint8)
                if result.labels is not None:
                    labels = new_array(root, "labels", (*stack, *plane), chunks, np.int32)
            probs[where] = np.asarray(result.probabilities)
            semantic[index] = np.asarray(result.semantic)
            if labels is not None:
                own = np.asarray(result.labels, np.int32)
                labels[index] = np.where(own > 0, own + top, 0)
                top += int(own.max()) if own.size else 0
            nan_pixels += result.nan_pixels
        stacked = Prediction(
            probs,
            semantic,
            labels,
            result.class_names,
            result.channel_names,
            spacing,
            translation,
            num_instances=top,
            extra={"planes": len(planes), "plane_axes": lead},
            nan_pixels=nan_pixels,
            boundary_radius=result.boundary_radius,
        )
        if root is not None:
            root.attrs.update({"napari_rat": placement_attrs(stacked)})
    if store is None:
        return stacked
    return published(stacked, Path(store), with_labels=labels is not None)


def _planewise(run, name: str):
    """Drive one plane's :func:`predict`, its progress stage prefixed with ``name``."""
    while True:
        try:
            p = next(run)
        except StopIteration as stop:
            return stop.value
        yield Progress(f"{name}, {p.stage}", p.done, p.total)
