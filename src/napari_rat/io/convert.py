"""Convert TIFF / OME-TIFF / NumPy files to OME-Zarr, streaming chunk by chunk.

Sources are opened lazily (tifffile's zarr interface; ``.npy`` read slab by slab from the
file), so memory is bounded by a few chunks, not by the image. Physical sizes come from the
OME-XML (or ImageJ metadata) when present, from the caller otherwise.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.io.errors import OmeZarrError
from napari_rat.io.ome_zarr_writer import ProgressCallback, make_axes, write_image
from napari_rat.io.pyramid import Channel
from napari_rat.io.units import meters, ngff_time_unit, ngff_unit

__all__ = ["SourceImage", "convert", "open_source"]

_SLAB_BYTES = 64 * 1024**2


@dataclass
class SourceImage:
    """A lazily opened input image: dask data in NGFF axis order and what the file says."""

    data: Any
    axes: str
    spacing: tuple[float, ...] | None = None
    unit: str | None = None
    channel_names: list[str] = field(default_factory=list)
    #: Time between time points and its unit (OME-XML ``TimeIncrement``), when the file says.
    time_increment: float | None = None
    time_unit: str | None = None
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Close the files held open."""
        for c in self.closers:
            c.close()


def _ome_pixels(xml: str) -> ET.Element | None:
    root = ET.fromstring(xml)
    return next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)


def _ome_time(xml: str) -> tuple[float | None, str | None]:
    """``TimeIncrement`` and its NGFF unit (seconds by OME's default), if given and positive."""
    pixels = _ome_pixels(xml)
    if pixels is None:
        return None, None
    try:
        increment = float(pixels.get("TimeIncrement", "nan"))
    except ValueError:
        return None, None
    unit = ngff_time_unit(pixels.get("TimeIncrementUnit", "s"))
    if not increment > 0 or unit is None:
        return None, None
    return increment, unit


def _ome_physical(xml: str) -> tuple[dict[str, float], str | None, list[str]]:
    """Physical sizes per axis (in the unit returned, that of X), unit, channel names."""
    pixels = _ome_pixels(xml)
    if pixels is None:
        return {}, None, []
    sizes: dict[str, float] = {}
    base = ngff_unit(pixels.get("PhysicalSizeXUnit", "µm")) or "micrometer"
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        if value is None:
            continue
        unit = ngff_unit(pixels.get(f"PhysicalSize{ax}Unit", "µm")) or base
        # Express every axis in X's unit so spacings compare (z in nm, x in µm happens).
        sizes[ax.lower()] = float(value) * meters(unit) / meters(base)
    names = [
        ch.get("Name") or f"channel {i}"
        for i, ch in enumerate(el for el in pixels if el.tag.endswith("}Channel"))
    ]
    return sizes, base if sizes else None, names


def _ngff_axes(tiff_axes: str) -> str:
    mapping = {"Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c", "T": "t"}
    out = []
    for i, a in enumerate(tiff_axes):
        name = mapping.get(a)
        if name is None and a in "QIR" and i == 0:
            name = "z"  # an unnamed leading axis of a stack (image sequence)
        if name is None or name in out:
            raise OmeZarrError(
                "", f"unsupported TIFF axes {tiff_axes!r}", "save it as ZYX, CZYX or TCZYX"
            )
        out.append(name)
    return "".join(out)


def _to_ngff_order(data: Any, axes: str) -> tuple[Any, str]:
    order = [a for a in "tczyx" if a in axes]
    perm = [axes.index(a) for a in order]
    if perm != list(range(len(axes))):
        data = data.transpose(perm)
    return data, "".join(order)


def _open_tiff(path: Path) -> SourceImage:
    import dask.array as da
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        store = tif.aszarr(series=0, level=0)
        array = zarr.open_array(store, mode="r")
        data = da.from_zarr(array)
        axes = _ngff_axes(series.axes)
        spacing_of: dict[str, float] = {}
        unit = None
        names: list[str] = []
        increment = time_unit = None
        if tif.ome_metadata:
            spacing_of, unit, names = _ome_physical(tif.ome_metadata)
            increment, time_unit = _ome_time(tif.ome_metadata)
        elif tif.imagej_metadata:
            ij = tif.imagej_metadata
            page = tif.pages[0]
            res = page.tags.get("XResolution")
            if res is not None and res.value[0]:
                spacing_of["x"] = spacing_of["y"] = res.value[1] / res.value[0]
            if "spacing" in ij:
                spacing_of["z"] = float(ij["spacing"])
            unit = ngff_unit(str(ij.get("unit", "")).replace("\\u00B5", "µ"))
            if ij.get("finterval"):
                increment = float(ij["finterval"])
                time_unit = ngff_time_unit(str(ij.get("tunit", "s")))
                if time_unit is None:
                    increment = None
        data, axes = _to_ngff_order(data, axes)
        spatial = [a for a in axes if a in "zyx"]
        spacing = None
        if spacing_of and all(a in spacing_of for a in spatial if a != "z"):
            spacing = tuple(spacing_of.get(a, 1.0) for a in spatial)
        return SourceImage(
            data, axes, spacing, unit, names, increment, time_unit, closers=[store, tif]
        )
    except BaseException:
        tif.close()
        raise


