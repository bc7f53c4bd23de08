"""The tile grid of a tiled prediction: cores that cover the image once, each read with a halo.

Each :class:`Tile` reads ``read`` (core plus halo, clipped to the image), and its prediction
cropped by ``crop`` is written to ``core``. Cores never overlap, so every output pixel is
written exactly once, and it comes from the tile whose centre is nearest: the halo gives each
core pixel the context the model needs.

With ``uniform_reads`` every read has the same shape (the largest core plus both halos, or the
whole axis if that is smaller): reads at the image border shift inward instead of shrinking.
A model then sees one input shape per axis. That gives border tiles more context, and it keeps
memory flat in image size: every new input shape leaves something behind (oneDNN primitives,
RoSE's position cache, allocator fragmentation). Measured on the starter model, tiles of 256
with a halo of 32: a 3000^2 image (reads in 4 shapes) peaked 260 MB above the set-up, a 3001^2
image (16 shapes) 353 MB, and 214 MB with uniform reads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """One tile: where to read, which part of the prediction to keep, where to write it."""

    index: int
    read: tuple[slice, ...]
    core: tuple[slice, ...]
    crop: tuple[slice, ...]


def tile_grid(
    shape: Sequence[int],
    tile: Sequence[int],
    halo: Sequence[int],
    *,
    uniform_reads: bool = False,
) -> list[Tile]:
    """Split ``shape`` into cores of at most ``tile`` pixels read with ``halo`` pixels around.

    Parameters
    ----------
    shape
        Spatial shape of the image.
    tile
        Core size per axis (clipped to the shape).
    halo
        Context read on each side of a core (clipped at the image border).
    uniform_reads
        Give every read the same shape (see the module docstring); the halo around each core
        is then at least ``halo`` wherever the image allows.
    """
    if not len(shape) == len(tile) == len(halo):
        raise ValueError(f"shape {shape}, tile {tile} and halo {halo} need the same length")
    if any(t < 1 for t in tile) or any(h < 0 for h in halo):
        raise ValueError(f"tile must be >= 1 and halo >= 0, got tile {tile}, halo {halo}")
    axes = []
    for n, t, h in zip(shape, tile, halo, strict=True):
        t = min(int(t), int(n))
        count = math.ceil(n / t)
        # Even cores: spread the remainder instead of leaving a thin last tile.
        bounds = [round(i * n / count) for i in range(count + 1)]
        size = min(n, max(b - a for a, b in itertools.pairwise(bounds)) + 2 * h)
        ranges = []
        for a, b in itertools.pairwise(bounds):
            lo, hi = max(0, a - h), min(n, b + h)
            if uniform_reads:
                lo = min(lo, n - size)
                hi = lo + size
            ranges.append((slice(lo, hi), slice(a, b), slice(a - lo, b - lo)))
        axes.append(ranges)
    tiles = []
    for i, combo in enumerate(itertools.product(*axes)):
        read, core, crop = zip(*combo, strict=True)
        tiles.append(Tile(i, tuple(read), tuple(core), tuple(crop)))
    return tiles
