"""Crops sampled in physical units, spacing augmentation, multi-scale levels and rotations.

A training crop is a physical box of ``crop_size x spacing x f`` where ``f`` is the spacing
augmentation factor (1 without it): the box is resampled to ``crop_size`` pixels, so the model
sees the same tissue at spacing ``spacing x f``, and that spacing is what it is told. Each
multi-scale level ``s`` covers the same box with ``crop_size / s`` pixels at spacing
``spacing x f x s``; it is read from the stored pyramid level closest to (not coarser than) the
wanted spacing, so OME-Zarr pyramids are used as stored.

Flips act on every axis; axis permutations (the 90-degree rotations) only among axes with the
same spacing, so anisotropic volumes are never rotated through their coarse axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_rat.train.data_sources import LabeledImage


@dataclass(frozen=True)
class Region:
    """A box of one image, in level-0 pixels: ``start`` inclusive, ``stop`` exclusive."""

    image: int
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Pixel extent."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))


def split_regions(
    shape: Sequence[int], val_fraction: float, holdout_fraction: float
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]] | None]:
    """Train, validation and hold-out boxes: consecutive bands along the last axis.

    The hold-out band is the far end (e.g. the right quarter), validation the band before it.
    """
    width = int(shape[-1])
    hold = int(round(width * holdout_fraction))
    val = int(round(width * val_fraction))
    a, b = width - hold - val, width - hold
    zeros = (0,) * (len(shape) - 1)
    full = tuple(int(s) for s in shape[:-1])

    def box(lo: int, hi: int):
        return ((*zeros, lo), (*full, hi)) if hi > lo else None

    return {"train": box(0, a), "val": box(a, b), "holdout": box(b, width)}


@dataclass
class CropSample:
    """One training sample: per level an image ``[C, *crop]`` and labels ``[*crop]``, and,
    when the image has scribbled classes (:attr:`LabeledImage.classes`), those ``[*crop]``.

    ``-1`` marks pixels outside the image (padding) or not annotated, ignored by losses and
    metrics.
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    spacings: list[tuple[float, ...]]
    classes: list[np.ndarray] | None = None


