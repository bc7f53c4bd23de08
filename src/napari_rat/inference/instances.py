"""Instance labels from the segmentation head's outputs, and the boundary targets it learns.

The head predicts per pixel one logit per semantic class (background first) and one boundary
logit. Instances come from one algorithm, shared by inference (the engine runs it chunk by
chunk over zarr) and training (validation and evaluation run it here, on a NumPy array), so
the validation scores measure what the plugin delivers
(:func:`napari_rat.inference.chunked_labels.instances_chunked`):

1. *cores* = foreground minus boundary, where foreground is ``P(class != background) > 0.5``
   and boundary is ``sigmoid(boundary logit) > 0.5``; their connected components (face
   connectivity, so a one-pixel boundary line separates) are the seeds, except those smaller
   than ``min_instance_size`` (below): specks of the boundary map, which would otherwise cut
   their object into fragments;
2. the seeds grow back into the foreground: each foreground pixel takes the nearest seed within
   :func:`grow_radius` pixels (nearest in physical units): 2 more than the boundary band the
   head learned (``model.head.boundary_width``), :data:`BOUNDARY_RADIUS` for the 1-pixel band;
   a step across the planes of a volume counts at most that much, so seeds always reach the
   next plane (:func:`~napari_rat.inference.chunked_labels.grow_steps`);
3. foreground that no seed reached (an object predicted all boundary, say) becomes instances
   of its own: no foreground pixel is lost;
4. instances smaller than ``min_instance_size`` (physical area in 2D, volume in 3D) join the
   kept instance they share the most faces with (a rim or cap of a nucleus that the boundary
   map cut off), and are dropped to background where they touch none. Training picks this
   size on the validation split (it removes the slivers a region's edge cuts off and specks
   of noise) and stores it in the checkpoint's head config.

The boundary target (:func:`boundary_from_instances`) is the inner contour of every instance:
its pixels that touch a pixel of another label (background included), widened to a band of
``model.head.boundary_width`` pixels inside the instance when that is more than 1. Its part
where two instances touch (:func:`contact_pixels`) is where merges come from; training can
weight it.

Pure NumPy/SciPy and torch-optional: no Qt, napari, ray or deepspeed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_rat.inference.chunked_labels import instances_chunked
from napari_rat.label_faces import MAX_BOUNDARY_WIDTH, differing_neighbours


def grow_radius(boundary_width: int = 1) -> int:
    """How far (in pixels of the finest axis) seeds grow back into the foreground: 2 pixels
    more than the boundary band the head learned, so that the band's far edge and the corners
    of an object are reached."""
    return int(boundary_width) + 2


#: The grow radius for the 1-pixel band (the inner contours of two touching instances).
BOUNDARY_RADIUS = grow_radius(1)


def boundary_from_instances(
    labels: np.ndarray, width: int = 1, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Inner contours of the instances: pixels with a differently labelled face neighbour,
    and with ``width`` > 1 the instance pixels within ``width - 1`` face steps of one, but never
    more than half an instance's depth: a small object (a nucleus seen at a coarse spacing)
    keeps a core, so the band means the same at every spacing.

    Parameters
    ----------
    labels
        Integer instance labels, 0 = background, any number of dimensions. Negative values
        (ignored pixels) count as "another label" for their neighbours but are never boundary.
    width
        Width of the band in pixels of the finest axis (``model.head.boundary_width``; at
        most :data:`MAX_BOUNDARY_WIDTH`; instances grow back over it, see :func:`grow_radius`).
    spacing
        Physical pixel size. A face step along an axis costs its spacing over the finest one,
        so on an anisotropic volume the band (and the depth that caps it) is measured in
        physical units: a 2-pixel band stays one plane thick in z when z planes lie 2.5
        pixels apart, instead of taking two planes of every nucleus. ``None`` or equal
        spacings: plain face steps.

    Returns
    -------
    Boolean array of ``labels.shape``.
    """
    return boundary_bands(labels, width, spacing)[0]


