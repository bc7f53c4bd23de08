"""Synthetic nuclei with a known physical spacing, for tests, training and benchmarks.

Nuclei are ellipsoids of a given physical radius placed without overlap; the image is their
mask blurred by a point-spread function (anisotropic when the spacing is), with Poisson-like
noise and a smooth background. Labels are the exact instance masks. Deterministic for a seed.

By default every nucleus keeps a one-pixel gap to the others. With ``touching``, that share of
the nuclei is instead pressed against an earlier one (they share a flat contact face, the
earlier nucleus keeping the overlap), and the contact shows in the image only as a faint dimmer
seam: the case of touching nuclei in real images, where instance segmentation merges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_rat.label_faces import differing_neighbours


def synthetic_nuclei(
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    radius: float = 4.0,
    density: float = 0.3,
    noise: float = 0.05,
    seed: int = 0,
    touching: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate an image of nuclei and its instance labels.

    Parameters
    ----------
    shape
        Pixel shape, 2D or 3D.
    spacing
        Physical size of a pixel along each axis (default 1.0); nuclei keep their physical
        ``radius`` whatever the spacing, so coarser spacing gives smaller nuclei in pixels.
    radius
        Mean nucleus radius in physical units.
    density
        Target fraction of the volume covered by nuclei.
    noise
        Standard deviation of the additive noise, relative to the nucleus intensity.
    seed
        Random seed.
    touching
        Share (0-1) of the nuclei placed in contact with an earlier one instead of apart.
        0 (the default) keeps every nucleus apart and the output of earlier versions.

    Returns
    -------
    image : float32 array in [0, ~1]
    labels : int32 array, 0 = background
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be {ndim} positive values, got {spacing.tolist()}")
    if not 0.0 <= touching <= 1.0:
        raise ValueError(f"touching is a share of the nuclei, 0 to 1; got {touching}")
    rng = np.random.default_rng(seed)
    touch_rng = np.random.default_rng((seed, 1))  # its own stream: touching=0 draws nothing
    centres: list[np.ndarray] = []
    sizes: list[float] = []
    labels = np.zeros(shape, dtype=np.int32)
    extent = np.asarray(shape) * spacing
    volume_one = (4 / 3 * np.pi * radius**3) if ndim == 3 else (np.pi * radius**2)
    target = int(np.ceil(density * np.prod(extent) / volume_one))
    label = 0
    for _ in range(target * 8):
        if label >= target:
            break
        centre = rng.uniform(0, extent)
        radii = radius * rng.uniform(0.7, 1.3, size=ndim)
        touch = bool(centres) and touching > 0 and touch_rng.random() < touching
        if touch:
            # Pressed against an earlier nucleus: centres a little closer than the radii add up.
            other = int(touch_rng.integers(len(centres)))
            direction = touch_rng.normal(size=ndim)
            direction /= np.linalg.norm(direction) or 1.0
            reach = (sizes[other] + float(np.mean(radii))) * touch_rng.uniform(0.75, 0.9)
            centre = centres[other] + direction * reach
        lo = np.maximum(((centre - radii) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((centre + radii) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(
            *[(np.arange(a, b) + 0.5) * s for a, b, s in zip(lo, hi, spacing, strict=True)],
            indexing="ij",
        )
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if not inside.any():
            continue
        if touch:
            # The earlier nucleus keeps the overlap; a nucleus it would mostly hide, or one
            # that reaches a third, is not placed.
            own = inside & (labels[window] == 0)
            grown = ndi.binary_dilation(own)
            neighbours = np.unique(labels[window][grown])
            if own.sum() < 0.7 * inside.sum() or np.count_nonzero(neighbours) != 1:
                continue
            inside = own
        else:
            # Keep a one-pixel gap so instances stay separable.
            grown = ndi.binary_dilation(inside)
            if np.any(labels[window][grown]):
                continue
        label += 1
        labels[window][inside] = label
        centres.append(centre)
        sizes.append(float(np.mean(radii)))
    sigma = 0.8 * radius / 4 / spacing
    mask = (labels > 0).astype(np.float32)
    if touching > 0:
        # Contacts show as a faint seam: their pixels are dimmer before the blur.
        mask[differing_neighbours(labels, instances_only=True)] = touch_rng.uniform(0.2, 0.6)
    image = ndi.gaussian_filter(mask, sigma=sigma)
    image *= rng.uniform(0.6, 1.0, size=label + 1)[labels].astype(np.float32) * 0.5 + 0.5
    background = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=8) * 0.5
    image = image + 0.1 + 0.05 * background + noise * rng.normal(size=shape).astype(np.float32)
    return np.clip(image, 0, None).astype(np.float32), labels
