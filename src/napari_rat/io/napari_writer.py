"""napari writer contribution: save a Labels layer into an existing OME-Zarr image.

Saving to ``image.zarr`` adds ``image.zarr/labels/<layer name>``; saving to
``image.zarr/labels/<name>`` picks the name explicitly. An existing label image of that name is
never replaced from napari (delete it first, or call :func:`napari_rat.io.write_labels` with
``overwrite=True``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.io.errors import OmeZarrError
from napari_rat.io.label_writer import write_labels

__all__ = ["write_labels_layer"]

# Colours are stored per label value only when finding the values is cheap.
_MAX_ELEMENTS_FOR_COLORS = 2**26
_MAX_COLORS = 1024


def _target(path: str, layer_name: str) -> tuple[Path, str]:
    p = Path(path).expanduser()
    if p.parent.name == "labels" and p.parent.parent.suffix == ".zarr":
        return p.parent.parent, p.name
    if p.suffix == ".zarr" and p.is_dir():
        return p, layer_name
    raise OmeZarrError(
        path,
        "labels are saved into an existing OME-Zarr image",
        "choose the image's .zarr folder (they go to <image>.zarr/labels/<layer name>)",
    )


def _colors(data: Any, colormap: Any) -> dict[int, tuple[int, int, int, int]] | None:
    if not isinstance(data, np.ndarray) or data.size > _MAX_ELEMENTS_FOR_COLORS:
        return None
    if colormap is None or not hasattr(colormap, "map"):
        return None
    values = np.unique(data)
    values = values[values != 0][:_MAX_COLORS]
    if values.size == 0:
        return None
    rgba = np.asarray(colormap.map(values), dtype=float)
    return {
        int(v): tuple(int(round(c * 255)) for c in row) for v, row in zip(values, rgba, strict=True)
    }


def write_labels_layer(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: write a Labels layer as ``labels/<name>`` of an OME-Zarr.

    Parameters
    ----------
    path
        The OME-Zarr image (``.zarr`` folder), or ``<image>.zarr/labels/<name>``.
    data
        The layer data (level 0 is used for a multiscale layer).
    attributes
        The layer state (``name``, ``colormap``...).

    Returns
    -------
    list of str
        The path written.
    """
    if isinstance(data, (list, tuple)):
        data = data[0]
    image, name = _target(os.fspath(path), str(attributes.get("name") or "labels"))
    colors = _colors(data, attributes.get("colormap"))
    written = write_labels(image, data, name, colors=colors)
    return [str(written)]
