"""Read an OME-Zarr image (0.4 or 0.5) into a lazy :class:`~napari_rat.io.pyramid.Pyramid`.

Only metadata is read: group attributes and each level's array metadata. Pixels stay in dask
arrays over zarr, read when computed.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_rat.io.errors import OmeZarrError, OmeZarrWarning, RemoteAccessError
from napari_rat.io.ngff_formats import NgffFormat
from napari_rat.io.ngff_metadata import parse_image_attrs, parse_labels_attrs
from napari_rat.io.pyramid import Pyramid, PyramidLevel
from napari_rat.io.zarr_stores import DEFAULT_TIMEOUT, describe_remote_error, is_remote, open_store

__all__ = ["open_pyramid"]


def _remote_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [TimeoutError, asyncio.TimeoutError, ConnectionError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp is a runtime dependency
        pass
    return tuple(errors)


def _guard(uri: str, remote: bool, timeout: float, call: Callable[[], Any]) -> Any:
    """Run ``call``, turning network failures into :class:`RemoteAccessError`."""
    if not remote:
        return call()
    try:
        return call()
    except OmeZarrError:
        raise
    except _remote_errors() as exc:
        raise describe_remote_error(uri, exc, timeout) from None


def _open_group(
    store: Any, uri: str, path: str, remote: bool, timeout: float, zarr_format: int | None
) -> Any:
    import zarr
    import zarr.errors

    where = f"{uri}/{path}" if path else uri
    try:
        return _guard(
            where,
            remote,
            timeout,
            lambda: zarr.open_group(
                store, path=path or None, mode="r", use_consolidated=False, zarr_format=zarr_format
            ),
        )
    except OmeZarrError:
        raise
    except zarr.errors.ContainsArrayError:
        raise OmeZarrError(
            where, "this is a zarr array, not an OME-Zarr image group", "open its parent group"
        ) from None
    except FileNotFoundError:
        what = "HTTP 404 / no zarr.json, .zgroup or .zattrs" if remote else "no zarr metadata"
        raise OmeZarrError(
            where,
            f"not a zarr group ({what} found)",
            "give the path of an OME-Zarr image (the folder holding zarr.json or .zattrs)",
        ) from None
    except (zarr.errors.MetadataValidationError, ValueError) as exc:
        raise OmeZarrError(where, f"unreadable zarr metadata: {exc}") from None


def _dask_level(array: Any, name: str) -> Any:
    import dask.array as da
    from dask.base import tokenize

    chunks = getattr(array, "shards", None) or array.chunks
    # An explicit ``meta`` keeps dask from indexing the array to find its type.
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    token = tokenize(name, array.shape, str(array.dtype), chunks)
    return da.from_array(
        array,
        chunks=chunks,
        meta=meta,
        name=f"ome-zarr-{token}",
        asarray=False,
        fancy=False,
        inline_array=True,
    )


def _read_group(
    store: Any,
    uri: str,
    path: str,
    *,
    remote: bool,
    timeout: float,
    label: bool,
    validate: bool,
    zarr_format: int | None = None,
    lenient: bool = False,
) -> Pyramid:
    import zarr

    where = f"{uri}/{path}" if path else uri
    group = _open_group(store, uri, path, remote, timeout, zarr_format)
    zarr_format = group.metadata.zarr_format
    attrs = _guard(where, remote, timeout, lambda: group.attrs.asdict())
    meta = parse_image_attrs(attrs, where, zarr_format, label=label)

    levels = []
    for i, ds in enumerate(meta.datasets):
        try:
            node = _guard(where, remote, timeout, lambda p=ds.path: group[p])
        except KeyError:
            raise OmeZarrError(
                where,
                f"level {i} is missing: no array at {ds.path!r} listed in 'multiscales'",
                "remove it from the metadata or rewrite the image",
            ) from None
        if not isinstance(node, zarr.Array):
            raise OmeZarrError(where, f"level {i} at {ds.path!r} is a group, not an array")
        if node.ndim != len(meta.axes):
            raise OmeZarrError(
                where,
                f"level {i} at {ds.path!r} has {node.ndim} dimensions but 'multiscales' "
                f"declares {len(meta.axes)} axes ({', '.join(a.name for a in meta.axes)})",
                "fix the axes or rewrite the image",
            )
        if label and not np.issubdtype(node.dtype, np.integer):
            raise OmeZarrError(
                where,
                f"label image holds {node.dtype} values; label images must be integers",
                "rewrite it with napari_rat.io.write_labels (which requires integer labels)",
            )
        levels.append(
            PyramidLevel(
                path=ds.path,
                data=_dask_level(node, f"{where}/{ds.path}"),
                scale=ds.scale,
                translation=ds.translation,
            )
        )

    labels: dict[str, Pyramid] = {}
    if not label:
        names = _label_names(group, where, remote, timeout)
        for name in names:
            sub = f"{path}/labels/{name}" if path else f"labels/{name}"
            labels[name] = _read_group(
                store,
                uri,
                sub,
                remote=remote,
                timeout=timeout,
                label=True,
                validate=validate,
                zarr_format=zarr_format,
                lenient=True,
            )
    if validate:
        target = group
        if labels:
            # Label images were validated one by one above; the image is validated without
            # them (ome-zarr 0.18 writes 0.5 labels groups without ome.version, for one).
            from napari_rat.io.store_wrappers import SubtreeHidingStore

            hidden = SubtreeHidingStore(store, f"{path}/labels" if path else "labels")
            target = _open_group(hidden, uri, path, remote, timeout, zarr_format)
        try:
            _guard(
                where, remote, timeout, lambda: _validate_group(target, meta.format, where, label)
            )
        except OmeZarrError as exc:
            if not lenient or isinstance(exc, RemoteAccessError):
                raise
            # A label image that passed our structural checks (levels, dimensions, integer
            # type) stays readable; the spec violation is reported, not fatal.
            warnings.warn(f"{exc}; opened anyway", OmeZarrWarning, stacklevel=4)
    return Pyramid(
        uri=where,
        ngff_version=meta.version,
        axes=meta.axes,
        levels=tuple(levels),
        channels=meta.channels,
        labels=labels,
        name=meta.name,
        image_label=meta.image_label,
    )


def _label_names(group: Any, where: str, remote: bool, timeout: float) -> list[str]:
    import zarr

    try:
        node = _guard(where, remote, timeout, lambda: group["labels"])
    except KeyError:
        return []
    if not isinstance(node, zarr.Group):
        return []
    return parse_labels_attrs(node.attrs.asdict())


def _validate_group(group: Any, fmt: NgffFormat, where: str, label: bool) -> None:
    """Full validation with ``ome-zarr-models`` (arrays, labels, dtypes) on top of our checks."""
    import pydantic

    try:
        fmt.group_model(label).from_zarr(group)
    except (pydantic.ValidationError, ValueError, RuntimeError) as exc:
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, pydantic.ValidationError) and cause.errors():
            detail = "; ".join(str(e.get("msg")) for e in cause.errors()[:3])
        else:
            detail = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
        raise OmeZarrError(
            where,
            f"not a valid OME-NGFF {fmt.version} image ({type(exc).__name__}): {detail}",
            "fix the metadata or rewrite the image with napari-rat",
        ) from None


def open_pyramid(
    source: str | os.PathLike[str] | Any,
    *,
    storage_options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    validate: bool = True,
) -> Pyramid:
    """Open an OME-Zarr image lazily: metadata now, pixels when computed.

    Parameters
    ----------
    source
        Local path, ``http(s)://`` or ``s3://`` URL, or an open zarr store.
    storage_options
        fsspec options for remote URLs (e.g. ``{"anon": False}`` or an S3 ``endpoint_url``).
    timeout
        Seconds allowed per remote request.
    validate
        Also validate the whole group with ``ome-zarr-models`` (reads only metadata).

    Returns
    -------
    Pyramid
        Levels (finest first) as dask arrays with composed scales and translations, axes,
        channels from ``omero`` and the label images it carries.

    Raises
    ------
    OmeZarrError
        With a message naming the file and the fix; :class:`RemoteAccessError` (a subclass)
        when a remote store times out or answers with an HTTP error.
    """
    from zarr.abc.store import Store

    if isinstance(source, Store):
        store, uri, remote = source, str(getattr(source, "root", source)), False
    else:
        uri = str(source)
        remote = is_remote(uri)
        store = open_store(uri, storage_options=storage_options, timeout=timeout)
        uri = uri.rstrip("/") if remote else uri
    return _read_group(
        store, uri, "", remote=remote, timeout=timeout, label=False, validate=validate
    )
