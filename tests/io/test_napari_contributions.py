"""napari reader/writer contributions: layers placed at their true world position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from ome_zarr_helpers import SPACING_3D, TRANSLATION_3D, volume

from napari_rat.io import open_pyramid, write_labels
from napari_rat.io.errors import NapariWriteError
from napari_rat.io.napari_reader import get_reader, pyramid_layer_data
from napari_rat.io.napari_writer import write_labels_layer

napari = pytest.importorskip("napari")
MANIFEST = Path(__file__).parents[2] / "napari.yaml"


def _layers(data_tuples):
    from napari.layers import Layer

    return [Layer.create(d, k, t) for d, k, t in data_tuples]


def test_reader_contribution_places_layers(image_3d):
    write_labels(image_3d, (volume() > 100).astype(np.uint8), "mask", colors={1: (255, 0, 0, 255)})
    reader = get_reader(str(image_3d))
    assert reader is not None
    layers = _layers(reader(str(image_3d)))
    assert [(layer.name, type(layer).__name__) for layer in layers] == [
        ("dapi", "Image"),
        ("gfp", "Image"),
        ("mask", "Labels"),
    ]
    for layer in layers:
        assert layer.multiscale
        assert len(layer.data) == 3
        assert tuple(layer.axis_labels) == ("z", "y", "x")
        assert [str(u) for u in layer.units] == ["micrometer"] * 3
        np.testing.assert_allclose(layer.data_to_world((0, 0, 0)), TRANSLATION_3D)
        np.testing.assert_allclose(
            layer.data_to_world((1, 2, 3)),
            np.add(TRANSLATION_3D, np.multiply((1, 2, 3), SPACING_3D)),
        )
    dapi, gfp, mask = layers
    assert tuple(dapi.contrast_limits) == (0, 200)
    assert tuple(gfp.contrast_limits) == (10, 150)
    assert dapi.colormap.name == "blue"
    assert gfp.colormap.name == "green"
    np.testing.assert_allclose(mask.colormap.map(np.array([1]))[0], (1, 0, 0, 1))
    np.testing.assert_array_equal(np.asarray(gfp.data[0]), volume()[::-1])


def test_reader_declines_other_folders(tmp_path):
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "x.tif")) is None
    assert get_reader("https://example.org/image.zarr") is not None


def test_selected_region_keeps_world_position(image_3d):
    pyramid = open_pyramid(image_3d).select(levels=[1, 2], region={"z": (2, 6), "y": (8, 24)})
    layers = _layers(pyramid_layer_data(pyramid, channels=[1]))
    assert [layer.name for layer in layers] == ["gfp"]
    (gfp,) = layers
    level1 = open_pyramid(image_3d).levels[1]
    assert level1.scale[1:] == (3.0, 0.5, 0.5)  # x only: y is not halved while coarser
    assert gfp.data[0].shape == (4, 16, 12)
    # Voxel 0 of the crop is level-1 voxel (2, 8, 0), where it was before cropping.
    expected = np.add(level1.translation[1:], np.multiply((2, 8, 0), level1.scale[1:]))
    np.testing.assert_allclose(gfp.data_to_world((0, 0, 0)), expected)
    np.testing.assert_array_equal(np.asarray(gfp.data[0]), level1.data[1, 2:6, 8:24].compute())


def test_a_region_of_several_levels_keeps_the_levels_nested(image_3d):
    """Cropping a region out of several levels widens it to whole voxels of the coarsest, so
    each coarse voxel still covers its block of the finest (as napari draws a multiscale
    layer): world positions from the metadata and from napari agree at every level."""
    full = open_pyramid(image_3d)
    pyramid = full.select(region={"y": (5, 27), "x": (3, 21)})
    (gfp,) = _layers(pyramid_layer_data(pyramid, channels=[1]))
    finest = pyramid.levels[0]
    assert finest.shape[2] > 22 and finest.shape[3] > 18  # the region, widened
    for k, level in enumerate(pyramid.levels):
        f = np.round(np.divide(level.scale, finest.scale)).astype(int)[1:]
        # napari: level-k voxel 0 is centred on the finest crop's block (f - 1) / 2.
        drawn = gfp.data_to_world((f - 1) / 2)
        np.testing.assert_allclose(drawn, level.translation[1:], err_msg=f"level {k}")
        # and it holds what the full pyramid holds there.
        world = np.asarray(level.translation[1:])
        index = np.round((world - full.levels[k].translation[1:]) / level.scale[1:]).astype(int)
        np.testing.assert_array_equal(
            np.asarray(level.data[1, :2, :2, :2]),
            np.asarray(
                full.levels[k].data[
                    1, index[0] : index[0] + 2, index[1] : index[1] + 2, index[2] : index[2] + 2
                ]
            ),
        )


def test_writer_contribution_saves_labels_layer(image_3d):
    from napari.layers import Labels

    data = np.zeros(volume().shape, np.int32)
    data[2:4, 5:9, 5:9] = 3
    layer = Labels(data, name="nuclei")
    written = write_labels_layer(str(image_3d), layer.data, layer._get_state())
    assert written == [str(image_3d / "labels" / "nuclei")]
    nuclei = open_pyramid(image_3d).labels["nuclei"]
    np.testing.assert_array_equal(nuclei.levels[0].data.compute(), data)
    assert set(nuclei.image_label.colors) == {3}
    with pytest.raises(NapariWriteError, match="already exists.*another name"):
        write_labels_layer(str(image_3d), layer.data, layer._get_state())
    with pytest.raises(NapariWriteError, match="existing OME-Zarr image"):
        write_labels_layer(str(image_3d.parent / "new.tif"), layer.data, layer._get_state())


def test_manifest_python_names_import():
    import importlib

    manifest = yaml.safe_load(MANIFEST.read_text())
    mine = [c for c in manifest["contributions"]["commands"] if "ome_zarr" in c["id"]]
    assert len(mine) == 3
    for command in mine:
        module, name = command["python_name"].split(":")
        assert callable(getattr(importlib.import_module(module), name))