def _source_level(
    image: LabeledImage, spacing: Sequence[float]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """The coarsest stored level whose spacing is still at most ``spacing`` on every axis."""
    best = (image.image, image.spacing)
    for data, sp in image.levels:
        if all(s <= t * (1 + 1e-6) for s, t in zip(sp, spacing, strict=True)):
            best = (data, sp)
    return best


def resample_box(
    image: LabeledImage,
    origin: Sequence[float],
    box_spacing: Sequence[float],
    shape: Sequence[int],
    *,
    labels: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample a ``shape`` grid of pixel size ``box_spacing`` whose corner is at ``origin``.

    ``origin`` is physical (level-0 pixel edge at 0). Images are linearly interpolated after a
    Gaussian anti-aliasing blur when coarser than the source; labels are nearest-neighbour
    from level 0. Outside the image, intensities are reflected and labels are ``-1``.
    """
    data, src_spacing = _source_level(image, box_spacing)
    ndim = len(shape)
    factors = [b / s for b, s in zip(box_spacing, src_spacing, strict=True)]
    # Pixel-centre coordinates of the new grid in source pixels.
    axes = [
        (origin[d] + (np.arange(shape[d]) + 0.5) * box_spacing[d]) / src_spacing[d] - 0.5
        for d in range(ndim)
    ]
    lo = [int(np.floor(a.min())) - 2 for a in axes]
    hi = [int(np.ceil(a.max())) + 3 for a in axes]
    src_shape = data.shape[1:]
    window = tuple(slice(max(lo[d], 0), min(hi[d], src_shape[d])) for d in range(ndim))
    if any(w.stop <= w.start for w in window):
        raise ValueError("crop box lies outside the image")
    patch = np.asarray(data[(slice(None), *window)], dtype=np.float32)
    coords = np.meshgrid(*[a - w.start for a, w in zip(axes, window, strict=True)], indexing="ij")
    sigma = [0.5 * np.sqrt(max(f * f - 1.0, 0.0)) for f in factors]
    out = np.empty((patch.shape[0], *shape), dtype=np.float32)
    for c in range(patch.shape[0]):
        channel = ndi.gaussian_filter(patch[c], sigma) if max(sigma) > 0 else patch[c]
        out[c] = ndi.map_coordinates(channel, coords, order=1, mode="mirror")
    lab = (
        nearest_labels(image.labels, image.spacing, origin, box_spacing, shape) if labels else None
    )
    return out, lab


def nearest_labels(
    labels: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    box_spacing: Sequence[float],
    shape: Sequence[int],
) -> np.ndarray:
    """Nearest-neighbour sample of level-0 ``labels`` (pixel size ``spacing``) on the grid of
    :func:`resample_box`; ``-1`` outside the array."""
    ndim = len(shape)
    lab_axes = [
        (origin[d] + (np.arange(shape[d]) + 0.5) * box_spacing[d]) / spacing[d] for d in range(ndim)
    ]
    idx = [np.floor(a).astype(int) for a in lab_axes]
    inside = [(i >= 0) & (i < labels.shape[d]) for d, i in enumerate(idx)]
    clipped = [np.clip(i, 0, labels.shape[d] - 1) for d, i in enumerate(idx)]
    lab = np.asarray(labels[np.ix_(*clipped)], dtype=np.int32)
    valid = np.ones(tuple(shape), dtype=bool)
    for d, ins in enumerate(inside):
        shape_d = [1] * ndim
        shape_d[d] = -1
        valid &= ins.reshape(shape_d)
    return np.where(valid, lab, -1)


def _equal_spacing_groups(
    spacing: Sequence[float], shape: Sequence[int] | None = None
) -> list[list[int]]:
    """Axes that may swap: the same spacing (and, given ``shape``, the same length)."""
    groups: list[list[int]] = []
    for axis, s in enumerate(spacing):
        for group in groups:
            first = group[0]
            if np.isclose(spacing[first], s, rtol=1e-3) and (
                shape is None or shape[first] == shape[axis]
            ):
                group.append(axis)
                break
        else:
            groups.append([axis])
    return groups


def random_orientation(
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    flips: bool,
    rotations: bool,
    shape: Sequence[int] | None = None,
) -> tuple[list[int], list[bool]]:
    """A permutation of the spatial axes (only within equal-spacing groups, and with
    ``shape``, among axes of the same length, so a crop keeps its shape) and flips."""
    perm = list(range(len(spacing)))
    if rotations:
        for group in _equal_spacing_groups(spacing, shape):
            shuffled = list(rng.permutation(group))
            for src, dst in zip(group, shuffled, strict=True):
                perm[src] = int(dst)
    flip = [bool(rng.random() < 0.5) if flips else False for _ in spacing]
    return perm, flip


def apply_orientation(array: np.ndarray, perm: Sequence[int], flip: Sequence[bool]) -> np.ndarray:
    """Apply :func:`random_orientation`'s result to the trailing spatial axes of ``array``."""
    lead = array.ndim - len(perm)
    out = np.transpose(array, [*range(lead), *(lead + p for p in perm)])
    for axis, f in enumerate(flip):
        if f:
            out = np.flip(out, axis=lead + axis)
    return np.ascontiguousarray(out)


def spacing_factor(rng: np.random.Generator, spacing_range: tuple[float, float] | None) -> float:
    """A log-uniform spacing augmentation factor in ``spacing_range`` (1 without one)."""
    if spacing_range is None:
        return 1.0
    lo, hi = spacing_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def level_shapes(crop_size: Sequence[int], scales: Sequence[int]) -> list[tuple[int, ...]]:
    """Pixel shape of each multi-scale level: ``crop_size // scale`` (at least 1)."""
    return [tuple(max(1, int(c) // int(s)) for c in crop_size) for s in scales]


def sample_crop(
    image: LabeledImage,
    region: Region,
    crop_size: Sequence[int],
    scales: Sequence[int],
    rng: np.random.Generator,
    *,
    factor: float | Sequence[float] = 1.0,
    flips: bool = True,
    rotations: bool = True,
) -> CropSample:
    """A random training crop of ``region`` at ``factor`` times the image's spacing.

    ``factor`` is the spacing augmentation (see :func:`spacing_factor`), one number or one per
    axis (z augmentation): one per batch, since the model takes one spacing per level for the
    whole batch.
    """
    ndim = len(crop_size)
    factors = [float(factor)] * ndim if np.isscalar(factor) else [float(f) for f in factor]
    spacing = [s * f for s, f in zip(image.spacing, factors, strict=True)]
    extent = [c * s for c, s in zip(crop_size, spacing, strict=True)]
    origin = []
    for d in range(ndim):
        r0 = region.start[d] * image.spacing[d]
        r1 = region.stop[d] * image.spacing[d]
        room = (r1 - r0) - extent[d]
        origin.append(r0 + (rng.uniform(0, room) if room > 0 else room / 2))
    perm, flip = random_orientation(spacing, rng, flips=flips, rotations=rotations, shape=crop_size)
    images, labels, spacings = [], [], []
    classes: list[np.ndarray] | None = None if image.classes is None else []
    for shape in level_shapes(crop_size, scales):
        box_spacing = [e / n for e, n in zip(extent, shape, strict=True)]
        img, lab = resample_box(image, origin, box_spacing, shape)
        # Outside the region (not only the image) counts as padding too.
        lab = _mask_outside(lab, origin, box_spacing, region, image.spacing)
        images.append(apply_orientation(img, perm, flip))
        labels.append(apply_orientation(lab, perm, flip))
        spacings.append(tuple(box_spacing[p] for p in perm))
        if classes is not None:
            cls = nearest_labels(image.classes, image.spacing, origin, box_spacing, shape)
            cls = _mask_outside(cls, origin, box_spacing, region, image.spacing)
            classes.append(apply_orientation(cls, perm, flip))
    return CropSample(images, labels, spacings, classes)


def _mask_outside(
    labels: np.ndarray,
    origin: Sequence[float],
    box_spacing: Sequence[float],
    region: Region,
    image_spacing: Sequence[float],
) -> np.ndarray:
    ndim = labels.ndim
    valid = np.ones(labels.shape, dtype=bool)
    for d in range(ndim):
        centres = (origin[d] + (np.arange(labels.shape[d]) + 0.5) * box_spacing[d]) / image_spacing[
            d
        ]
        inside = (centres >= region.start[d]) & (centres < region.stop[d])
        shape_d = [1] * ndim
        shape_d[d] = -1
        valid &= inside.reshape(shape_d)
    return np.where(valid, labels, -1)
