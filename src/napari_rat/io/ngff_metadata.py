"""OME-NGFF metadata (0.4 and 0.5): parsed and built through ``ome-zarr-models``.

Reading turns the group attributes into plain dataclasses (:class:`ImageMetadata`); writing
builds the attribute dictionaries and validates them with the same models before anything is
written, so what this package writes is valid by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from napari_rat.io.errors import OmeZarrError
from napari_rat.io.pyramid import Axis, Channel, LabelProperties

SUPPORTED_VERSIONS = ("0.4", "0.5")
ZARR_FORMAT = {"0.4": 2, "0.5": 3}


@dataclass(frozen=True)
class DatasetMetadata:
    """One level: its array path and composed (dataset then multiscale) scale and translation."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class ImageMetadata:
    """What the group attributes of an OME-Zarr image (or label image) say."""

    version: str
    axes: tuple[Axis, ...]
    datasets: tuple[DatasetMetadata, ...]
    name: str | None = None
    channels: tuple[Channel, ...] = ()
    image_label: LabelProperties | None = None


def _format_validation_error(exc: pydantic.ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def detect_version(attrs: Mapping[str, Any], uri: str, zarr_format: int) -> str:
    """The NGFF version of an image group, or a clear :class:`OmeZarrError`.

    Parameters
    ----------
    attrs
        The zarr group's attributes.
    uri
        Path or URL, for messages.
    zarr_format
        2 or 3: the zarr format the group was found in.
    """
    if "ome" in attrs and isinstance(attrs["ome"], Mapping):
        ome = attrs["ome"]
        version = str(ome.get("version"))
        body: Mapping[str, Any] = ome
    else:
        body = attrs
        version = None  # type: ignore[assignment]
    if "multiscales" not in body:
        hint = "open an OME-Zarr image group (one with 'multiscales' in its attributes)"
        if "bioformats2raw.layout" in body:
            hint = f"this is a bioformats2raw container: open one of its images, e.g. {uri}/0"
        elif "plate" in body or "well" in body:
            hint = "this is an HCS plate/well: open one of its field images, e.g. <well>/0"
        elif "labels" in body:
            hint = "this is a 'labels' group: open one of the label images in it"
        raise OmeZarrError(uri, "zarr group without 'multiscales': not an OME-Zarr image", hint)
    multiscales = body["multiscales"]
    if not isinstance(multiscales, list) or not multiscales:
        raise OmeZarrError(uri, "'multiscales' must be a non-empty list", "rewrite the metadata")
    if version is None:
        first = multiscales[0] if isinstance(multiscales[0], Mapping) else {}
        raw = first.get("version")
        # 0.4 made the version optional; a zarr v2 group without one is read as 0.4.
        version = str(raw) if raw is not None else ("0.4" if zarr_format == 2 else "unknown")
    if version not in SUPPORTED_VERSIONS:
        raise OmeZarrError(
            uri,
            f"unknown OME-NGFF version {version!r} (supported: {', '.join(SUPPORTED_VERSIONS)})",
            "convert it to 0.4 or 0.5, e.g. with ome2024-ngff-challenge or bioformats2raw",
        )
    if ZARR_FORMAT[version] != zarr_format:
        raise OmeZarrError(
            uri,
            f"OME-NGFF {version} must be stored as zarr v{ZARR_FORMAT[version]}, "
            f"found zarr v{zarr_format}",
            "rewrite it with napari-rat convert",
        )
    return version


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
    version = detect_version(attrs, uri, zarr_format)
    body = attrs["ome"] if version == "0.5" else attrs
    try:
        if version == "0.4":
            from ome_zarr_models.v04.image import ImageAttrs
        else:
            from ome_zarr_models.v05.image import ImageAttrs
        parsed = ImageAttrs.model_validate(dict(body))
        if label and "image-label" in body:
            if version == "0.4":
                from ome_zarr_models.v04.image_label_types import Label
            else:
                from ome_zarr_models.v05.image_label_types import Label
            Label.model_validate(body["image-label"])
    except pydantic.ValidationError as exc:
        raise OmeZarrError(
            uri,
            f"invalid OME-NGFF {version} metadata: {_format_validation_error(exc)}",
            "fix the group attributes or rewrite the image with napari-rat convert",
        ) from None
    multiscale = parsed.multiscales[0]
    axes = tuple(
        Axis(name=str(a.name), type=a.type, unit=str(a.unit) if a.unit is not None else None)
        for a in multiscale.axes
    )
    return ImageMetadata(
        version=version,
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


# --- building ---------------------------------------------------------------------------------


def build_multiscale(
    version: str,
    axes: Sequence[Axis],
    scales: Sequence[Sequence[float]],
    translations: Sequence[Sequence[float]],
    paths: Sequence[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One validated ``multiscales`` entry.

    Parameters
    ----------
    version
        ``"0.4"`` or ``"0.5"``.
    axes
        Axes with names, types and units.
    scales, translations
        Per level, one value per axis (world = index * scale + translation).
    paths
        Array paths of the levels (``"0"``, ``"1"``, ... by default).
    name
        Optional multiscale name.
    """
    if version == "0.4":
        from ome_zarr_models.v04.axes import Axis as ModelAxis
        from ome_zarr_models.v04.multiscales import Dataset, Multiscale
    elif version == "0.5":
        from ome_zarr_models.v05.axes import Axis as ModelAxis
        from ome_zarr_models.v05.multiscales import Dataset, Multiscale
    else:
        raise ValueError(f"unsupported OME-NGFF version {version!r}; use 0.4 or 0.5")
    paths = list(paths) if paths is not None else [str(i) for i in range(len(scales))]
    kwargs: dict[str, Any] = {"version": "0.4"} if version == "0.4" else {}
    ms = Multiscale(
        axes=tuple(
            ModelAxis(name=a.name, type=a.type, **({"unit": a.unit} if a.unit is not None else {}))
            for a in axes
        ),
        datasets=tuple(
            Dataset.build(path=p, scale=[float(v) for v in s], translation=[float(v) for v in t])
            for p, s, t in zip(paths, scales, translations, strict=True)
        ),
        name=name,
        **kwargs,
    )
    return ms.model_dump(mode="json", by_alias=True, exclude_none=True)


def build_omero(channels: Sequence[Channel], version: str) -> dict[str, Any]:
    """``omero`` metadata for the channels (names, colours, windows)."""
    out = []
    for ch in channels:
        lo, hi = ch.limits or ch.window or (0.0, 1.0)
        start, end = ch.window or (lo, hi)
        out.append(
            {
                "label": ch.name,
                "color": (ch.color or "FFFFFF").upper(),
                "active": ch.visible,
                "window": {"min": lo, "max": hi, "start": start, "end": end},
            }
        )
    omero: dict[str, Any] = {"channels": out}
    if version == "0.4":
        omero["version"] = "0.4"
    return omero


def image_attributes(
    version: str,
    multiscale: Mapping[str, Any],
    omero: Mapping[str, Any] | None = None,
    image_label: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Zarr group attributes of an image (or, with ``image_label``, a label image), validated."""
    body: dict[str, Any] = {"multiscales": [dict(multiscale)]}
    if omero is not None:
        body["omero"] = dict(omero)
    if image_label is not None:
        body["image-label"] = dict(image_label)
    if version == "0.4":
        from ome_zarr_models.v04.image import ImageAttrs

        ImageAttrs.model_validate(body)
        if image_label is not None:
            from ome_zarr_models.v04.image_label import ImageLabelAttrs

            ImageLabelAttrs.model_validate(body)
        return body
    from ome_zarr_models.v05.image import ImageAttrs as ImageAttrs5

    ome = {"version": "0.5", **body}
    ImageAttrs5.model_validate(ome)
    if image_label is not None:
        from ome_zarr_models.v05.image_label import ImageLabelAttrs as ImageLabelAttrs5

        ImageLabelAttrs5.model_validate(ome)
    return {"ome": ome}


def image_label_metadata(
    version: str,
    colors: Mapping[int, Sequence[int]] | None = None,
    source: str | None = "../../",
) -> dict[str, Any]:
    """The ``image-label`` entry: colours by label value and the relative source image path."""
    body: dict[str, Any] = {}
    if version == "0.4":
        body["version"] = "0.4"
    if colors:
        body["colors"] = [
            {"label-value": int(v), "rgba": [int(c) for c in rgba]}
            for v, rgba in sorted(colors.items())
        ]
    if source is not None:
        body["source"] = {"image": source}
    return body


def labels_group_attributes(version: str, names: Sequence[str]) -> dict[str, Any]:
    """Attributes of the ``labels`` group listing the label images, validated."""
    if version == "0.4":
        from ome_zarr_models.v04.labels import LabelsAttrs

        attrs: dict[str, Any] = {"labels": list(names)}
        LabelsAttrs.model_validate(attrs)
        return attrs
    from ome_zarr_models.v05.labels import LabelsAttrs as LabelsAttrs5

    ome = {"version": "0.5", "labels": list(names)}
    LabelsAttrs5.model_validate(ome)
    return {"ome": ome}
