"""Pyramid planning and lazy downsampling (dask) for images and label images.

Planning respects anisotropy: an axis is halved only while that keeps the voxel closer to
isotropic, so a z spacing coarser than x/y is left alone until x/y catch up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import dask.array as da

# Stop adding levels once the largest spatial axis is at most this many voxels.
MIN_LEVEL_SIZE = 64


def plan_factors(
    shape: Sequence[int],
    scale: Sequence[float],
    spatial: Sequence[int],
    levels: int | None = None,
    min_size: int = MIN_LEVEL_SIZE,
) -> list[tuple[int, ...]]:
    """Cumulative downsampling factors per level (level 0 is all ones).

    Parameters
    ----------
    shape, scale
        Level-0 shape and voxel size, one per axis.
    spatial
        Indices of the spatial axes (the only ones downsampled).
    levels
        Number of levels; by default, until the largest spatial axis is at most ``min_size``.
    min_size
        Default stopping size.

    Returns
    -------
    list of tuple of int
        One factor tuple per level, each a multiple of the previous one by 1 or 2 per axis.
    """
    factors = [tuple(1 for _ in shape)]
    current = [float(s) for s in scale]
    sizes = [int(n) for n in shape]
    while True:
        if levels is not None and len(factors) >= levels:
            break
        if levels is None and max(sizes[a] for a in spatial) <= min_size:
            break
        can = [a for a in spatial if sizes[a] > 1]
        if not can:
            break
        finest = min(current[a] for a in can)
        # Halve an axis when 2*spacing is closer (in ratio) to the others' new 2*finest than
        # its spacing is: spacing < sqrt(2) * finest.
        step = [
            2 if a in can and current[a] < math.sqrt(2) * finest * (1 + 1e-9) else 1
            for a in range(len(shape))
        ]
        prev = factors[-1]
        factors.append(tuple(p * s for p, s in zip(prev, step, strict=True)))
        for a in range(len(shape)):
            if step[a] == 2:
                current[a] *= 2
                sizes[a] = math.ceil(sizes[a] / 2)
    return factors


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Shape of a level downsampled by ``factors`` (ceil division, the edge voxel is kept)."""
    return tuple(math.ceil(int(n) / int(f)) for n, f in zip(shape, factors, strict=True))


def level_transform(
    scale: Sequence[float],
    translation: Sequence[float],
    factors: Sequence[int],
    method: str,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translation of a level downsampled from level 0 by ``factors``.

    ``"mean"`` puts each coarse voxel at the centre of the block it averages; ``"nearest"``
    keeps the first voxel of each block, so the translation does not move.
    """
    new_scale = tuple(float(s) * f for s, f in zip(scale, factors, strict=True))
    if method == "nearest":
        return new_scale, tuple(float(t) for t in translation)
    new_trans = tuple(
        float(t) + (f - 1) / 2 * float(s)
        for t, s, f in zip(translation, scale, factors, strict=True)
    )
    return new_scale, new_trans


def _mean_block(block: np.ndarray, axis: tuple[int, ...] | None = None, **kwargs) -> np.ndarray:
    return block.mean(axis=axis, dtype=np.float64)


def downsample(
    x: da.Array,
    step: Sequence[int],
    chunks: Sequence[int],
    method: str = "mean",
) -> da.Array:
    """Downsample ``x`` by ``step`` (1 or more per axis), lazily, rechunked to ``chunks``.

    ``"mean"`` averages blocks (the edge is padded by repetition; integers are rounded back to
    their type); ``"nearest"`` keeps the first voxel of every block (for labels).
    """
    import dask.array as da

    step = tuple(int(s) for s in step)
    out_shape = level_shape(x.shape, step)
    out_chunks = tuple(min(int(c), n) for c, n in zip(chunks, out_shape, strict=True))
    if all(s == 1 for s in step):
        return x.rechunk(out_chunks)
    if method == "nearest":
        return x[tuple(slice(None, None, s) for s in step)].rechunk(out_chunks)
    pad = [(0, n * s - m) for n, s, m in zip(out_shape, step, x.shape, strict=True)]
    if any(p[1] for p in pad):
        x = da.pad(x, pad, mode="edge")
    x = x.rechunk(tuple(c * s for c, s in zip(out_chunks, step, strict=True)))
    y = da.coarsen(_mean_block, x, {a: s for a, s in enumerate(step) if s > 1})
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        y = da.clip(da.round(y), info.min, info.max)
    return y.astype(x.dtype).rechunk(out_chunks)


def resample_nearest(
    x: da.Array,
    src_scale: Sequence[float],
    src_translation: Sequence[float],
    shape: Sequence[int],
    scale: Sequence[float],
    translation: Sequence[float],
    chunks: Sequence[int],
) -> da.Array:
    """Nearest-neighbour resampling of ``x`` onto another axis-aligned grid (for labels).

    Each output voxel takes the value of the input voxel whose centre is nearest to its own
    centre in world coordinates, so labels follow whatever transforms the target level has.
    """
    import dask.array as da

    out = x
    for axis, n in enumerate(shape):
        centres = np.arange(int(n)) * float(scale[axis]) + float(translation[axis])
        index = np.floor((centres - float(src_translation[axis])) / float(src_scale[axis]) + 0.5)
        index = np.clip(index, 0, x.shape[axis] - 1).astype(np.intp)
        if index.size == x.shape[axis] and np.array_equal(index, np.arange(x.shape[axis])):
            continue
        stride = index[1] - index[0] if index.size > 1 else 1
        if (
            index.size > 1
            and stride > 0
            and np.array_equal(index, index[0] + stride * np.arange(index.size))
        ):
            # A regular stride is a plain slice: cheaper for dask than fancy indexing.
            sl = [slice(None)] * x.ndim
            sl[axis] = slice(int(index[0]), int(index[-1]) + 1, int(stride))
            out = out[tuple(sl)]
        else:
            out = da.take(out, index, axis=axis)
    out_chunks = tuple(min(int(c), int(n)) for c, n in zip(chunks, shape, strict=True))
    return out.rechunk(out_chunks)
