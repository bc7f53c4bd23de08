"""What the RAT interactive dock runs off the GUI thread, and where its arrays go (no Qt).

A :class:`Session` is one image's features and the
:class:`~napari_rat.inference.interactive.InteractiveSegmenter` on them, with where the
features lie in the image layer (``where``: the whole layer, or the plane a 2D model was run
on in a volume). The jobs here are what the dock's workers run: compute the features
(:func:`features_job`), a scribble update (:func:`scribble_update`), a click
(:func:`click_update`), the quick fine-tune and its re-prediction (:func:`improve_job`). Each
returns whole layer-shaped arrays, so the GUI thread only swaps a layer's data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_rat._widgets.layer_input import LayerInput, layer_input
from napari_rat._widgets.model_imports import keep_triton_out

#: Most voxels a scribble update predicts in a 3D view: a box of about 64 x 128 x 128 around
#: the camera's centre (the whole volume when smaller).
MAX_3D_BOX_VOXELS = 64 * 128 * 128


@dataclass(frozen=True, eq=False)
class Session:
    """One image's features, ready for scribbles and clicks.

    ``where``: the session's box in the image layer (level 0; a length-1 slice on each axis a
    2D model does not take); ``layer_shape`` the layer's shape; ``placement`` its ``scale``,
    ``translate``, ``units`` and ``axis_labels``, which every dock layer gets.
    """

    model: Any
    checkpoint: Any
    device: str
    source: LayerInput
    maps: Any
    segmenter: Any
    where: tuple[slice, ...]
    layer_shape: tuple[int, ...]
    placement: dict
    image_name: str
    seconds: float

    @property
    def shape(self) -> tuple[int, ...]:
        """The features' spatial shape."""
        return tuple(self.segmenter.shape)

    @property
    def session_axes(self) -> list[int]:
        """The layer axes the features span (the others are one plane)."""
        return [a for a in range(len(self.layer_shape)) if a not in self.source.sliced_axes]

    def cut(self, full: np.ndarray) -> np.ndarray:
        """The session's part of a layer-shaped array, shaped like the features."""
        return np.asarray(full[self.where]).reshape(self.shape)

    def layer_box(self, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """A box of the features as a box of the layer."""
        out = list(self.where)
        for axis, b in zip(self.session_axes, box, strict=True):
            offset = self.where[axis].start or 0
            out[axis] = slice(offset + b.start, offset + b.stop)
        return tuple(out)

    def clicks(self, points: np.ndarray, signs) -> tuple[list, list, int]:
        """Layer-pixel ``points`` as the features' pixel coordinates: the positive ones, the
        negative ones, and how many lie on other planes than the session's (left out)."""
        positive, negative, elsewhere = [], [], 0
        for point, sign in zip(points, signs, strict=True):
            if any(round(point[a]) != self.where[a].start for a in self.source.sliced_axes):
                elsewhere += 1
                continue
            coords = [point[a] - (self.where[a].start or 0) for a in self.session_axes]
            (positive if sign == "positive" else negative).append(coords)
        return positive, negative, elsewhere

    def to_layer(self, values: np.ndarray, box: tuple[slice, ...] | None = None, dtype=None):
        """A new layer-shaped array: ``values`` (the features' ``box``, default all) in place,
        0 elsewhere."""
        box = box or tuple(slice(0, n) for n in self.shape)
        out = np.zeros(self.layer_shape, dtype or values.dtype)
        target = self.layer_box(box)
        out[target] = np.asarray(values).reshape(out[target].shape)
        return out


def features_job(checkpoint, device: str, layer, step, model=None, cancel=None, view=None):
    """Worker: load the model (unless given), cut the input, compute (or read back) the
    features and read them into an :class:`InteractiveSegmenter`; returns a :class:`Session`,
    or ``None`` when ``cancel`` (a :class:`threading.Event`) was set (nothing cached then).

    ``layer`` is a :class:`~napari_rat._widgets.layer_input.LayerSnapshot`; ``step`` the
    viewer's position in its level-0 pixels (the plane a 2D model takes in a volume);
    ``view``: the ``(2, ndim)`` box on screen to compute the features of (``None``: all).
    """
    keep_triton_out()
    from napari_rat.inference import PredictionCancelled, PredictOptions, resolve_device
    from napari_rat.inference.features import compute_features
    from napari_rat.inference.interactive import InteractiveSegmenter
    from napari_rat.inference.model_loading import load_model_for_inference

    started = time.perf_counter()
    if model is None:
        model = load_model_for_inference(checkpoint, device=resolve_device(device))
    dims = model.spatial_dims
    region = "view" if view is not None else "slice" if layer.ndim > dims else "whole"
    source = layer_input(layer, dims, region, step, view_box=view)
    try:
        maps = yield from compute_features(
            model, source, options=PredictOptions(device=device), cancel=cancel
        )
    except PredictionCancelled:
        return None
    segmenter = InteractiveSegmenter(maps)
    shape = tuple(int(n) for n in layer.level_shapes[0])
    sizes = iter(np.shape(source.image)[1:])
    where = []
    for a in range(len(shape)):  # where the input was cut: from its origin, in pixels
        start = int(round((source.out_translate[a] - layer.translate[a]) / layer.scale[a]))
        where.append(slice(start, start + (1 if a in source.sliced_axes else next(sizes))))
    where = tuple(where)
    placement = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        **({"units": layer.units} if layer.units else {}),
        **({"axis_labels": layer.axis_labels} if layer.axis_labels else {}),
    }
    return Session(
        model=model,
        checkpoint=checkpoint,
        device=device,
        source=source,
        maps=maps,
        segmenter=segmenter,
        where=where,
        layer_shape=shape,
        placement=placement,
        image_name=layer.name,
        seconds=time.perf_counter() - started,
    )


