"""OME-NGFF metadata (0.4 and 0.5) parsed into plain dataclasses (:class:`ImageMetadata`).

The group attributes are validated by their version's ``ome-zarr-models`` (chosen once, by
:func:`~napari_rat.io.ngff_formats.detect_format`) and read into the same dataclasses whatever
the version. Building metadata is the formats' job (:mod:`napari_rat.io.ngff_formats`), which
validate what they build with the same models, so what this package writes is valid by
construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from napari_rat.io.errors import OmeZarrError
from napari_rat.io.ngff_formats import NgffFormat, detect_format
from napari_rat.io.pyramid import Axis, Channel, LabelProperties


@dataclass(frozen=True)
class DatasetMetadata:
    """One level: its array path and composed (dataset then multiscale) scale and translation."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class ImageMetadata:
    """What the group attributes of an OME-Zarr image (or label image) say."""

    format: NgffFormat
    axes: tuple[Axis, ...]
    datasets: tuple[DatasetMetadata, ...]
    name: str | None = None
    channels: tuple[Channel, ...] = ()
    image_label: LabelProperties | None = None

    @property
    def version(self) -> str:
        """The OME-NGFF version (``"0.4"``, ``"0.5"``)."""
        return self.format.version


def _vector(transform: Any, kind: str, uri: str) -> tuple[float, ...]:
    values = getattr(transform, kind, None)
    if values is None:
        raise OmeZarrError(
            uri,
            f"{kind} transforms stored in a separate array ('path') are not supported",
            "write the transform values inline in the metadata",
        )
    return tuple(float(v) for v in values)


def _compose(multiscale: Any, uri: str) -> tuple[DatasetMetadata, ...]:
    ndim = len(multiscale.axes)
    g_scale, g_trans = (1.0,) * ndim, (0.0,) * ndim
    for tr in multiscale.coordinateTransformations or ():
        if tr.type == "scale":
            g_scale = _vector(tr, "scale", uri)
        elif tr.type == "translation":
            g_trans = _vector(tr, "translation", uri)
    out = []
    for ds in multiscale.datasets:
        scale, trans = (1.0,) * ndim, (0.0,) * ndim
        for tr in ds.coordinateTransformations:
            if tr.type == "scale":
                scale = _vector(tr, "scale", uri)
            elif tr.type == "translation":
                trans = _vector(tr, "translation", uri)
        # Per-dataset transforms apply first, then the multiscale-level ones.
        out.append(
            DatasetMetadata(
                path=ds.path,
                scale=tuple(s * gs for s, gs in zip(scale, g_scale, strict=True)),
                translation=tuple(
                    t * gs + gt for t, gs, gt in zip(trans, g_scale, g_trans, strict=True)
                ),
            )
        )
    return tuple(out)


def _channels(omero: Any) -> tuple[Channel, ...]:
    if not isinstance(omero, Mapping):
        return ()
    out = []
    for i, ch in enumerate(omero.get("channels") or []):
        if not isinstance(ch, Mapping):
            continue
        win = ch.get("window") if isinstance(ch.get("window"), Mapping) else {}
        window = limits = None
        if "start" in win and "end" in win:
            window = (float(win["start"]), float(win["end"]))
        if "min" in win and "max" in win:
            limits = (float(win["min"]), float(win["max"]))
        color = ch.get("color")
        out.append(
            Channel(
                name=str(ch.get("label") or f"channel {i}"),
                color=str(color).lstrip("#") if color else None,
                window=window,
                limits=limits,
                visible=bool(ch.get("active", True)),
            )
        )
    return tuple(out)


def _label_properties(raw: Any) -> LabelProperties | None:
    if not isinstance(raw, Mapping):
        return None
    colors = {}
    for c in raw.get("colors") or []:
        if isinstance(c, Mapping) and "label-value" in c and c.get("rgba") is not None:
            colors[int(c["label-value"])] = tuple(int(v) for v in c["rgba"])
    source = raw.get("source")
    src = source.get("image") if isinstance(source, Mapping) else None
    return LabelProperties(colors=colors, source=src)


def parse_image_attrs(
    attrs: Mapping[str, Any], uri: str, zarr_format: int, *, label: bool = False
) -> ImageMetadata:
    """Validate image (or, with ``label=True``, image-label) attributes and parse them.

    Raises
    ------
    OmeZarrError
        When the version is unknown or the metadata is invalid (the message names the field).
    """
    fmt = detect_format(attrs, uri, zarr_format)
    parsed = fmt.validate_image_attrs(attrs, uri, label)
    body = fmt.ome_body(attrs)
    multiscale = parsed.multiscales[0]
    axes = tuple(
        Axis(name=str(a.name), type=a.type, unit=str(a.unit) if a.unit is not None else None)
        for a in multiscale.axes
    )
    return ImageMetadata(
        format=fmt,
        axes=axes,
        datasets=_compose(multiscale, uri),
        name=str(multiscale.name) if multiscale.name is not None else None,
        channels=_channels(body.get("omero")),
        image_label=_label_properties(body.get("image-label")) if label else None,
    )


def parse_labels_attrs(attrs: Mapping[str, Any]) -> list[str]:
    """Names of the label images listed by a ``labels`` group (empty when none)."""
    body = attrs.get("ome", attrs) if isinstance(attrs.get("ome"), Mapping) else attrs
    names = body.get("labels")
    return [str(n) for n in names] if isinstance(names, list) else []
