"""Instance labels over images larger than memory, one chunk at a time.

:func:`instances_chunked` is the one instance algorithm of the package (the engine runs it over
zarr chunks; :func:`napari_rat.inference.instances.instances_from_probabilities`, used by
training's validation and evaluation, runs it over a NumPy array as a single chunk), built from:

- :func:`label_chunked`: connected components chunk by chunk, merged where they touch across
  chunk faces (a union-find over the labels), renumbered consecutively;
- :func:`grow_labels_chunked`: seed labels grown into a foreground mask (each foreground pixel
  takes the nearest seed within ``radius``), each chunk read with a halo of that reach;
- :func:`merge_small_chunked`: labels smaller than a pixel count joined to the kept label they
  touch most, or removed where they touch none; the rest renumbered.

Memory is bounded by the chunk size (plus one label-sized lookup table), never by the image;
the result does not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_rat.inference.tiling import tile_grid

ReadMask = Callable[[tuple[slice, ...]], np.ndarray]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n + 1, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def label_chunked(
    read_mask: ReadMask,
    out,
    shape: Sequence[int],
    chunk: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
    min_size: float = 0.0,
) -> int:
    """Label the connected components (face connectivity) of a mask, chunk by chunk.

    Parameters
    ----------
    read_mask
        ``read_mask(slices) -> bool array`` for a region of the mask.
    out
        A writable array (zarr or NumPy) of ``shape``, integer dtype, receiving the labels.
    shape, chunk
        Image shape and the chunk size processed at once.
    min_size
        Components with fewer pixels are left out (0 in ``out``), at no extra pass.

    Returns
    -------
    int
        The number of components (kept); labels are ``1..n``, numbered in the order of their
        first pixel in C order, as :func:`scipy.ndimage.label` numbers them, whatever the
        chunks: the numbers, not only the partition, do not depend on the chunk size.
    """
    tiles = tile_grid(shape, chunk, [0] * len(shape))
    offset = 0
    steps = 2 * len(tiles)
    # Per provisional label (index; 0 = background): its pixel count and its first pixel's
    # flat index in the whole image (C order inside a box is C order of the image).
    pieces = [np.zeros(1, dtype=np.int64)]
    firsts = [np.zeros(1, dtype=np.int64)]
    for tile in tiles:
        lab, n = ndi.label(read_mask(tile.core))
        lab = lab.astype(np.int64)
        pieces.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        values, first = np.unique(lab.ravel(), return_index=True)
        local = np.unravel_index(first[values > 0], lab.shape)
        start = [sl.start for sl in tile.core]
        firsts.append(
            np.ravel_multi_index(tuple(c + o for c, o in zip(local, start, strict=True)), shape)
        )
        lab[lab > 0] += offset
        out[tile.core] = lab
        offset += n
        if progress:
            progress(tile.index + 1, steps)
    uf = _UnionFind(offset)
    # Merge across every face between neighbouring chunks.
    for axis in range(len(shape)):
        cuts = sorted({t.core[axis].stop for t in tiles if t.core[axis].stop < shape[axis]})
        for cut in cuts:
            a = [slice(None)] * len(shape)
            b = [slice(None)] * len(shape)
            a[axis] = slice(cut - 1, cut)
            b[axis] = slice(cut, cut + 1)
            # Read the face plane in strips so huge faces stay bounded too.
            for strip in tile_grid(
                [s for i, s in enumerate(shape) if i != axis],
                [c for i, c in enumerate(chunk) if i != axis],
                [0] * (len(shape) - 1),
            ):
                sa, sb = list(a), list(b)
                others = iter(strip.core)
                for i in range(len(shape)):
                    if i != axis:
                        s = next(others)
                        sa[i] = sb[i] = s
                la = np.asarray(out[tuple(sa)]).ravel()
                lb = np.asarray(out[tuple(sb)]).ravel()
                both = (la > 0) & (lb > 0)
                for x, y in set(zip(la[both].tolist(), lb[both].tolist(), strict=True)):
                    uf.union(x, y)
    roots = np.array([uf.find(i) for i in range(offset + 1)], dtype=np.int64)
    _, group = np.unique(roots, return_inverse=True)  # group 0: background (root 0 is smallest)
    n_groups = int(group.max(initial=0)) + 1
    first = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(first, group, np.concatenate(firsts))
    keep = np.ones(n_groups, dtype=bool)
    keep[0] = False
    if min_size > 0:
        keep &= np.bincount(group, weights=np.concatenate(pieces), minlength=n_groups) >= min_size
    kept = np.flatnonzero(keep)
    number = np.zeros(n_groups, dtype=np.int64)
    number[kept[np.argsort(first[kept], kind="stable")]] = np.arange(1, len(kept) + 1)
    lut = number[group]
    for tile in tiles:
        out[tile.core] = lut[np.asarray(out[tile.core])]
        if progress:
            progress(len(tiles) + tile.index + 1, steps)
    return int(lut.max(initial=0))


def grow_steps(
    radius: float, spacing: Sequence[float] | None, ndim: int
) -> tuple[list[float], float]:
    """``(steps, reach)``: the length of a step along each axis and how far seeds grow, for
    seeds that grow ``radius`` pixels of the finest axis (physical distances).

    A step along an axis whose pixels are longer than the whole reach counts as the reach, so
    seeds always cross one plane of an anisotropic volume: the boundary band covers the first
    plane of every object (its contour), and with planes 4 pixels apart and ``radius`` 3 the
    seeds would otherwise never reach it, leaving the top and bottom planes of every nucleus
    as instances of their own. Isotropic data, and axes finer than the reach, keep their
    physical distances.
    """
    spacing = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} axes; the image has {ndim}")
    reach = float(radius) * min(spacing)
    return [min(s, reach) if reach > 0 else s for s in spacing], reach


def grow_labels_chunked(
    seeds,
    read_foreground: ReadMask,
    out,
    shape: Sequence[int],
    chunk: Sequence[int],
    radius: int = 4,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Give each foreground pixel the label of the nearest seed within ``radius`` pixels
    (of the finest axis; a step along a coarser axis counts at most that much:
    :func:`grow_steps`).

    ``seeds`` is a readable labelled array; ``out`` (may be ``seeds`` itself only if it is not
    read again, so pass a different array) receives the grown labels. Foreground pixels with no
    seed within reach stay 0. Each chunk is read with a halo of that reach (in pixels of each
    axis), so the result
    equals growing the whole image at once.

    Returns the pixel count of every grown label (index = label), counted as the chunks are
    written, for :func:`merge_small_chunked`.
    """
    sizes = np.zeros(1, dtype=np.int64)
    steps, reach = grow_steps(radius, spacing, len(shape))
    halo = [math.ceil(reach / step - 1e-9) for step in steps]
    for tile in tile_grid(shape, chunk, halo):
        seed = np.asarray(seeds[tile.read])
        fg = np.asarray(read_foreground(tile.core))
        if seed.any():
            dist, idx = ndi.distance_transform_edt(seed == 0, sampling=steps, return_indices=True)
            nearest = seed[tuple(idx)]
            grown = np.where(dist <= reach, nearest, 0)[tile.crop]
        else:
            grown = np.zeros(fg.shape, dtype=seed.dtype)
        block = np.where(fg, grown, 0)
        out[tile.core] = block
        counts = np.bincount(block.ravel().astype(np.int64, copy=False))
        if len(counts) > len(sizes):
            sizes = np.pad(sizes, (0, len(counts) - len(sizes)))
        sizes[: len(counts)] += counts
    return sizes


