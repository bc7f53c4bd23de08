"""Where instance labels meet: the one face-neighbour comparison behind the boundary targets
(:mod:`napari_rat.inference.instances`) and the seams of generated touching nuclei
(:mod:`napari_rat.synthetic`), and the widest boundary band a head may learn (the config's
limit and the targets'). Pure NumPy, a leaf any layer may use."""

from __future__ import annotations

import numpy as np

#: The widest boundary band a head can learn (``model.head.boundary_width``), in pixels.
MAX_BOUNDARY_WIDTH = 3


def differing_neighbours(labels: np.ndarray, *, instances_only: bool = False) -> np.ndarray:
    """Instance pixels (``labels > 0``) with a face neighbour of another label; with
    ``instances_only``, of another *instance* (background and negative labels do not count)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis] = slice(1, None)
        b[axis] = slice(None, -1)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        differ = la != lb
        if instances_only:
            differ &= (la > 0) & (lb > 0)
        out[tuple(a)] |= differ
        out[tuple(b)] |= differ
    return out & (labels > 0)