def label_dtype(top: int):
    """``uint16`` when ids up to ``top`` fit (napari draws it without hashing), else int32."""
    return np.uint16 if top < np.iinfo(np.uint16).max else np.int32


def scribble_update(session: Session, job, mode: str) -> np.ndarray:
    """Worker: run a :class:`~napari_rat.inference.interactive.ScribbleJob` and return the
    prediction layer's data: the predicted box's classes (``semantic``: the scribbles' values,
    background 0) or instances, 0 elsewhere."""
    result = job.run()
    if mode == "instances":
        values = result.labels
    else:
        values = np.where(result.semantic == 1, 0, result.semantic)
    return session.to_layer(values, result.region, label_dtype(int(values.max(initial=0))))


def click_update(session: Session, positive, negative) -> tuple[np.ndarray, np.ndarray, str]:
    """Worker: the clicked object (:meth:`InteractiveSegmenter.click_object`); returns its
    mask (the features' shape), the current-object layer's data and where it came from."""
    result = session.segmenter.click_object(positive, negative)
    return result.mask, session.to_layer(result.mask.astype(np.uint8)), result.source


def model_labels_job(session: Session) -> np.ndarray:
    """Worker: the model's instance labels of the session, read from the feature cache."""
    return np.asarray(session.maps.labels)


def improve_job(session: Session, labels, scribbles, steps: int, cancel):
    """Worker: quick-tune the session's model on the committed labels and the scribbles,
    then compute the features again with the tuned model; returns the new :class:`Session`
    (``None`` when cancelled). Yields the training events, then the engine's progress."""
    keep_triton_out()
    from napari_rat.inference import PredictionCancelled, PredictOptions, resolve_device
    from napari_rat.inference.features import compute_features
    from napari_rat.inference.interactive import InteractiveSegmenter
    from napari_rat.train.quick_tune import quick_tune_events

    started = time.perf_counter()
    tuned = yield from quick_tune_events(
        session.model,
        np.asarray(session.source.image),
        session.source.spacing,
        labels=labels,
        scribbles=scribbles,
        units=session.source.units,
        steps=steps,
        device=resolve_device(session.device).type,
        cancel=cancel,
        name=session.image_name,
    )
    if tuned is None:
        return None
    try:
        maps = yield from compute_features(
            tuned, session.source, options=PredictOptions(device=session.device), cancel=cancel
        )
    except PredictionCancelled:
        return None
    return replace(
        session,
        model=tuned,
        maps=maps,
        segmenter=InteractiveSegmenter(maps),
        seconds=time.perf_counter() - started,
    )


def prediction_box(
    session: Session, view: np.ndarray, displayed: list[int], step, ndisplay: int, centre
) -> tuple[slice, ...]:
    """The box of the features a scribble update predicts.

    - 2D view: what the canvas shows (``view``, the ``(2, ndim)`` box of
      :func:`~napari_rat._widgets.layer_input.view_box` in the layer's pixels) on the displayed
      axes, and the current plane (``step``) on a volume's other axis (2D-in-3D: the slice);
    - 3D view: the whole volume when it has at most :data:`MAX_3D_BOX_VOXELS`, else a box of
      about that size (each axis shrunk by the same factor) around the camera's ``centre``
      (layer pixels).
    """
    shape = session.shape
    axes = session.session_axes
    if ndisplay == 3:
        factor = min(1.0, (MAX_3D_BOX_VOXELS / math.prod(shape)) ** (1 / len(shape)))
        box = []
        for axis, n in zip(axes, shape, strict=True):
            size = max(1, min(n, int(n * factor)))
            c = int(round(float(centre[axis]))) - (session.where[axis].start or 0)
            start = int(np.clip(c - size // 2, 0, n - size))
            box.append(slice(start, start + size))
        return tuple(box)
    box = []
    for axis, n in zip(axes, shape, strict=True):
        offset = session.where[axis].start or 0
        if axis in displayed:
            lo = int(np.clip(np.floor(view[0, axis]) - offset, 0, n - 1))
            hi = int(np.clip(np.ceil(view[1, axis] + 1) - offset, lo + 1, n))
            box.append(slice(lo, hi))
        else:
            i = int(np.clip(round(float(step[axis])) - offset, 0, n - 1))
            box.append(slice(i, i + 1))
    return tuple(box)
