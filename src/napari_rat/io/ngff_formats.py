"""OME-NGFF versions as classes: everything that differs between the versions we read and
write, in one place per version (after ``ome_zarr.format``).

A version is chosen once, by :func:`format_for` (a version string, e.g. ``write_image``'s
``ngff_version``) or :func:`detect_format` (a group's attributes, when reading); the rest of
:mod:`napari_rat.io` asks the :class:`NgffFormat` it got instead of comparing version strings.

======================  ==============================  ==================================
                        :class:`FormatV04`              :class:`FormatV05`
======================  ==============================  ==================================
zarr format             2                               3
attributes file         ``.zattrs`` (the attributes)    ``zarr.json`` (``attributes``)
OME metadata            the group attributes            ``attributes["ome"]``
``version`` field       in ``multiscales``, ``omero``,  ``ome.version`` only
                        ``image-label``
array axis names        (none)                          ``dimension_names``
validation models       ``ome_zarr_models.v04``         ``ome_zarr_models.v05``
======================  ==============================  ==================================
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pydantic

from napari_rat.io.errors import OmeZarrError
from napari_rat.io.pyramid import Axis, Channel

__all__ = [
    "SUPPORTED_VERSIONS",
    "FormatV04",
    "FormatV05",
    "NgffFormat",
    "detect_format",
    "format_for",
]


def format_validation_error(exc: pydantic.ValidationError, limit: int = 3) -> str:
    """The first ``limit`` problems of a validation error, each as ``field: message``."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class NgffFormat:
    """One OME-NGFF version: where its metadata lives, how it is built and validated.

    Subclasses set the class attributes; the methods are shared and read them.
    """

    #: The spec version, as written in the metadata.
    version: ClassVar[str]
    #: The zarr format the spec requires.
    zarr_format: ClassVar[int]
    #: The file holding a group's attributes.
    attributes_file: ClassVar[str]
    #: The ``ome-zarr-models`` package of this version.
    models_package: ClassVar[str]
    #: Fields that name the version inside ``multiscales``, ``omero`` and ``image-label``.
    inner_version: ClassVar[Mapping[str, str]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    # --- where the metadata lives ---------------------------------------------------------

    def ome_body(self, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        """The OME metadata (``multiscales``, ``omero``, ``labels``...) in group attributes."""
        raise NotImplementedError

    def wrap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Group attributes holding the OME metadata ``body``."""
        raise NotImplementedError

    def attributes_in(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """The group attributes in the JSON of :attr:`attributes_file`."""
        raise NotImplementedError

    def document_with(
        self, document: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The JSON of :attr:`attributes_file` with the group attributes ``attributes``."""
        raise NotImplementedError

    def array_options(self, axes: Sequence[Axis]) -> dict[str, Any]:
        """Extra ``create_array`` arguments for an array with these axes."""
        return {}

    # --- validation models ----------------------------------------------------------------

    def model(self, module: str, name: str) -> Any:
        """The ``ome-zarr-models`` class ``name`` in this version's ``module`` (``"image"``,
        ``"image_label"``, ``"labels"``...), imported when first asked for."""
        return getattr(importlib.import_module(f"{self.models_package}.{module}"), name)

    def validate_image_attrs(self, attrs: Mapping[str, Any], uri: str, label: bool) -> Any:
        """Validate image (with ``label``, also ``image-label``) attributes; the parsed
        ``ImageAttrs``, or an :class:`OmeZarrError` naming the field."""
        body = self.ome_body(attrs)
        try:
            parsed = self.model("image", "ImageAttrs").model_validate(dict(body))
            if label and "image-label" in body:
                self.model("image_label_types", "Label").model_validate(body["image-label"])
        except pydantic.ValidationError as exc:
            raise OmeZarrError(
                uri,
                f"invalid OME-NGFF {self.version} metadata: {format_validation_error(exc)}",
                "fix the group attributes or rewrite the image with napari-rat convert",
            ) from None
        return parsed

    def group_model(self, label: bool) -> Any:
        """The ``ome-zarr-models`` class validating a whole image (or label image) group."""
        return self.model("image_label", "ImageLabel") if label else self.model("image", "Image")

    # --- building -------------------------------------------------------------------------

    def multiscale(
        self,
        axes: Sequence[Axis],
        scales: Sequence[Sequence[float]],
        translations: Sequence[Sequence[float]],
        paths: Sequence[str] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """One validated ``multiscales`` entry.

        Parameters
        ----------
        axes
            Axes with names, types and units.
        scales, translations
            Per level, one value per axis (world = index * scale + translation).
        paths
            Array paths of the levels (``"0"``, ``"1"``, ... by default).
        name
            Optional multiscale name.
        """
        model_axis = self.model("axes", "Axis")
        dataset = self.model("multiscales", "Dataset")
        paths = list(paths) if paths is not None else [str(i) for i in range(len(scales))]
        ms = self.model("multiscales", "Multiscale")(
            axes=tuple(
                model_axis(
                    name=a.name, type=a.type, **({"unit": a.unit} if a.unit is not None else {})
                )
                for a in axes
            ),
            datasets=tuple(
                dataset.build(
                    path=p, scale=[float(v) for v in s], translation=[float(v) for v in t]
                )
                for p, s, t in zip(paths, scales, translations, strict=True)
            ),
            name=name,
            **self.inner_version,
        )
        return ms.model_dump(mode="json", by_alias=True, exclude_none=True)

    def omero(self, channels: Sequence[Channel]) -> dict[str, Any]:
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
        return {"channels": out, **self.inner_version}

    def image_label(
        self, colors: Mapping[int, Sequence[int]] | None = None, source: str | None = "../../"
    ) -> dict[str, Any]:
        """The ``image-label`` entry: colours by label value and the relative source path."""
        body: dict[str, Any] = dict(self.inner_version)
        if colors:
            body["colors"] = [
                {"label-value": int(v), "rgba": [int(c) for c in rgba]}
                for v, rgba in sorted(colors.items())
            ]
        if source is not None:
            body["source"] = {"image": source}
        return body

    def image_attributes(
        self,
        multiscale: Mapping[str, Any],
        omero: Mapping[str, Any] | None = None,
        image_label: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Group attributes of an image (with ``image_label``, a label image), validated."""
        body: dict[str, Any] = {"multiscales": [dict(multiscale)]}
        if omero is not None:
            body["omero"] = dict(omero)
        if image_label is not None:
            body["image-label"] = dict(image_label)
        attrs = self.wrap(body)
        ome = self.ome_body(attrs)
        self.model("image", "ImageAttrs").model_validate(ome)
        if image_label is not None:
            self.model("image_label", "ImageLabelAttrs").model_validate(ome)
        return attrs

    def labels_attributes(self, names: Sequence[str]) -> dict[str, Any]:
        """Attributes of the ``labels`` group listing the label images, validated."""
        attrs = self.wrap({"labels": list(names)})
        self.model("labels", "LabelsAttrs").model_validate(self.ome_body(attrs))
        return attrs


class FormatV04(NgffFormat):
    """OME-NGFF 0.4: zarr v2, the OME metadata is the group attributes (``.zattrs``), and
    ``multiscales``, ``omero`` and ``image-label`` each say their version."""

    version = "0.4"
    zarr_format = 2
    attributes_file = ".zattrs"
    models_package = "ome_zarr_models.v04"
    inner_version = {"version": "0.4"}

    def ome_body(self, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        return attrs

    def wrap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(body)

    def attributes_in(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return dict(document)

    def document_with(
        self, document: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> dict[str, Any]:
        return dict(attributes)


class FormatV05(NgffFormat):
    """OME-NGFF 0.5: zarr v3, the OME metadata under ``attributes["ome"]`` in ``zarr.json``
    with the version there only, and arrays naming their axes (``dimension_names``)."""

    version = "0.5"
    zarr_format = 3
    attributes_file = "zarr.json"
    models_package = "ome_zarr_models.v05"
    inner_version: ClassVar[Mapping[str, str]] = {}

    def ome_body(self, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        return attrs["ome"]

    def wrap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"ome": {"version": self.version, **body}}

    def attributes_in(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return dict(document.get("attributes", {}))

    def document_with(
        self, document: Mapping[str, Any], attributes: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            "zarr_format": self.zarr_format,
            "node_type": "group",
            **document,
            "attributes": dict(attributes),
        }

    def array_options(self, axes: Sequence[Axis]) -> dict[str, Any]:
        return {"dimension_names": [a.name for a in axes]}


#: Every format we read and write, by version.
FORMATS: dict[str, NgffFormat] = {f.version: f for f in (FormatV04(), FormatV05())}
SUPPORTED_VERSIONS = tuple(FORMATS)


def format_for(version: str | NgffFormat) -> NgffFormat:
    """The format of ``version`` (``"0.4"``, ``"0.5"``; a format is returned as is).

    Raises
    ------
    ValueError
        For a version we do not support; the message lists the supported ones.
    """
    if isinstance(version, NgffFormat):
        return version
    try:
        return FORMATS[str(version)]
    except KeyError:
        raise ValueError(
            f"unsupported OME-NGFF version {version!r}: use one of {', '.join(SUPPORTED_VERSIONS)}"
        ) from None


def detect_format(attrs: Mapping[str, Any], uri: str, zarr_format: int) -> NgffFormat:
    """The format of an image group from its attributes, or a clear :class:`OmeZarrError`.

    Parameters
    ----------
    attrs
        The zarr group's attributes.
    uri
        Path or URL, for messages.
    zarr_format
        2 or 3: the zarr format the group was found in.
    """
    # Since 0.5 the version sits beside the metadata in "ome"; before, in each multiscale.
    ome = attrs.get("ome")
    body: Mapping[str, Any] = ome if isinstance(ome, Mapping) else attrs
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
    if body is ome:
        version = str(ome.get("version"))
    else:
        first = multiscales[0] if isinstance(multiscales[0], Mapping) else {}
        raw = first.get("version")
        # 0.4 made the version optional; a zarr v2 group without one is read as 0.4.
        version = str(raw) if raw is not None else ("0.4" if zarr_format == 2 else "unknown")
    fmt = FORMATS.get(version)
    if fmt is None:
        raise OmeZarrError(
            uri,
            f"unknown OME-NGFF version {version!r} (supported: {', '.join(SUPPORTED_VERSIONS)})",
            f"convert it to {' or '.join(SUPPORTED_VERSIONS)}, e.g. with ome2024-ngff-challenge "
            "or bioformats2raw",
        )
    if fmt.zarr_format != zarr_format:
        raise OmeZarrError(
            uri,
            f"OME-NGFF {version} must be stored as zarr v{fmt.zarr_format}, "
            f"found zarr v{zarr_format}",
            "rewrite it with napari-rat convert",
        )
    return fmt
