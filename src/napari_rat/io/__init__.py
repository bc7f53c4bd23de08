"""OME-Zarr pyramids with physical spacing: read, write, convert, validate (no Qt, no napari).

Reading
-------
``open_pyramid(path_or_url, storage_options=None, timeout=30.0) -> Pyramid``
    Local path, ``http(s)://`` or ``s3://`` URL (anonymous unless AWS credentials are set), or
    an open zarr store. Reads metadata only; validated with ``ome-zarr-models``.

``Pyramid`` (frozen dataclass)
    ``uri``, ``ngff_version`` (``"0.4"``/``"0.5"``), ``name``, ``axes`` (``Axis(name, type,
    unit)``), ``levels`` (finest first), ``channels`` (``Channel(name, color "RRGGBB", window
    (start, end), limits (min, max), visible)``), ``labels`` (``{name: Pyramid}``) and, for a
    label image, ``image_label`` (``LabelProperties(colors {value: rgba}, source)``).
    Helpers: ``ndim``, ``axis_names``, ``units``, ``spatial_axes``, ``channel_axis``,
    ``spacing`` (level-0 spatial voxel size), ``summary()``, and
    ``select(levels=None, region={axis: (start, stop)})`` which keeps some levels and crops
    all of them (and the labels) to the world region of a level-0 voxel range, moving the
    translations so that nothing shifts.

``PyramidLevel``
    ``path``, ``data`` (a dask array over zarr), ``scale`` and ``translation`` (one per axis,
    dataset and multiscale transforms composed: world = index * scale + translation),
    ``shape``, ``dtype``, ``chunks``.

Writing
-------
``write_image(dest, data, axes="zyx", scale, translation, units, levels, ngff_version,
chunks, channels, method="mean"|"nearest", overwrite=False, progress) -> Path``
    A new multiscale image from a NumPy or dask array, computed chunk by chunk, written aside
    and moved into place. Pyramids respect anisotropy (z is not halved while coarser). Every
    channel gets an ``omero`` display window (percentiles of the coarsest level unless given),
    which the napari reader passes on as ``contrast_limits``.

``write_labels(image, labels, name, colors=None, overwrite=False, progress) -> Path``
    ``image/labels/<name>`` with one level per image level (nearest neighbour onto each
    level's grid, same transforms), ``image-label`` metadata, atomic.

``convert(src, dest, spacing, units, ngff_version, levels, chunks, ...) -> Path``
    TIFF / OME-TIFF / ``.npy`` to OME-Zarr, streaming; a time axis keeps the file's
    increment and unit (OME-XML ``TimeIncrement``/``TimeIncrementUnit``, ImageJ ``finterval``).

Versions
--------
``napari_rat.io.ngff_formats``: one class per OME-NGFF version (``FormatV04``: zarr v2,
``.zattrs``; ``FormatV05``: zarr v3, ``zarr.json`` ``attributes.ome``) holding where its
metadata lives and how it is built and validated; ``format_for(version)`` and
``detect_format(attrs, uri, zarr_format)`` choose one (an unknown version names the supported
ones). Writes go through ``napari_rat.atomic_files.atomic_path`` (built aside, moved into
place).

Diagnostics
-----------
``napari_rat.io.store_wrappers.KeyRecordingStore(store)`` records the keys read through it
(``reads``, ``chunk_reads``): opening a pyramid through it proves that no chunk is read.

Errors
------
``OmeZarrError(ValueError)`` (and ``RemoteAccessError`` for timeouts and HTTP errors): the
message names the file and the fix; nothing on disk is changed when one is raised.
``OmeZarrWarning``: a label image that breaks the spec but passes the structural checks
(e.g. 0.5 label arrays without ``dimension_names``, as ome-zarr 0.18 writes them) is opened
with this warning.
"""

from napari_rat.io.convert import convert, open_source
from napari_rat.io.errors import OmeZarrError, RemoteAccessError
from napari_rat.io.label_writer import write_labels
from napari_rat.io.ome_zarr_reader import open_pyramid
from napari_rat.io.ome_zarr_writer import make_axes, write_image
from napari_rat.io.pyramid import Axis, Channel, LabelProperties, Pyramid, PyramidLevel

__all__ = [
    "Axis",
    "Channel",
    "LabelProperties",
    "OmeZarrError",
    "Pyramid",
    "PyramidLevel",
    "RemoteAccessError",
    "convert",
    "make_axes",
    "open_pyramid",
    "open_source",
    "write_image",
    "write_labels",
]
