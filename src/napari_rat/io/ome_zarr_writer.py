"""Write new OME-Zarr images (0.4 or 0.5) lazily, chunk by chunk, and atomically.

Everything is written into a hidden staging folder next to the destination and moved into
place at the end, so a failure (or an interrupt) never leaves a half-written image where the
user looks, and never touches what was there before.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_rat.atomic_files import DestinationExistsError, StagingError, atomic_path
from napari_rat.io.downsampling import downsample, level_shape, level_transform, plan_factors
from napari_rat.io.errors import OmeZarrError
from napari_rat.io.ngff_formats import format_for
from napari_rat.io.pyramid import Axis, Channel
from napari_rat.io.zarr_stores import is_remote

if TYPE_CHECKING:
    import dask.array as da

__all__ = [
    "ProgressCallback",
    "contrast_windows",
    "default_chunks",
    "make_axes",
    "write_image",
]

#: ``progress(fraction_done, message)``, called from the writing thread.
ProgressCallback = Callable[[float, str], None]

_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_SLAB_BUDGET = 128 * 1024**2
#: Percentiles of a coarse level's values that make an image's default display window
#: (``omero``), so napari opens it readable instead of guessing from one slice.
WINDOW_PERCENTILES = (0.1, 99.9)
_WINDOW_SAMPLE = 2**22
_WINDOW_PLANES = 16
_OVERWRITE_HINT = "pass overwrite=True (napari-rat convert: --overwrite) to replace it"


def make_axes(
    axes: str | Sequence[str | Axis], units: str | Sequence[str | None] | None = None
) -> tuple[Axis, ...]:
    """Axes from names (``"czyx"`` or ``["c", "z", "y", "x"]``) and units for the spatial ones.

    Names ``x``, ``y``, ``z`` are ``space``, ``c`` is ``channel``, ``t`` is ``time``. ``units``
    is one unit for every spatial axis, or one per spatial axis.
    """
    if all(isinstance(a, Axis) for a in axes):
        return tuple(axes)  # type: ignore[arg-type]
    names = [str(a) for a in axes]
    kinds = {"x": "space", "y": "space", "z": "space", "c": "channel", "t": "time"}
    spatial = [n for n in names if kinds.get(n) == "space"]
    if units is None or isinstance(units, str):
        unit_of = dict.fromkeys(spatial, units)
    else:
        if len(units) != len(spatial):
            raise ValueError(f"got {len(units)} units for {len(spatial)} spatial axes")
        unit_of = dict(zip(spatial, units, strict=True))
    return tuple(Axis(name=n, type=kinds.get(n), unit=unit_of.get(n)) for n in names)


def default_chunks(
    shape: Sequence[int], axes: Sequence[Axis], itemsize: int = 2
) -> tuple[int, ...]:
    """Chunks of a few MB: 64 x 256 x 256 in 3D, 512 x 512 in 2D, 1 along channel/time.

    In 3D the chunk depth shrinks for very large planes so that a chunk-deep slab (what the
    writer holds at once) stays near 128 MB.
    """
    spatial = [i for i, a in enumerate(axes) if a.type == "space"]
    target = [64, 256, 256] if len(spatial) == 3 else [512, 512]
    if len(spatial) == 3:
        plane = int(shape[spatial[1]]) * int(shape[spatial[2]]) * max(1, itemsize)
        depth = max(1, _SLAB_BUDGET // max(plane, 1))
        target[0] = max(1, min(64, 2 ** int(math.log2(depth))))
    out = [1] * len(shape)
    for i, t in zip(spatial, target, strict=True):
        out[i] = min(int(shape[i]), t)
    return tuple(max(1, c) for c in out)


def _full_vector(
    values: Sequence[float] | None, axes: Sequence[Axis], default: float, what: str
) -> tuple[float, ...]:
    spatial = [i for i, a in enumerate(axes) if a.type == "space"]
    out = [default] * len(axes)
    if values is None:
        return tuple(out)
    values = [float(v) for v in values]
    if len(values) == len(axes):
        return tuple(values)
    if len(values) == len(spatial):
        for i, v in zip(spatial, values, strict=True):
            out[i] = v
        return tuple(out)
    raise ValueError(
        f"{what} has {len(values)} values; give one per axis ({len(axes)}) "
        f"or one per spatial axis ({len(spatial)})"
    )


@contextmanager
def staged_store(dest: Path, overwrite: bool) -> Iterator[Path]:
    """:func:`~napari_rat.atomic_files.atomic_path` for an OME-Zarr folder (its parent must
    exist), with its refusals as :class:`OmeZarrError` naming the fix."""
    try:
        with atomic_path(dest, overwrite=overwrite, make_parents=False) as built:
            yield built
    except DestinationExistsError:
        raise OmeZarrError(str(dest), "already exists", _OVERWRITE_HINT) from None
    except StagingError as exc:
        parent = dest.parent
        if exc.errno == errno.ENOENT:
            raise OmeZarrError(
                str(dest), f"the folder {parent} does not exist", "create it first"
            ) from None
        if exc.errno in _READ_ONLY_ERRNOS:
            raise OmeZarrError(
                str(dest),
                f"cannot write here: {parent} is read-only ({os.strerror(exc.errno)})",
                "choose a writable folder, or copy the image somewhere writable first",
            ) from None
        raise


def _slabs(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[slice, ...]]:
    """Chunk-aligned regions covering whole planes: the grid of the leading ``ndim - 2`` axes
    (``ndim - 1`` in 2D), so a slab is one chunk deep and every chunk is written once."""
    lead = max(1, len(shape) - 2)
    ranges = [range(0, int(shape[a]), int(chunks[a])) for a in range(lead)]
    out = []
    for starts in itertools.product(*ranges):
        sel = tuple(slice(s, min(s + int(chunks[a]), int(shape[a]))) for a, s in enumerate(starts))
        out.append(sel + (slice(None),) * (len(shape) - lead))
    return out


def contrast_windows(
    level: da.Array, c_axis: int | None
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Per channel, a display window (``WINDOW_PERCENTILES`` of ``level``'s values) and the
    range it may move in (the type's range for integers, the values' range for floats).

    ``level`` is a coarse level: it is read whole unless a channel has more than
    ``_WINDOW_SAMPLE`` elements; then a few evenly spaced planes, each strided, are read (so a
    single-level image of any size costs a bounded read).
    """
    n_channels = level.shape[c_axis] if c_axis is not None else 1
    others = [a for a in range(level.ndim) if a != c_axis]
    plane, lead = others[-2:], others[:-2]
    sample = level
    if level.size / n_channels > _WINDOW_SAMPLE:
        per_axis = max(1, int(_WINDOW_PLANES ** (1 / max(len(lead), 1))))
        n_planes = 1
        for a in lead:
            picks = np.unique(np.linspace(0, level.shape[a] - 1, per_axis).round().astype(int))
            sample = sample[(slice(None),) * a + (picks,)]
            n_planes *= picks.size
        plane_size = math.prod(level.shape[a] for a in plane)
        step = max(1, math.ceil(math.sqrt(plane_size * n_planes / _WINDOW_SAMPLE)))
        strided = tuple(
            slice(None, None, step) if a in plane else slice(None) for a in range(level.ndim)
        )
        sample = sample[strided]
    sample = np.asarray(sample)
    if c_axis is not None:
        sample = np.moveaxis(sample, c_axis, 0)
    else:
        sample = sample[np.newaxis]
    integer = np.issubdtype(sample.dtype, np.integer)
    out = []
    for c in range(n_channels):
        values = sample[c].ravel().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            values = np.zeros(1)
        lo, hi = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
        if integer:
            info = np.iinfo(sample.dtype)
            limits = (float(info.min), float(info.max))
        else:
            limits = (float(values.min()), float(values.max()))
        out.append(((lo, hi), limits))
    return out


