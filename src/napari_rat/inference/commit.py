"""Regions and commits of the interactive core (pure arrays, no Qt).

:func:`region_box` turns a region (a view box, a slice, a 3D box, or ``None`` for the whole
image) into slices; :func:`commit_object` writes an object into an instance label array under
a new id, leaving the other committed objects alone unless asked; :func:`add_instances` adds a
whole instance segmentation (the model's) around the committed objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Region = Sequence[slice | int] | None


def region_box(shape: Sequence[int], region: Region) -> tuple[slice, ...]:
    """``region`` as a box of slices inside ``shape`` (``None``: the whole image; an integer
    picks one slice, kept as a box one pixel thick)."""
    if region is None:
        return tuple(slice(0, n) for n in shape)
    region = tuple(region)
    if len(region) != len(shape):
        raise ValueError(
            f"region {region} has {len(region)} axes; the image has {len(shape)} "
            f"(shape {tuple(shape)}): give one slice or index per axis"
        )
    box = []
    for r, n in zip(region, shape, strict=True):
        if isinstance(r, (int, np.integer)):
            if not 0 <= r < n:
                raise ValueError(f"index {r} is outside an axis of size {n}")
            box.append(slice(int(r), int(r) + 1))
            continue
        start, stop, step = r.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"region {region} is empty or strided inside shape {tuple(shape)}")
        box.append(slice(start, stop))
    return tuple(box)


def commit_object(
    labels: np.ndarray,
    mask: np.ndarray,
    *,
    region: Region = None,
    overwrite: bool = False,
    label: int | None = None,
) -> int:
    """Write the object ``mask`` into the instance array ``labels`` (in place) under a new id.

    Parameters
    ----------
    labels
        The committed instances (integer array, 0 = none).
    mask
        The object: boolean, ``labels``' shape, or the shape of ``region``.
    region
        Where ``mask`` lies in ``labels`` (a box of slices); ``None``: all of it.
    overwrite
        Also take pixels of other committed objects; by default they keep theirs.
    label
        The id to use (default: one above the largest id in ``labels``).

    Returns
    -------
    The id written. Nothing is written when the input is refused (``ValueError``): a mask of
    another shape, an empty object, one lying wholly under other objects, an id the dtype
    cannot hold.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    box = region_box(labels.shape, region)
    target = labels[box]
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != target.shape:
        raise ValueError(
            f"the object's mask has shape {mask.shape}; the labels (in the region) have "
            f"{target.shape}: give a mask of that shape, or its region"
        )
    new = int(labels.max()) + 1 if label is None else int(label)
    if new <= 0 or new > np.iinfo(labels.dtype).max:
        raise ValueError(
            f"id {new} does not fit labels of dtype {labels.dtype}; convert the labels to "
            "int32 first"
        )
    write = mask if overwrite else mask & (target == 0)
    if not write.any():
        why = "is empty" if not mask.any() else "lies wholly under committed objects"
        raise ValueError(f"nothing to commit: the object {why} (pass overwrite=True to replace)")
    target[write] = new
    return new


def add_instances(labels: np.ndarray, instances: np.ndarray, *, region: Region = None) -> int:
    """Write every object of the instance array ``instances`` into ``labels`` (in place) where
    ``labels`` is 0, each under a new id above the largest in ``labels`` (what "accept the
    automatic segmentation" does: committed objects keep their pixels and ids).

    ``instances`` has ``labels``' shape, or the shape of ``region``. Returns how many objects
    were added (an object wholly under committed ones adds nothing). Refused (``ValueError``,
    nothing written) for another shape, non-integer arrays, or ids the dtype cannot hold.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instances must be an integer array, got {instances.dtype}")
    box = region_box(labels.shape, region)
    target = labels[box]
    if instances.shape != target.shape:
        raise ValueError(
            f"the instances have shape {instances.shape}; the labels (in the region) have "
            f"{target.shape}: give instances of that shape, or their region"
        )
    free = (target == 0) & (instances > 0)
    ids = np.unique(instances[free])
    if ids.size == 0:
        return 0
    start = int(labels.max()) + 1
    if start + ids.size - 1 > np.iinfo(labels.dtype).max:
        raise ValueError(
            f"{ids.size} more objects do not fit labels of dtype {labels.dtype}; convert the "
            "labels to int32 first"
        )
    # ids are sorted: searchsorted numbers them start, start + 1, ... in one pass
    target[free] = start + np.searchsorted(ids, instances[free])
    return int(ids.size)
