"""Where a prediction's results are built and published: a zarr store built beside its final
path and moved into place whole (or a set of NumPy arrays, for a prediction kept in memory).

Shared by the engine (:mod:`napari_rat.inference.tiled_predict`), the plane-by-plane runner
(:mod:`napari_rat.inference.planes`) and the cluster's resumable runs
(:mod:`napari_rat.cluster.predict`), so that every store has the same layout and attributes.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_rat.atomic_files import atomic_path

if TYPE_CHECKING:
    from napari_rat.inference.tiled_predict import Prediction


def new_array(root, name, shape, chunks, dtype):
    """A result array: in the zarr group ``root``, or in memory (NumPy) when ``root`` is None."""
    if root is None:
        return np.zeros(shape, dtype=dtype)
    return root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def staged_store(store: str | Path | None):
    """Where the results are built: ``None`` (kept in memory) or a path beside ``store`` that
    :func:`~napari_rat.atomic_files.atomic_path` moves into place when the block ends normally
    (and deletes otherwise: a cancel, an error, the generator closed)."""
    if store is None:
        return nullcontext(None)
    if Path(store).exists():  # said before any work, in predict's words
        raise FileExistsError(f"{store} already exists; choose another output or remove it")
    return atomic_path(Path(store), overwrite=False)


def open_new_group(path: Path):
    import zarr

    return zarr.open_group(path, mode="w")


def placement_attrs(result: Prediction) -> dict:
    """What a reader of the store needs to place and name the results."""
    return {
        "spacing": list(result.spacing),
        "translation": list(result.translation),
        "class_names": result.class_names,
        "channel_names": result.channel_names,
        "num_instances": result.num_instances,
        "boundary_radius": result.boundary_radius,
    }


def published(result: Prediction, store: Path, with_labels: bool) -> Prediction:
    """``result`` pointed at the store moved into place."""
    import zarr

    final = zarr.open_group(store, mode="r")
    result.probabilities = final["probabilities"]
    result.semantic = final["semantic"]
    result.labels = final["labels"] if with_labels else None
    if result.features is not None:
        result.features = final["features"]
    result.store = Path(store)
    return result


def publish_work(
    result: Prediction, work: Path, store: str | Path, with_labels: bool
) -> Prediction:
    """A resumable run's complete work folder (a zarr group beside ``store``, kept between runs
    so that a stopped run can finish) moved into place as ``store``, and ``result`` pointed at
    it. Like :func:`~napari_rat.atomic_files.atomic_path`, the move is one rename on the same
    file system: readers see nothing, then the whole store."""
    import zarr

    store = Path(store)
    zarr.open_group(work, mode="a").attrs.update({"napari_rat": placement_attrs(result)})
    if store.exists():
        raise FileExistsError(f"{store} already exists; choose another output or remove it")
    os.rename(work, store)
    return published(result, store, with_labels)
