"""NGFF versions as format classes: chosen once, by version or from a group; each puts the
metadata where its spec says (checked on disk, and against ome-zarr-py's own formats)."""

from __future__ import annotations

import json

import ome_zarr.format
import pytest
import zarr
from ome_zarr_helpers import volume

from napari_rat.io import OmeZarrError, open_pyramid, write_image, write_labels
from napari_rat.io.ngff_formats import (
    SUPPORTED_VERSIONS,
    FormatV04,
    FormatV05,
    detect_format,
    format_for,
)

#: What the specs say, written out by hand (not read from our classes).
SPEC = {
    "0.4": {"cls": FormatV04, "zarr_format": 2, "file": ".zattrs", "nested": True},
    "0.5": {"cls": FormatV05, "zarr_format": 3, "file": "zarr.json", "nested": False},
}


def test_versions_we_support():
    assert SUPPORTED_VERSIONS == ("0.4", "0.5")
    for version, spec in SPEC.items():
        fmt = format_for(version)
        assert type(fmt) is spec["cls"] and fmt.version == version
        assert format_for(fmt) is fmt
        # ome-zarr-py, an independent implementation, agrees on the zarr format.
        assert fmt.zarr_format == ome_zarr.format.format_from_version(version).zarr_format


@pytest.mark.parametrize("version", ["0.3", "0.6", "", None])
def test_unknown_version_names_the_supported_ones(version):
    with pytest.raises(ValueError, match=r"unsupported OME-NGFF version .*use one of 0\.4, 0\.5"):
        format_for(version)


def test_write_image_refuses_an_unknown_version_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unsupported OME-NGFF version '0.3'"):
        write_image(tmp_path / "x.zarr", volume(), ngff_version="0.3")
    assert list(tmp_path.iterdir()) == []


def _attributes(group_dir, version):
    doc = json.loads((group_dir / SPEC[version]["file"]).read_text())
    return doc["attributes"] if version == "0.5" else doc


@pytest.mark.parametrize("version", SPEC)
def test_each_format_writes_where_its_spec_says(tmp_path, version):
    spec = SPEC[version]
    path = write_image(tmp_path / "img.zarr", volume(), levels=2, ngff_version=version)
    write_labels(path, volume() % 3, "cells")
    attrs = _attributes(path, version)
    ome = attrs if spec["nested"] else attrs["ome"]
    multiscale = ome["multiscales"][0]
    if spec["nested"]:
        assert "ome" not in attrs
        assert multiscale["version"] == ome["omero"]["version"] == version
    else:
        assert ome["version"] == version
        assert "version" not in multiscale and "version" not in ome["omero"]
    labels_group = _attributes(path / "labels", version)
    assert (labels_group if spec["nested"] else labels_group["ome"])["labels"] == ["cells"]
    label_attrs = _attributes(path / "labels" / "cells", version)
    label_ome = label_attrs if spec["nested"] else label_attrs["ome"]
    assert ("version" in label_ome["image-label"]) == spec["nested"]
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == spec["zarr_format"]
    names = getattr(group["0"].metadata, "dimension_names", None)
    assert names == (None if spec["nested"] else ("z", "y", "x"))
    # Detected from what was written, once per group, by the same class.
    assert type(detect_format(group.attrs.asdict(), str(path), spec["zarr_format"])) is spec["cls"]
    assert open_pyramid(path).ngff_version == version


@pytest.mark.parametrize("version", SPEC)
def test_a_second_label_image_extends_the_list_in_place(tmp_path, version):
    path = write_image(tmp_path / "img.zarr", volume(), levels=1, ngff_version=version)
    write_labels(path, volume() % 3, "cells")
    write_labels(path, volume() % 2, "nuclei")
    doc = json.loads((path / "labels" / SPEC[version]["file"]).read_text())
    if version == "0.5":
        assert doc["zarr_format"] == 3 and doc["node_type"] == "group"
    assert list(open_pyramid(path).labels) == ["cells", "nuclei"]


def test_format_mismatched_with_zarr_version_is_refused():
    attrs = {"ome": {"version": "0.5", "multiscales": [{}]}}
    with pytest.raises(OmeZarrError, match="0.5 must be stored as zarr v3, found zarr v2"):
        detect_format(attrs, "img.zarr", 2)


def test_unversioned_zarr_v2_group_is_0_4():
    assert type(detect_format({"multiscales": [{}]}, "img.zarr", 2)) is FormatV04
    with pytest.raises(OmeZarrError, match="unknown OME-NGFF version 'unknown'.*0.4, 0.5"):
        detect_format({"multiscales": [{}]}, "img.zarr", 3)