def merge_small_chunked(
    labels,
    sizes: np.ndarray,
    shape: Sequence[int],
    chunk: Sequence[int],
    min_pixels: float,
) -> int:
    """Join each label with fewer than ``min_pixels`` pixels to the kept label (one with at
    least ``min_pixels``) it shares the most faces with; drop those that touch none; renumber
    the kept labels ``1..n``.

    A small label beside a kept one is a piece of that object the boundary map cut off (its
    rim, a cap of a nucleus); one alone is a speck or a sliver at the image's edge.
    ``sizes[label]`` is each label's pixel count over the whole image (an object spread over
    several chunks counts as a whole), as :func:`grow_labels_chunked` returns it. ``labels``
    (zarr or NumPy) is rewritten in place, chunk by chunk; each chunk is read with a one-pixel
    halo for the contacts, so the result does not depend on the chunks. Returns the new count.
    """
    sizes = np.asarray(sizes)
    small = sizes < min_pixels
    small[0] = False
    if not small.any():
        return len(sizes) - 1  # every label is kept as it is: no pass over the labels
    keep = ~small
    keep[0] = False
    lut = np.zeros(len(keep), dtype=np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    if small.any():
        target = _largest_contact(labels, small, keep, shape, chunk)
        lut[small] = lut[target[small]]
    for tile in tile_grid(shape, chunk, [0] * len(shape)):
        labels[tile.core] = lut[np.asarray(labels[tile.core])]
    return int(keep.sum())


def _largest_contact(labels, small, keep, shape, chunk) -> np.ndarray:
    """For every small label, the kept label it shares the most faces with (0: none; of equal
    counts, the lowest label, which :func:`label_chunked` numbers the same whatever the chunks).

    Each face is counted once: by the chunk whose core holds its pixel of lower index."""
    pairs: dict[tuple[int, int], int] = {}
    for tile in tile_grid(shape, chunk, [1] * len(shape)):
        block = np.asarray(labels[tile.read]).astype(np.int64, copy=False)
        in_core = np.zeros(block.shape, dtype=bool)
        in_core[tile.crop] = True
        for axis in range(block.ndim):
            lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(block.ndim))
            hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(block.ndim))
            a, b, counted = block[lo], block[hi], in_core[lo]
            for x, y in ((a, b), (b, a)):
                face = counted & small[x] & keep[y]
                if not face.any():
                    continue
                found, counts = np.unique(np.stack([x[face], y[face]]), axis=1, return_counts=True)
                for (p, q), n in zip(found.T.tolist(), counts.tolist(), strict=True):
                    pairs[(p, q)] = pairs.get((p, q), 0) + n
    target = np.zeros(len(small), dtype=np.int64)
    best = np.zeros(len(small), dtype=np.int64)
    for (p, q), n in sorted(pairs.items()):
        if n > best[p]:
            best[p], target[p] = n, q
    return target


