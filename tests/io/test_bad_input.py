"""Bad input gives an OmeZarrError naming the file and the fix, and changes nothing on disk."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from ome_zarr_helpers import tree_digest, volume

from napari_rat.io import OmeZarrError, open_pyramid, write_image, write_labels


def _attrs_file(path, version):
    return path / ("zarr.json" if version == "0.5" else ".zattrs")


def _edit_attrs(path, version, edit):
    f = _attrs_file(path, version)
    doc = json.loads(f.read_text())
    attrs = doc["attributes"] if version == "0.5" else doc
    edit(attrs["ome"] if version == "0.5" else attrs)
    f.write_text(json.dumps(doc))


def _unchanged_after(path, call, match):
    before = tree_digest(path)
    with pytest.raises(OmeZarrError, match=match) as info:
        call()
    assert str(path.name) in str(info.value)
    assert tree_digest(path) == before
    return info.value


def test_missing_path(tmp_path):
    with pytest.raises(OmeZarrError, match="no such file"):
        open_pyramid(tmp_path / "nope.zarr")


def test_not_a_zarr(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    _unchanged_after(folder, lambda: open_pyramid(folder), "not a zarr group")
    f = tmp_path / "image.tif"
    f.write_bytes(b"II*\x00")
    with pytest.raises(OmeZarrError, match="napari-rat convert"):
        open_pyramid(f)


def test_zarr_without_multiscales(tmp_path):
    path = tmp_path / "plain.zarr"
    g = zarr.open_group(path, mode="w", zarr_format=3, attributes={"hello": 1})
    g.create_array("0", shape=(4, 4), dtype="u1")
    _unchanged_after(path, lambda: open_pyramid(path), "without 'multiscales'")


def test_bioformats2raw_container_suggests_the_image(tmp_path):
    path = tmp_path / "b2r.zarr"
    zarr.open_group(path, mode="w", zarr_format=2, attributes={"bioformats2raw.layout": 3})
    with pytest.raises(OmeZarrError, match="/0"):
        open_pyramid(path)


def test_missing_level(image_3d):
    shutil.rmtree(image_3d / "1")
    _unchanged_after(image_3d, lambda: open_pyramid(image_3d), "level 1 is missing")


def test_level_with_wrong_number_of_dimensions(image_3d, version):
    shutil.rmtree(image_3d / "2")
    zarr.open_group(image_3d, mode="r+").create_array("2", shape=(4, 4), dtype="u2")
    _unchanged_after(image_3d, lambda: open_pyramid(image_3d), "has 2 dimensions.*4 axes")


def test_unknown_version(image_3d, version):
    def edit(body):
        if version == "0.5":
            body["version"] = "0.7"
        else:
            body["multiscales"][0]["version"] = "0.3"

    _edit_attrs(image_3d, version, edit)
    err = _unchanged_after(image_3d, lambda: open_pyramid(image_3d), "unknown OME-NGFF version")
    assert "0.4" in err.fix and "0.5" in str(err)


def test_invalid_metadata_names_the_field(image_3d, version):
    _edit_attrs(image_3d, version, lambda b: b["multiscales"][0]["axes"].pop())
    _unchanged_after(image_3d, lambda: open_pyramid(image_3d), "invalid OME-NGFF")


def test_non_integer_labels_in_file(image_3d, version):
    write_labels(image_3d, np.ones(volume().shape, np.uint8), "cells")
    for level in ("0", "1", "2"):
        arr = zarr.open_array(image_3d / "labels" / "cells" / level, mode="r")
        shutil.rmtree(image_3d / "labels" / "cells" / level)
        zarr.open_group(image_3d / "labels" / "cells", mode="r+").create_array(
            level, shape=arr.shape, dtype="float32"
        )
    _unchanged_after(image_3d, lambda: open_pyramid(image_3d), "must be integers")


def test_non_integer_labels_to_write(image_3d):
    _unchanged_after(
        image_3d,
        lambda: write_labels(image_3d, np.ones(volume().shape, np.float32), "x"),
        "labels must be integers",
    )


def test_labels_of_the_wrong_shape(image_3d):
    _unchanged_after(
        image_3d,
        lambda: write_labels(image_3d, np.ones((3, 3, 3), np.uint8), "x"),
        "do not match the image's level 0",
    )


def test_existing_labels_are_not_overwritten_unless_asked(image_3d):
    first = np.zeros(volume().shape, np.uint8)
    first[0, 0, 0] = 1
    write_labels(image_3d, first, "cells")
    _unchanged_after(
        image_3d,
        lambda: write_labels(image_3d, np.full(volume().shape, 2, np.uint8), "cells"),
        "already exists",
    )
    write_labels(image_3d, np.full(volume().shape, 2, np.uint8), "cells", overwrite=True)
    got = open_pyramid(image_3d).labels["cells"]
    assert np.all(got.levels[0].data.compute() == 2)
    assert list(open_pyramid(image_3d).labels) == ["cells"]
    leftovers = [p.name for p in (image_3d / "labels").iterdir() if ".partial-" in p.name]
    assert not leftovers + [p.name for p in (image_3d / "labels").iterdir() if ".old-" in p.name]


def test_new_image_is_not_overwritten_unless_asked(image_3d):
    _unchanged_after(image_3d, lambda: write_image(image_3d, volume(), levels=1), "already exists")


def test_failed_write_leaves_nothing(tmp_path):
    def boom(fraction, message):
        if "level 2" in message:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_image(tmp_path / "x.zarr", volume(), levels=3, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_failed_label_write_leaves_the_image_unchanged(image_3d):
    def boom(fraction, message):
        raise RuntimeError("interrupted")

    before = tree_digest(image_3d)
    with pytest.raises(RuntimeError):
        write_labels(image_3d, np.ones(volume().shape, np.uint8), "cells", progress=boom)
    assert tree_digest(image_3d) == before


def _fail_at_level_2(error):
    def boom(fraction, message):
        if "level 2" in message:
            raise error("interrupted")

    return boom


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_overwrite_keeps_the_old_image(image_3d, error):
    """Replacing an image that fails half-way leaves the old one byte for byte, no scratch."""
    before = tree_digest(image_3d.parent)
    with pytest.raises(error):
        write_image(
            image_3d,
            volume()[None],
            axes="czyx",
            levels=3,
            overwrite=True,
            progress=_fail_at_level_2(error),
        )
    assert tree_digest(image_3d.parent) == before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_label_overwrite_keeps_the_old_labels(image_3d, error):
    write_labels(image_3d, np.ones(volume().shape, np.uint8), "cells")
    before = tree_digest(image_3d.parent)
    with pytest.raises(error):
        write_labels(
            image_3d,
            np.full(volume().shape, 2, np.uint8),
            "cells",
            overwrite=True,
            progress=_fail_at_level_2(error),
        )
    assert tree_digest(image_3d.parent) == before
    assert np.all(open_pyramid(image_3d).labels["cells"].levels[0].data.compute() == 1)


def test_read_only_location_for_a_new_image():
    # /sys refuses new folders even to root, so this holds whoever runs the tests.
    with pytest.raises(OmeZarrError, match="read-only"):
        write_image("/sys/napari-rat-test.zarr", volume(), levels=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_image_for_labels(image_3d):
    os.chmod(image_3d, 0o555)
    try:
        _unchanged_after(
            image_3d,
            lambda: write_labels(image_3d, np.ones(volume().shape, np.uint8), "cells"),
            "read-only",
        )
    finally:
        os.chmod(image_3d, 0o755)


def test_read_only_image_for_labels_when_mkdir_is_refused(image_3d, monkeypatch):
    import errno

    import napari_rat.atomic_files as staging

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(staging.os, "mkdir", refuse)
    _unchanged_after(
        image_3d,
        lambda: write_labels(image_3d, np.ones(volume().shape, np.uint8), "cells"),
        "read-only",
    )
