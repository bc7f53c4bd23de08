"""Instance labels from the segmentation head's outputs, and the boundary targets it learns.

The head predicts per pixel one logit per semantic class (background first) and one boundary
logit. Instances are derived in three steps, shared by training (validation metrics) and
inference:

1. *cores* = foreground minus boundary, where foreground is ``P(class != background) > 0.5``
   and boundary is ``sigmoid(boundary logit) > 0.5``;
2. the cores' connected components (face connectivity, so a one-pixel boundary line separates);
3. each component grows back into the foreground it lies in (every foreground pixel takes the
   label of the nearest core of its own foreground component, nearest in physical units);
   a foreground component without any core becomes one instance of its own;
4. instances smaller than ``min_instance_size`` (physical area in 2D, volume in 3D) are dropped
   to background. Training picks this size on the validation split (it removes the slivers a
   region's edge cuts off and specks of noise) and stores it in the checkpoint's head config.

The boundary target (:func:`boundary_from_instances`) is the inner contour of every instance:
its pixels that touch a pixel of another label (background included).

Pure NumPy/SciPy and torch-optional: no Qt, napari, ray or deepspeed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def boundary_from_instances(labels: np.ndarray) -> np.ndarray:
    """Inner contours of the instances: pixels with a differently labelled face neighbour.

    Parameters
    ----------
    labels
        Integer instance labels, 0 = background, any number of dimensions. Negative values
        (ignored pixels) count as "another label" for their neighbours but are never boundary.

    Returns
    -------
    Boolean array of ``labels.shape``.
    """
    labels = np.asarray(labels)
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis] = slice(1, None)
        b[axis] = slice(None, -1)
        differ = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= differ
        boundary[tuple(b)] |= differ
    return boundary & (labels > 0)


def _softmax_foreground(class_logits: np.ndarray) -> np.ndarray:
    shifted = class_logits - class_logits.max(axis=0, keepdims=True)
    e = np.exp(shifted)
    return 1.0 - e[0] / e.sum(axis=0)


def instances_from_probabilities(
    foreground: np.ndarray,
    boundary: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    spacing: Sequence[float] | None = None,
    min_instance_size: float = 0.0,
) -> np.ndarray:
    """Instance labels from a foreground probability map and a boundary probability map.

    Parameters
    ----------
    foreground
        ``P(foreground)`` per pixel (any number of dimensions), or a boolean mask.
    boundary
        ``P(boundary)`` per pixel, or ``None`` for plain connected components of the foreground.
    threshold, boundary_threshold
        Probabilities above which a pixel is foreground / boundary.
    min_size
        Cores smaller than this many pixels are dropped (their pixels join a neighbour).
    spacing
        Physical pixel size, so that growing back uses physical distances (anisotropic data).
    min_instance_size
        Final instances smaller than this physical area (2D) or volume (3D), in units of
        ``spacing`` squared or cubed, become background.

    Returns
    -------
    int32 labels, 0 = background, instances numbered from 1.
    """
    fg = np.asarray(foreground)
    fg = fg if fg.dtype == bool else fg > threshold
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    face = ndi.generate_binary_structure(fg.ndim, 1)
    if boundary is None:
        out, _ = ndi.label(fg, structure=face)
        out = out.astype(np.int32)
    else:
        bd = np.asarray(boundary)
        bd = bd if bd.dtype == bool else bd > boundary_threshold
        out = _split_and_grow(fg, bd, face, min_size, spacing)
    if min_instance_size > 0:
        out = relabel_sequential(drop_small_instances(out, min_instance_size, spacing))
    return out


def _split_and_grow(fg, bd, face, min_size: int, spacing) -> np.ndarray:
    """Steps 1-3: cores (foreground minus boundary), their components, grown back."""
    cores, n = ndi.label(fg & ~bd, structure=face)
    if min_size > 0 and n:
        sizes = np.bincount(cores.ravel())
        small = sizes < min_size
        small[0] = False
        cores[small[cores]] = 0
        cores, n = ndi.label(cores > 0, structure=face)
    # Foreground components decide which cores a pixel may join.
    components, _ = ndi.label(fg, structure=ndi.generate_binary_structure(fg.ndim, fg.ndim))
    out = np.zeros(fg.shape, dtype=np.int32)
    if n:
        _, indices = ndi.distance_transform_edt(cores == 0, sampling=spacing, return_indices=True)
        nearest = cores[tuple(indices)]
        nearest_component = components[tuple(indices)]
        joins = fg & (nearest_component == components)
        out[joins] = nearest[joins]
    # Foreground components that hold no core become one instance each.
    orphan = fg & (out == 0)
    if orphan.any():
        extra, _ = ndi.label(orphan, structure=face)
        out[orphan] = extra[orphan] + n
    return relabel_sequential(out)


def min_instance_pixels(
    min_instance_size: float, spacing: Sequence[float] | None, ndim: int
) -> float:
    """The pixel count below which an instance is dropped: the physical size over a pixel's."""
    if min_instance_size <= 0:
        return 0.0
    pixel = float(np.prod(spacing)) if spacing is not None else 1.0
    if spacing is not None and len(spacing) != ndim:
        raise ValueError(f"spacing {list(spacing)} has {len(spacing)} axes; the labels have {ndim}")
    return float(min_instance_size) / pixel


def drop_small_instances(
    labels: np.ndarray, min_instance_size: float, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """``labels`` with the instances smaller than ``min_instance_size`` (physical) set to 0."""
    labels = np.asarray(labels)
    limit = min_instance_pixels(min_instance_size, spacing, labels.ndim)
    if limit <= 0 or not labels.any():
        return labels
    sizes = np.bincount(labels.ravel().astype(np.int64, copy=False))
    small = sizes < limit
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def instances_from_logits(
    logits: np.ndarray,
    num_classes: int,
    *,
    boundary: bool = True,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    spacing: Sequence[float] | None = None,
    min_instance_size: float = 0.0,
) -> np.ndarray:
    """Instance labels from the head's logits ``[num_classes (+1 boundary), *spatial]``.

    See :func:`instances_from_probabilities` for the method and the other parameters.
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[0] != num_classes + int(boundary):
        raise ValueError(
            f"logits have {logits.shape[0]} channels; expected {num_classes} classes"
            + (" + 1 boundary" if boundary else "")
        )
    fg = _softmax_foreground(logits[:num_classes])
    bd = 1.0 / (1.0 + np.exp(-logits[num_classes])) if boundary else None
    return instances_from_probabilities(
        fg,
        bd,
        threshold=threshold,
        boundary_threshold=boundary_threshold,
        min_size=min_size,
        spacing=spacing,
        min_instance_size=min_instance_size,
    )


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the labels 1..n in order of first appearance value, keeping 0 as background."""
    labels = np.asarray(labels)
    values = np.unique(labels)
    values = values[values > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[values] = np.arange(1, len(values) + 1, dtype=np.int32)
    out = np.zeros(labels.shape, dtype=np.int32)
    positive = labels > 0
    out[positive] = lut[labels[positive]]
    return out
