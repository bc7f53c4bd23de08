"""Open -> edit -> save in a real napari viewer, through napari's own entry points
(``viewer.open``, ``viewer.layers.save``, ``viewer.open_sample``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ome_zarr_helpers import SPACING_3D, tree_digest, volume

from napari_rat.io import open_pyramid, write_labels
from napari_rat.io.errors import NapariWriteError

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui

MANIFEST = Path(__file__).parents[2] / "napari.yaml"


def _save(viewer, path, layer) -> list[str]:
    viewer.layers.selection = {layer}
    return viewer.layers.save(str(path), selected=True, plugin="napari-rat")


def _open(viewer, path) -> list:
    return viewer.open(str(path), plugin="napari-rat")


def test_edited_multiscale_labels_are_saved_back_at_every_level(make_napari_viewer, image_3d):
    """Labels opened from the OME-Zarr are multiscale (napari hands the writer a
    ``MultiScaleData``); saved back, level 0 is written and the coarser levels rebuilt."""
    original = (volume() > 100).astype(np.uint8)
    write_labels(image_3d, original, "mask", colors={1: (255, 0, 0, 255)})
    viewer = make_napari_viewer()
    layers = _open(viewer, image_3d)
    mask = viewer.layers["mask"]
    assert mask in layers and mask.multiscale and len(mask.data) == 3

    # The edit: a block of label 7 on level 0 (napari does not paint multiscale labels; an
    # array edit of level 0 is how they change).
    mask.data[0][2:6, 8:16, 8:16] = 7
    mask.refresh()
    written = _save(viewer, image_3d, mask)
    assert written == [str(image_3d / "labels" / "mask")]
    # Staged aside and moved into place: no scratch or replaced copy is left behind.
    assert not [p.name for p in (image_3d / "labels").iterdir() if p.name.startswith(".mask")]

    viewer.layers.clear()
    _open(viewer, image_3d)
    reopened = viewer.layers["mask"]
    assert reopened.multiscale and len(reopened.data) == 3
    expected0 = original.copy()
    expected0[2:6, 8:16, 8:16] = 7
    np.testing.assert_array_equal(np.asarray(reopened.data[0]), expected0)
    pyramid = open_pyramid(image_3d)
    for k, level in enumerate(pyramid.labels["mask"].levels):
        f = np.round(np.divide(level.scale, pyramid.labels["mask"].levels[0].scale)).astype(int)
        assert f[0] == 1  # z is never halved here (3.0 vs 0.25)
        data = np.asarray(reopened.data[k])
        block = (slice(2, 6), slice(8 // f[1], 16 // f[1]), slice(8 // f[2], 16 // f[2]))
        assert (data[block] == 7).all(), f"level {k}"
        assert np.count_nonzero(data == 7) == 4 * 8 * 8 // (f[1] * f[2]), f"level {k}"
        # Outside the edit, each coarse level still holds level 0's labels (nearest).
        assert set(np.unique(data)) == {0, 1, 7}
    # The label colours read from image-label survive the round trip.
    assert pyramid.labels["mask"].image_label.colors[1] == (255, 0, 0, 255)
    np.testing.assert_allclose(reopened.data_to_world((0, 0, 0)), mask.data_to_world((0, 0, 0)))


def test_a_list_of_levels_is_saved_from_level_0(make_napari_viewer, image_3d):
    viewer = make_napari_viewer()
    level0 = np.zeros(volume().shape, np.int32)
    level0[1:3, 4:8, 4:8] = 5
    layer = viewer.add_labels([level0, level0[:, ::2, ::2]], name="cells", scale=SPACING_3D)
    assert layer.multiscale
    _save(viewer, image_3d, layer)
    cells = open_pyramid(image_3d).labels["cells"]
    np.testing.assert_array_equal(cells.levels[0].data.compute(), level0)
    assert len(cells.levels) == 3


def test_save_refusals_reach_the_user(make_napari_viewer, image_3d):
    """napari swallows a writer's ValueError ("not a valid writer"): the reasons must come
    through as an error napari shows, and nothing on disk changes."""
    viewer = make_napari_viewer()
    data = np.zeros(volume().shape, np.int32)
    data[2:4, 5:9, 5:9] = 3
    nuclei = viewer.add_labels(data, name="nuclei")
    assert _save(viewer, image_3d, nuclei) == [str(image_3d / "labels" / "nuclei")]
    before = tree_digest(image_3d)

    with pytest.raises(NapariWriteError, match="a label image of this name already exists"):
        _save(viewer, image_3d, nuclei)
    small = viewer.add_labels(np.zeros((8, 16, 16), np.int32), name="small")
    with pytest.raises(NapariWriteError, match=r"labels of shape \(8, 16, 16\) do not match"):
        _save(viewer, image_3d, small)
    bad = viewer.add_labels(data, name="a:b")
    with pytest.raises(NapariWriteError, match="invalid label name 'a:b'"):
        _save(viewer, image_3d, bad)
    assert tree_digest(image_3d) == before
    np.testing.assert_array_equal(np.asarray(nuclei.data), data)
    assert [layer.name for layer in viewer.layers] == ["nuclei", "small", "a:b"]


def test_saving_to_labels_name_names_the_labels(make_napari_viewer, image_3d):
    """napari appends ``.zarr`` to ``<image>.zarr/labels/<name>``: the labels are still
    ``<name>``."""
    viewer = make_napari_viewer()
    data = np.zeros(volume().shape, np.int32)
    data[0, 0, 0] = 1
    layer = viewer.add_labels(data, name="layer name")
    written = _save(viewer, image_3d / "labels" / "cells", layer)
    assert written == [str(image_3d / "labels" / "cells")]
    assert not (image_3d / "labels" / "cells.zarr").exists()
    assert list(open_pyramid(image_3d).labels) == ["cells"]
    # The explicit suffix is accepted too.
    _save(viewer, image_3d / "labels" / "more.zarr", layer)
    assert list(open_pyramid(image_3d).labels) == ["cells", "more"]