class _NpyFile:
    """Array-like view of a ``.npy`` file read with plain file reads (no memory map)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            self.shape, fortran, self.dtype = header(fh)
            self.offset = fh.tell()
        if fortran or self.dtype.hasobject:
            raise OmeZarrError(
                str(path), "Fortran-ordered or object .npy files are not supported", "resave it"
            )
        self.path, self.ndim = path, len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        # Read the contiguous run of whole rows along axis 0, then cut the rest.
        first = key[0].indices(self.shape[0])
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        count = (first[1] - first[0]) * row // self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + first[0] * row)
            flat = np.fromfile(fh, dtype=self.dtype, count=count)
        block = flat.reshape((first[1] - first[0], *self.shape[1:]))
        return block[(slice(None), *key[1:])]


def _open_npy(path: Path) -> SourceImage:
    import dask.array as da

    arr = _NpyFile(path)
    if arr.ndim not in (2, 3, 4, 5):
        raise OmeZarrError(str(path), f"{arr.ndim}-D array", "give a 2-D to 5-D array")
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    slab = max(1, _SLAB_BYTES // max(row_bytes, 1))
    data = da.from_array(
        arr,
        chunks=(slab, *arr.shape[1:]),
        meta=np.empty((0,) * arr.ndim, arr.dtype),
        asarray=False,
        fancy=False,
    )
    axes = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}[arr.ndim]
    return SourceImage(data, axes)


def open_source(path: str | os.PathLike[str]) -> SourceImage:
    """Open a TIFF / OME-TIFF / ``.npy`` file lazily, with the metadata it carries."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise OmeZarrError(str(path), "no such file", "check the path")
    suffix = "".join(p.suffixes[-2:]).lower()
    if p.suffix.lower() == ".npy":
        return _open_npy(p)
    if p.suffix.lower() in (".tif", ".tiff", ".btf", ".tf8") or suffix.endswith(".ome.tif"):
        try:
            return _open_tiff(p)
        except OmeZarrError as exc:
            raise OmeZarrError(str(path), exc.problem, exc.fix) from None
        except Exception as exc:  # tifffile raises many kinds on a corrupt file
            raise OmeZarrError(str(path), f"cannot read this TIFF: {exc}") from None
    raise OmeZarrError(
        str(path), f"unsupported file type {p.suffix!r}", "give a .tif, .ome.tif or .npy file"
    )


def convert(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    spacing: Sequence[float] | None = None,
    units: str | None = None,
    translation: Sequence[float] | None = None,
    ngff_version: str = "0.5",
    levels: int | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Convert a TIFF / OME-TIFF / ``.npy`` file to a multiscale OME-Zarr image.

    Parameters
    ----------
    src
        Input file.
    dest
        Output ``.zarr`` folder (must not exist unless ``overwrite``).
    spacing
        Voxel size per spatial axis (z, y, x); overrides the file's metadata.
    units
        Spatial unit (``"micrometer"``); overrides the file's.
    translation
        World position of voxel 0 per spatial axis.
    ngff_version, levels, chunks, overwrite, progress
        As for :func:`~napari_rat.io.ome_zarr_writer.write_image`.

    Returns
    -------
    Path
        ``dest``.
    """
    source = open_source(src)
    try:
        n_spatial = sum(a in "zyx" for a in source.axes)
        if spacing is not None and len(spacing) != n_spatial:
            raise OmeZarrError(
                str(src),
                f"--spacing has {len(spacing)} values but the image has {n_spatial} spatial "
                f"axes ({source.axes})",
                f"give {n_spatial} values",
            )
        if translation is not None and len(translation) != n_spatial:
            raise OmeZarrError(
                str(src), f"translation needs {n_spatial} values", f"give {n_spatial} values"
            )
        channels = None
        if "c" in source.axes and source.channel_names:
            n = source.data.shape[source.axes.index("c")]
            if len(source.channel_names) == n:
                channels = [Channel(name=name) for name in source.channel_names]
        axes = make_axes(source.axes, units or source.unit or "micrometer")
        scale = spacing if spacing is not None else source.spacing
        if "t" in source.axes and source.time_increment is not None:
            # The time axis keeps its increment and unit: then one scale value per axis.
            spatial = list(scale) if scale is not None else [1.0] * n_spatial
            full = []
            for a in axes:
                if a.type == "time":
                    full.append(source.time_increment)
                else:
                    full.append(float(spatial.pop(0)) if a.type == "space" else 1.0)
            axes = tuple(replace(a, unit=source.time_unit) if a.type == "time" else a for a in axes)
            scale = full
        return write_image(
            dest,
            source.data,
            axes=axes,
            scale=scale,
            translation=translation,
            units=None,
            levels=levels,
            ngff_version=ngff_version,
            chunks=chunks,
            channels=channels,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        source.close()