def instances_chunked(
    read_foreground: ReadMask,
    read_cores: ReadMask,
    scratch,
    out,
    shape: Sequence[int],
    chunk: Sequence[int],
    *,
    radius: int,
    spacing: Sequence[float] | None = None,
    min_pixels: float = 0.0,
) -> Generator[tuple[int, int], None, int]:
    """Instance labels from a foreground mask and its cores (foreground minus boundary).

    The cores must lie inside the foreground (every seed then keeps at least itself, and the
    labels stay consecutive).

    1. the cores' connected components (face connectivity) are the seeds, except those smaller
       than ``min_pixels``: a core smaller than the smallest instance kept is a speck of the
       boundary map, not an object, and would split its object into fragments;
    2. the seeds grow into the foreground: each foreground pixel takes the nearest seed within
       ``radius`` pixels (of the finest axis, measured in physical units with ``spacing``, and
       always one plane across however far apart the planes lie: :func:`grow_steps`);
    3. foreground no seed reached (e.g. an object predicted all boundary) becomes instances of
       its own, one per connected piece: no foreground pixel is lost;
    4. instances smaller than ``min_pixels`` pixels join the kept instance they share the most
       faces with (a rim or cap the boundary map cut off an object), or become background
       where they touch none (specks, slivers at the edge); the rest are ``1..n``
       (:func:`merge_small_chunked`).

    A generator: yields ``(passes done, passes)`` after each pass over the image (a caller can
    stop between them) and returns the instance count. ``scratch`` and ``out`` are writable
    integer arrays of ``shape`` (zarr or NumPy); ``out`` receives the labels.
    """
    passes = 4
    seeds = label_chunked(read_cores, scratch, shape, chunk, min_size=min_pixels)
    yield 1, passes
    foreground_pixels = [0]

    def counted_foreground(sl):
        mask = np.asarray(read_foreground(sl))
        foreground_pixels[0] += int(np.count_nonzero(mask))
        return mask

    sizes = grow_labels_chunked(
        scratch, counted_foreground, out, shape, chunk, radius=radius, spacing=spacing
    )
    yield 2, passes
    count = seeds
    if foreground_pixels[0] > int(sizes[1:].sum()):
        count, sizes = _add_unreached(read_foreground, scratch, out, shape, chunk, seeds, sizes)
    yield 3, passes
    if min_pixels > 0:
        count = merge_small_chunked(out, sizes, shape, chunk, min_pixels)
    yield 4, passes
    return count


def _add_unreached(read_foreground, scratch, out, shape, chunk, first, sizes):
    """Label the foreground that ``out`` leaves at 0 as new instances numbered after ``first``."""
    extra = label_chunked(
        lambda sl: np.asarray(read_foreground(sl)) & (np.asarray(out[sl]) == 0),
        scratch,
        shape,
        chunk,
    )
    sizes = np.pad(sizes, (0, max(first + extra + 1 - len(sizes), 0)))
    for tile in tile_grid(shape, chunk, [0] * len(shape)):
        new = np.asarray(scratch[tile.core]).astype(np.int64, copy=False)
        if not new.any():
            continue
        sizes[first + 1 : first + extra + 1] += np.bincount(new.ravel(), minlength=extra + 1)[1:]
        out[tile.core] = np.where(new > 0, new + first, np.asarray(out[tile.core]))
    return first + extra, sizes
