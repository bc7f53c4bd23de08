"""Write a label image (or a prediction) into an existing OME-Zarr as ``labels/<name>``.

The label image gets as many levels as the image, each resampled by nearest neighbour onto the
grid of the matching image level (same shape, scale and translation), the ``image-label``
metadata (colours, source) and the version fields of the spec (including ``ome.version`` on the
0.5 ``labels`` group). It is written aside and moved into place; an existing label image is
replaced only when asked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_rat.atomic_files import atomic_path
from napari_rat.io.downsampling import resample_nearest
from napari_rat.io.errors import OmeZarrError
from napari_rat.io.ngff_formats import NgffFormat, format_for
from napari_rat.io.ngff_metadata import parse_labels_attrs
from napari_rat.io.ome_zarr_reader import open_pyramid
from napari_rat.io.ome_zarr_writer import (
    ProgressCallback,
    staged_store,
    store_lazily,
)
from napari_rat.io.zarr_stores import is_remote

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["write_labels"]

_NAME_FORBIDDEN = set('/\\:*?"<>|')


def _check_labels(labels: Any, image: str) -> Any:
    dtype = np.dtype(labels.dtype)
    if dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        raise OmeZarrError(
            image,
            f"labels must be integers, got {dtype}",
            "cast them first, e.g. labels.astype(numpy.uint32), or threshold a prediction",
        )
    return labels


def _update_labels_list(labels_dir: Path, fmt: NgffFormat, name: str) -> None:
    """Add ``name`` to the ``labels`` group's list (atomically rewriting its attributes)."""
    attrs_file = labels_dir / fmt.attributes_file
    doc = json.loads(attrs_file.read_text()) if attrs_file.exists() else {}
    attrs = fmt.attributes_in(doc)
    names = parse_labels_attrs(attrs)
    if name in names:
        return
    doc = fmt.document_with(doc, {**attrs, **fmt.labels_attributes([*names, name])})
    with atomic_path(attrs_file) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def check_labels_target(image: str | os.PathLike[str], name: str, overwrite: bool = False) -> None:
    """Refuse a ``labels/<name>`` that :func:`write_labels` could not write into ``image``
    (remote, an invalid name, or an existing label image without ``overwrite``), before any
    work is done; :class:`OmeZarrError` names the problem and the fix."""
    if is_remote(str(image)):
        raise OmeZarrError(str(image), "writing to remote stores is not supported", "copy it")
    if not name or name.startswith(".") or _NAME_FORBIDDEN & set(name):
        raise OmeZarrError(str(image), f"invalid label name {name!r}", "use a plain folder name")
    dest = Path(image).expanduser().absolute() / "labels" / name
    if dest.exists() and not overwrite:
        raise OmeZarrError(
            str(dest), "a label image of this name already exists", "pass overwrite=True"
        )


def write_labels(
    image: str | os.PathLike[str],
    labels: np.ndarray | da.Array,
    name: str,
    *,
    colors: Mapping[int, Sequence[int]] | None = None,
    source: str | None = "../../",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write ``labels`` into the OME-Zarr ``image`` as ``labels/<name>``.

    Parameters
    ----------
    image
        Local path of an existing OME-Zarr image (0.4 or 0.5).
    labels
        Integer array (NumPy or dask) with the shape of the image's level 0, without its
        channel axis (a channel axis of size 1 is accepted too).
    name
        Name of the label image.
    colors
        ``{label value: (r, g, b, a)}`` with 0-255 components, stored in ``image-label``.
    source
        Relative path from the label image to its image (``"../../"``).
    overwrite
        Replace an existing label image of that name.
    progress
        ``progress(fraction, message)`` callback.

    Returns
    -------
    Path
        Path of the new label image.
    """
    import dask.array as da
    import zarr
    from zarr.storage import LocalStore

    check_labels_target(image, name, overwrite)
    pyramid = open_pyramid(image)
    image_dir = Path(image).expanduser().absolute()
    if pyramid.image_label is not None:
        raise OmeZarrError(str(image), "this is a label image", "give the image it labels")
    fmt = format_for(pyramid.ngff_version)
    labels = _check_labels(labels, str(image))

    c_axis = pyramid.channel_axis
    keep = [i for i in range(pyramid.ndim) if i != c_axis]
    base_shape = tuple(pyramid.levels[0].shape[i] for i in keep)
    if c_axis is not None and labels.ndim == pyramid.ndim and labels.shape[c_axis] == 1:
        labels = labels[tuple(0 if i == c_axis else slice(None) for i in range(labels.ndim))]
    if tuple(labels.shape) != base_shape:
        expected = " x ".join(str(n) for n in base_shape)
        raise OmeZarrError(
            str(image),
            f"labels of shape {tuple(labels.shape)} do not match the image's level 0 "
            f"({expected}, axes {''.join(pyramid.axis_names[i] for i in keep)})",
            "give labels with the shape of level 0 (without the channel axis)",
        )
    axes = [pyramid.axes[i] for i in keep]
    scales = [tuple(lv.scale[i] for i in keep) for lv in pyramid.levels]
    translations = [tuple(lv.translation[i] for i in keep) for lv in pyramid.levels]
    shapes = [tuple(lv.shape[i] for i in keep) for lv in pyramid.levels]
    chunks0 = tuple(pyramid.levels[0].chunks[i] for i in keep)
    paths = [lv.path for lv in pyramid.levels]

    multiscale = fmt.multiscale(axes, scales, translations, paths=paths, name=name)
    attrs = fmt.image_attributes(multiscale, image_label=fmt.image_label(colors, source))

    labels_dir = image_dir / "labels"
    dest = labels_dir / name
    # Without a labels group, stage the whole group so it appears at once, complete.
    new_group = not labels_dir.exists()
    with staged_store(labels_dir if new_group else dest, overwrite and not new_group) as staging:
        label_root = staging / name if new_group else staging
        if new_group:
            zarr.open_group(
                LocalStore(staging),
                mode="w",
                zarr_format=fmt.zarr_format,
                attributes=fmt.labels_attributes([name]),
            )
        group = zarr.open_group(
            LocalStore(label_root), mode="w", zarr_format=fmt.zarr_format, attributes=attrs
        )
        src = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=chunks0)
        for i, (path, shape) in enumerate(zip(paths, shapes, strict=True)):
            chunks = tuple(min(c, n) for c, n in zip(chunks0, shape, strict=True))
            arr = group.create_array(
                path,
                shape=shape,
                dtype=src.dtype,
                chunks=chunks,
                fill_value=0,
                **fmt.array_options(axes),
            )
            level = resample_nearest(
                src, scales[0], translations[0], shape, scales[i], translations[i], chunks
            )
            store_lazily(level, arr, progress, f"labels level {i + 1}/{len(paths)}")
            if i == 0:
                # Coarser levels come from the stored level 0, so a lazy prediction runs once.
                src = da.from_zarr(arr)
    if not new_group:
        _update_labels_list(labels_dir, fmt, name)
    return dest