def store_lazily(
    src: da.Array, target: Any, progress: ProgressCallback | None = None, message: str = ""
) -> None:
    """Compute ``src`` into the zarr array ``target``, one chunk-deep slab at a time.

    Slabs go one after the other (dask threads work inside a slab), so memory is bounded by a
    slab and its inputs, whatever the image size and however ``src`` is chunked.
    """
    import dask
    import dask.array as da

    chunks = target.chunks
    slabs = _slabs(target.shape, chunks)
    last = 0.0
    for i, sel in enumerate(slabs):
        part = src[sel]
        part = part.rechunk(tuple(min(c, n) for c, n in zip(chunks, part.shape, strict=True)))
        with dask.config.set(scheduler="threads"):
            da.store(part, target, regions=sel, lock=False)
        now = time.monotonic()
        if progress is not None and (now - last > 0.2 or i == len(slabs) - 1):
            last = now
            progress((i + 1) / len(slabs), message)


def write_image(
    dest: str | os.PathLike[str],
    data: np.ndarray | da.Array,
    *,
    axes: str | Sequence[str | Axis] = "zyx",
    scale: Sequence[float] | None = None,
    translation: Sequence[float] | None = None,
    units: str | Sequence[str | None] | None = "micrometer",
    levels: int | None = None,
    ngff_version: str = "0.5",
    chunks: Sequence[int] | None = None,
    name: str | None = None,
    channels: Sequence[Channel] | None = None,
    method: str = "mean",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write an array as a new multiscale OME-Zarr image.

    Parameters
    ----------
    dest
        Local path of the new ``.zarr`` folder.
    data
        NumPy or dask array; a dask array is computed chunk by chunk (memory bounded by chunks).
    axes
        Axis names (``"zyx"``, ``"czyx"``, ``"yx"``...) or :class:`Axis` objects.
    scale, translation
        Level-0 voxel size and position of voxel 0, per axis or per spatial axis.
    units
        Unit of the spatial axes (one, or one per spatial axis).
    levels
        Number of levels; by default until the largest spatial axis is <= 64 voxels.
    ngff_version
        ``"0.4"`` (zarr v2) or ``"0.5"`` (zarr v3).
    chunks
        Chunk shape; a few MB by default.
    name
        Multiscale name.
    channels
        Channel names, colours and windows (``omero``), one per channel. Channels without a
        window (and images without ``channels``) get the ``WINDOW_PERCENTILES`` of the
        coarsest level, so viewers open them with a usable contrast.
    method
        ``"mean"`` for intensity images, ``"nearest"`` for labels and predictions of classes.
    overwrite
        Replace an existing ``dest``.
    progress
        ``progress(fraction, message)`` callback.

    Returns
    -------
    Path
        ``dest``.
    """
    import dask.array as da
    import zarr
    from zarr.storage import LocalStore

    fmt = format_for(ngff_version)
    if method not in ("mean", "nearest"):
        raise ValueError(f"method must be 'mean' or 'nearest', not {method!r}")
    if is_remote(str(dest)):
        raise OmeZarrError(str(dest), "writing to remote stores is not supported", "write locally")
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and not overwrite:
        raise OmeZarrError(str(dest), "already exists", _OVERWRITE_HINT)
    ax = make_axes(axes, units)
    if len(ax) != data.ndim:
        raise ValueError(f"data has {data.ndim} dimensions but {len(ax)} axes were given")
    spatial = [i for i, a in enumerate(ax) if a.type == "space"]
    s0 = _full_vector(scale, ax, 1.0, "scale")
    t0 = _full_vector(translation, ax, 0.0, "translation")
    chunks = tuple(
        int(c) for c in (chunks or default_chunks(data.shape, ax, np.dtype(data.dtype).itemsize))
    )
    if len(chunks) != data.ndim:
        raise ValueError(f"chunks has {len(chunks)} values for {data.ndim} dimensions")
    chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, data.shape, strict=True))
    factors = plan_factors(data.shape, s0, spatial, levels)
    transforms = [level_transform(s0, t0, f, method) for f in factors]
    multiscale = fmt.multiscale(
        ax, [t[0] for t in transforms], [t[1] for t in transforms], name=name
    )
    c_axis = next((i for i, a in enumerate(ax) if a.type == "channel"), None)
    n_channels = data.shape[c_axis] if c_axis is not None else 1
    if channels and len(channels) != n_channels:
        raise ValueError(f"got {len(channels)} channels for {n_channels} in the data")
    base = name or dest.name
    default_names = [base] if c_axis is None else [f"{base} c{c}" for c in range(n_channels)]
    given = list(channels) if channels else [Channel(n) for n in default_names]
    # Validated now, before the pixels are written; the windows still missing come after.
    attrs = fmt.image_attributes(multiscale, omero=fmt.omero(given))
    with staged_store(dest, overwrite) as staging:
        group = zarr.open_group(
            LocalStore(staging), mode="w", zarr_format=fmt.zarr_format, attributes=attrs
        )
        src = data if isinstance(data, da.Array) else da.from_array(data, chunks=chunks)
        arrays = []
        for i, f in enumerate(factors):
            shape = level_shape(data.shape, f)
            arrays.append(
                group.create_array(
                    str(i),
                    shape=shape,
                    dtype=data.dtype,
                    chunks=tuple(min(c, n) for c, n in zip(chunks, shape, strict=True)),
                    fill_value=0,
                    **fmt.array_options(ax),
                )
            )
        n = len(factors)
        store_lazily(src.rechunk(arrays[0].chunks), arrays[0], progress, f"level 1/{n}")
        for i in range(1, n):
            step = [b // a for a, b in zip(factors[i - 1], factors[i], strict=True)]
            # Read back the level just written: each level costs one pass over the previous.
            prev = da.from_zarr(arrays[i - 1])
            down = downsample(prev, step, arrays[i].chunks, method)
            store_lazily(down, arrays[i], progress, f"level {i + 1}/{n}")
        # The contrast window comes from the coarsest level, now cheap to read.
        windows = contrast_windows(da.from_zarr(arrays[-1]), c_axis)
        filled = []
        for ch, (window, limits) in zip(given, windows, strict=True):
            ch = ch if ch.window else replace(ch, window=window)
            if ch.limits is None:
                lo, hi = ch.window
                ch = replace(ch, limits=(min(lo, limits[0]), max(hi, limits[1])))
            filled.append(ch)
        attrs = fmt.image_attributes(multiscale, omero=fmt.omero(filled))
        group.update_attributes(attrs)
    return dest
