"""The tile grid of a tiled prediction: cores that cover the image once, each read with a halo.

Each :class:`Tile` reads ``read`` (core plus halo, clipped to the image), and its prediction
cropped by ``crop`` is written to ``core``. Cores never overlap, so every output pixel is
written exactly once, and it comes from the tile whose centre is nearest: the halo gives each
core pixel the context the model needs.
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


def tile_grid(shape: Sequence[int], tile: Sequence[int], halo: Sequence[int]) -> list[Tile]:
    """Split ``shape`` into cores of at most ``tile`` pixels read with ``halo`` pixels around.

    Parameters
    ----------
    shape
        Spatial shape of the image.
    tile
        Core size per axis (clipped to the shape).
    halo
        Context read on each side of a core (clipped at the image border).
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
        ranges = []
        for a, b in itertools.pairwise(bounds):
            lo, hi = max(0, a - h), min(n, b + h)
            ranges.append((slice(lo, hi), slice(a, b), slice(a - lo, b - lo)))
        axes.append(ranges)
    tiles = []
    for i, combo in enumerate(itertools.product(*axes)):
        read, core, crop = zip(*combo, strict=True)
        tiles.append(Tile(i, tuple(read), tuple(core), tuple(crop)))
    return tiles
