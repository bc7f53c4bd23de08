"""napari writer contribution: save a Labels layer into an existing OME-Zarr image.

Saving to ``image.zarr`` adds ``image.zarr/labels/<layer name>``; saving to
``image.zarr/labels/<name>`` picks the name explicitly (napari's ``<name>.zarr`` too: napari
appends the writer's extension). A Labels layer opened from a label image is saved back over
it (level 0 written, the coarser levels rebuilt from it, the whole label image replaced at
once); any other existing label image of that name is never replaced from napari (delete it
first, or call :func:`napari_rat.io.write_labels` with ``overwrite=True``).

Refusals are raised as :class:`~napari_rat.io.errors.NapariWriteError` (an ``OSError``), which
napari shows; napari would swallow a ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.io.errors import NapariWriteError, OmeZarrError
from napari_rat.io.label_writer import write_labels
from napari_rat.io.zarr_stores import is_remote

__all__ = ["write_labels_layer"]

# Colours are stored per label value only when finding the values is cheap.
_MAX_ELEMENTS_FOR_COLORS = 2**26
_MAX_COLORS = 1024


def _target(path: str, layer_name: str) -> tuple[Path, str]:
    p = Path(path).expanduser()
    if p.parent.name == "labels" and p.parent.parent.suffix == ".zarr":
        # napari appends the writer's extension: labels/<name> arrives as labels/<name>.zarr.
        name = p.name[: -len(".zarr")] if p.name.endswith(".zarr") else p.name
        return p.parent.parent, name
    if p.suffix == ".zarr" and p.is_dir():
        return p, layer_name
    raise OmeZarrError(
        path,
        "labels are saved into an existing OME-Zarr image",
        "choose the image's .zarr folder (they go to <image>.zarr/labels/<layer name>)",
    )


def _opened_from(attributes: dict[str, Any], image: Path, name: str) -> bool:
    """Whether the layer was read from ``image/labels/name`` (by this plugin's reader)."""
    meta = attributes.get("metadata") or {}
    uri = meta.get("uri")
    if meta.get("label") != name or not isinstance(uri, str) or is_remote(uri):
        return False
    return Path(uri).expanduser().resolve() == (image / "labels" / name).resolve()


def _colors(data: Any, colormap: Any) -> dict[int, tuple[int, int, int, int]] | None:
    def rgba255(row: Any) -> tuple[int, int, int, int]:
        return tuple(int(round(float(c) * 255)) for c in row)  # type: ignore[return-value]

    color_dict = getattr(colormap, "color_dict", None)
    if color_dict:
        # Colours chosen per value (as read from image-label): keep them, no need to scan data.
        return {
            int(v): rgba255(rgba) for v, rgba in color_dict.items() if v is not None and v != 0
        } or None
    if not isinstance(data, np.ndarray) or data.size > _MAX_ELEMENTS_FOR_COLORS:
        return None
    if colormap is None or not hasattr(colormap, "map"):
        return None
    values = np.unique(data)
    values = values[values != 0][:_MAX_COLORS]
    if values.size == 0:
        return None
    rgba = np.asarray(colormap.map(values), dtype=float)
    return {int(v): rgba255(row) for v, row in zip(values, rgba, strict=True)}


def write_labels_layer(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: write a Labels layer as ``labels/<name>`` of an OME-Zarr.

    Parameters
    ----------
    path
        The OME-Zarr image (``.zarr`` folder), or ``<image>.zarr/labels/<name>`` (with or
        without a ``.zarr`` suffix on the name).
    data
        The layer data; for a multiscale layer (napari's ``MultiScaleData``, or a list of
        levels) level 0 is written and the coarser levels are rebuilt from it.
    attributes
        The layer state (``name``, ``colormap``, ``metadata``...).

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    NapariWriteError
        When the labels cannot be saved there; the message says why and what to do.
    """
    if isinstance(data, Sequence) and not isinstance(data, np.ndarray):
        data = data[0]
    try:
        image, name = _target(os.fspath(path), str(attributes.get("name") or "labels"))
        colors = _colors(data, attributes.get("colormap"))
        overwrite = _opened_from(attributes, image, name)
        written = write_labels(image, data, name, colors=colors, overwrite=overwrite)
    except OmeZarrError as exc:
        if exc.fix and "overwrite=True" in exc.fix:
            # Not an option from napari's Save dialog: say what is.
            exc = OmeZarrError(
                exc.uri,
                exc.problem,
                "save under another name, <image>.zarr/labels/<new name>, or delete it first",
            )
        raise NapariWriteError(str(exc)) from exc
    return [str(written)]
