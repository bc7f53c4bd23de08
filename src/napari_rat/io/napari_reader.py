"""napari reader contribution for OME-Zarr: one multiscale image layer per channel plus labels.

Layers carry ``scale``, ``translate``, ``units`` and ``axis_labels`` from the metadata, so level
0's voxel 0 lands at its world position (``layer.data_to_world``). napari is imported only
inside the functions that build colormaps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_rat.io.ome_zarr_reader import open_pyramid
from napari_rat.io.pyramid import Pyramid
from napari_rat.io.zarr_stores import is_remote

__all__ = ["get_reader", "pyramid_layer_data", "read_ome_zarr"]

LayerData = tuple[Any, dict[str, Any], str]

_NAMED_COLORS = {
    "FFFFFF": "gray",
    "FF0000": "red",
    "00FF00": "green",
    "0000FF": "blue",
    "FF00FF": "magenta",
    "00FFFF": "cyan",
    "FFFF00": "yellow",
}


def _looks_like_ome_zarr(path: Path) -> bool:
    for meta_file in ("zarr.json", ".zattrs"):
        f = path / meta_file
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs) if meta_file == "zarr.json" else attrs
            body = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
            return isinstance(body, dict) and "multiscales" in body
    return False


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader for an OME-Zarr image path or URL, ``None`` otherwise."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    text = os.fspath(path)
    if is_remote(text):
        return read_ome_zarr
    if _looks_like_ome_zarr(Path(text)):
        return read_ome_zarr
    return None


def read_ome_zarr(path: str | Sequence[str]) -> list[LayerData]:
    """Open an OME-Zarr image as napari layer data (images per channel, then labels)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return pyramid_layer_data(open_pyramid(os.fspath(path)))


def _colormap(color: str | None) -> Any:
    if not color:
        return "gray"
    hex6 = color.upper().lstrip("#")
    if hex6 in _NAMED_COLORS:
        return _NAMED_COLORS[hex6]
    from napari.utils.colormaps import Colormap

    rgb = [int(hex6[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    return Colormap(colors=[[0, 0, 0, 1], [*rgb, 1]], name=f"omero-{hex6}")


def _label_colormap(colors: dict[int, tuple[int, int, int, int]]) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, Any] = {v: [c / 255 for c in rgba] for v, rgba in colors.items()}
    color_dict[None] = [0, 0, 0, 0]
    color_dict.setdefault(0, [0, 0, 0, 0])
    return DirectLabelColormap(color_dict=color_dict)


def _placement(pyramid: Pyramid, drop: int | None) -> dict[str, Any]:
    keep = [i for i in range(pyramid.ndim) if i != drop]
    top = pyramid.levels[0]
    return {
        "scale": [top.scale[i] for i in keep],
        "translate": [top.translation[i] for i in keep],
        "units": [pyramid.axes[i].unit or "pixel" for i in keep],
        "axis_labels": [pyramid.axes[i].name for i in keep],
    }


def _levels(arrays: list[Any]) -> tuple[Any, bool]:
    return (arrays, True) if len(arrays) > 1 else (arrays[0], False)


def pyramid_layer_data(
    pyramid: Pyramid,
    channels: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
) -> list[LayerData]:
    """napari layer data for a pyramid: one multiscale image per channel, then its labels.

    Parameters
    ----------
    pyramid
        The image (already restricted to the wanted levels/region with ``Pyramid.select``).
    channels
        Indices of the channels to return; all when ``None``.
    labels
        Names of the label images to return; all when ``None``.
    """
    out: list[LayerData] = []
    c_axis = pyramid.channel_axis
    base_name = pyramid.name or Path(pyramid.uri.rstrip("/")).name
    meta = {
        "uri": pyramid.uri,
        "ngff_version": pyramid.ngff_version,
        "level_paths": [lv.path for lv in pyramid.levels],
    }
    placement = _placement(pyramid, c_axis)
    n_channels = pyramid.levels[0].shape[c_axis] if c_axis is not None else 1
    wanted = list(range(n_channels)) if channels is None else list(channels)
    for c in wanted:
        if c_axis is None:
            arrays = [lv.data for lv in pyramid.levels]
        else:
            sel = tuple(c if i == c_axis else slice(None) for i in range(pyramid.ndim))
            arrays = [lv.data[sel] for lv in pyramid.levels]
        info = pyramid.channels[c] if c < len(pyramid.channels) else None
        data, multiscale = _levels(arrays)
        default_name = f"{base_name} c{c}" if c_axis is not None else base_name
        kwargs: dict[str, Any] = {
            "name": info.name if info else default_name,
            "multiscale": multiscale,
            "metadata": {**meta, "channel": c},
            **placement,
        }
        if info is not None:
            kwargs["colormap"] = _colormap(info.color)
            kwargs["visible"] = info.visible
            if info.window and info.window[1] > info.window[0]:
                kwargs["contrast_limits"] = list(info.window)
        if len(wanted) > 1:
            kwargs["blending"] = "additive"
        out.append((data, kwargs, "image"))
    names = list(pyramid.labels) if labels is None else list(labels)
    for name in names:
        lab = pyramid.labels[name]
        data, multiscale = _levels([lv.data for lv in lab.levels])
        kwargs = {
            "name": name,
            "multiscale": multiscale,
            "metadata": {**meta, "uri": lab.uri, "label": name},
            **_placement(lab, None),
        }
        if lab.image_label is not None and lab.image_label.colors:
            kwargs["colormap"] = _label_colormap(dict(lab.image_label.colors))
        out.append((data, kwargs, "labels"))
    return out