def contact_pixels(
    labels: np.ndarray, width: int = 1, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """The part of :func:`boundary_from_instances` (of the same ``width`` and ``spacing``)
    where two instances touch: instance pixels near a face neighbour in another instance
    (background and ignored pixels do not count)."""
    return boundary_bands(labels, width, spacing)[1]


def boundary_bands(
    labels: np.ndarray, width: int = 1, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(boundary, contact)``: :func:`boundary_from_instances` and :func:`contact_pixels` of
    the same ``width`` and ``spacing`` in one pass (the training targets need both)."""
    if not 1 <= width <= MAX_BOUNDARY_WIDTH:
        raise ValueError(f"boundary width {width} must be 1 to {MAX_BOUNDARY_WIDTH} pixels")
    labels = np.asarray(labels)
    contour = differing_neighbours(labels)
    contact = differing_neighbours(labels, instances_only=True)
    if width == 1:
        return contour, contact
    costs = _step_costs(spacing, labels.ndim)
    # Each band grows step by step into its own instances (an instance pixel next to another
    # instance's band is in the band already): up to ``width - 1`` steps, and at most half of
    # the instance's depth (its deepest pixel's steps from its contour, plus one).
    inside = labels > 0
    limit = 2.0 * width + 1.0  # depths beyond this give the full width anyway
    depth = _step_distance(~(inside & ~contour), None, costs, limit) + 1.0
    ids = np.where(inside, labels, 0)
    deepest = np.asarray(ndi.maximum(depth, ids, index=np.arange(int(ids.max()) + 1)))
    cap = np.clip(np.floor(deepest / 2), 1, width)[ids]
    return tuple(
        inside & (_step_distance(b, inside, costs, width - 1.0) <= cap - 1.0)
        for b in (contour, contact)
    )


def _step_costs(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """What a face step along each axis costs, in pixels of the finest axis."""
    if spacing is None:
        return (1.0,) * ndim
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {ndim} positive values, got {spacing}")
    return tuple(s / min(spacing) for s in spacing)


def _step_distance(
    seeds: np.ndarray, within: np.ndarray | None, costs: Sequence[float], limit: float
) -> np.ndarray:
    """The cheapest path of face steps (each costing its axis' ``costs``) from ``seeds`` to
    every pixel, through ``within`` pixels only (``None``: anywhere); ``inf`` beyond
    ``limit``. Relaxation: each round lets every path take one more step, and a path within
    ``limit`` has at most ``limit`` steps (every step costs 1 or more)."""
    dist = np.where(seeds, 0.0, np.inf)
    for _ in range(int(limit)):
        before = dist
        dist = dist.copy()
        for axis, cost in enumerate(costs):
            if cost > limit or dist.shape[axis] < 2:
                continue
            lo = [slice(None)] * dist.ndim
            hi = [slice(None)] * dist.ndim
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            lo, hi = tuple(lo), tuple(hi)
            np.minimum(dist[hi], before[lo] + cost, out=dist[hi])
            np.minimum(dist[lo], before[hi] + cost, out=dist[lo])
        if within is not None:
            dist[~within & ~seeds] = np.inf
        if np.array_equal(dist, before):
            break
    dist[dist > limit] = np.inf
    return dist


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
    spacing: Sequence[float] | None = None,
    min_instance_size: float = 0.0,
    radius: int = BOUNDARY_RADIUS,
) -> np.ndarray:
    """Instance labels from a foreground probability map and a boundary probability map.

    The engine's algorithm (see the module docstring), on an in-memory array.

    Parameters
    ----------
    foreground
        ``P(foreground)`` per pixel (any number of dimensions), or a boolean mask.
    boundary
        ``P(boundary)`` per pixel, or ``None`` for plain connected components of the foreground.
    threshold, boundary_threshold
        Probabilities above which a pixel is foreground / boundary.
    spacing
        Physical pixel size, so that growing back uses physical distances (anisotropic data).
    min_instance_size
        The smallest instance kept: a physical area (2D) or volume (3D), in units of
        ``spacing`` squared or cubed. Cores smaller than this seed nothing, and smaller
        instances join the kept instance they touch most, or become background (steps 1 and 4
        of the module docstring). 0 keeps every core and instance.
    radius
        How far seeds grow back, in pixels of the finest axis (:func:`grow_radius` of the
        head's boundary width).

    Returns
    -------
    int32 labels, 0 = background, instances numbered from 1.
    """
    fg = np.asarray(foreground)
    fg = fg if fg.dtype == bool else fg > threshold
    cores = fg
    if boundary is not None:
        bd = np.asarray(boundary)
        cores = fg & ~(bd if bd.dtype == bool else bd > boundary_threshold)
    out = np.zeros(fg.shape, dtype=np.int32)
    if not fg.any():
        return out
    steps = instances_chunked(
        lambda sl: fg[sl],
        lambda sl: cores[sl],
        np.zeros(fg.shape, dtype=np.int32),
        out,
        fg.shape,
        fg.shape,
        radius=radius,
        spacing=spacing,
        min_pixels=min_instance_pixels(min_instance_size, spacing, fg.ndim),
    )
    for _ in steps:
        pass
    return out


def min_instance_pixels(
    min_instance_size: float, spacing: Sequence[float] | None, ndim: int
) -> float:
    """The pixel count of ``min_instance_size`` (physical) at ``spacing``: smaller cores seed no
    instance, smaller instances join a neighbour or are dropped."""
    if min_instance_size <= 0:
        return 0.0
    pixel = float(np.prod(spacing)) if spacing is not None else 1.0
    if spacing is not None and len(spacing) != ndim:
        raise ValueError(f"spacing {list(spacing)} has {len(spacing)} axes; the labels have {ndim}")
    return float(min_instance_size) / pixel


def instances_from_logits(
    logits: np.ndarray,
    num_classes: int,
    *,
    boundary: bool = True,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
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
        spacing=spacing,
        min_instance_size=min_instance_size,
    )
