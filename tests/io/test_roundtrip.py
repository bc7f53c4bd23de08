"""Round trips: this package <-> ome-zarr-py, validated by ome-zarr-models; v0.4 and v0.5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ome_zarr_models
import pytest
import tifffile
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_helpers import SPACING_3D, TRANSLATION_3D, volume

from napari_rat.io import convert, open_pyramid, write_image, write_labels
from napari_rat.io.errors import OmeZarrWarning

FORMATS = {"0.4": FormatV04, "0.5": FormatV05}


def _ome_zarr_py_nodes(path: Path, version: str) -> list:
    return list(Reader(parse_url(str(path), fmt=FORMATS[version]()))())


def _transforms(node) -> list[tuple[list[float], list[float]]]:
    out = []
    for cts in node.metadata["coordinateTransformations"]:
        scale = next(t["scale"] for t in cts if t["type"] == "scale")
        trans = next((t["translation"] for t in cts if t["type"] == "translation"), None)
        out.append((scale, trans or [0.0] * len(scale)))
    return out


@pytest.mark.parametrize(
    ("axes", "shape", "spacing", "translation"),
    [
        ("yx", (40, 36), (0.5, 0.25), (-3.0, 8.0)),
        ("zyx", (10, 40, 36), SPACING_3D, TRANSLATION_3D),
    ],
    ids=["2d", "3d"],
)
def test_write_then_read_with_ome_zarr_py(tmp_path, version, axes, shape, spacing, translation):
    data = volume(shape)
    out = write_image(
        tmp_path / "img.zarr",
        data,
        axes=axes,
        scale=spacing,
        translation=translation,
        levels=3,
        ngff_version=version,
        chunks=(8,) * len(shape),
    )
    model = ome_zarr_models.open_ome_zarr(out)
    assert model.ome_zarr_version == version

    nodes = _ome_zarr_py_nodes(out, version)
    image = nodes[0]
    np.testing.assert_array_equal(np.asarray(image.data[0]), data)
    assert [a["name"] for a in image.metadata["axes"]] == list(axes)
    assert all(a["unit"] == "micrometer" for a in image.metadata["axes"])
    (s0, t0), *_ = _transforms(image)
    assert s0 == pytest.approx(spacing)
    assert t0 == pytest.approx(translation)

    pyramid = open_pyramid(out)
    assert pyramid.ngff_version == version
    assert pyramid.levels[0].scale == pytest.approx(spacing)
    assert pyramid.levels[0].translation == pytest.approx(translation)
    for level, (s, t), arr in zip(pyramid.levels, _transforms(image), image.data, strict=True):
        assert level.scale == pytest.approx(s)
        assert level.translation == pytest.approx(t)
        np.testing.assert_array_equal(level.data.compute(), np.asarray(arr))


def test_anisotropic_pyramid_keeps_z_until_xy_catch_up(tmp_path, version):
    out = write_image(
        tmp_path / "aniso.zarr",
        volume((16, 64, 64)),
        scale=(4.0, 1.0, 1.0),
        levels=4,
        ngff_version=version,
    )
    pyramid = open_pyramid(out)
    assert [lv.scale for lv in pyramid.levels] == [
        (4.0, 1.0, 1.0),
        (4.0, 2.0, 2.0),
        (4.0, 4.0, 4.0),
        (8.0, 8.0, 8.0),
    ]
    assert [lv.shape for lv in pyramid.levels] == [
        (16, 64, 64),
        (16, 32, 32),
        (16, 16, 16),
        (8, 8, 8),
    ]
    # Mean downsampling places a coarse voxel at the centre of the block it averages.
    assert pyramid.levels[1].translation == pytest.approx((0.0, 0.5, 0.5))
    assert pyramid.levels[1].data[0, 0, 0].compute() == np.round(
        volume((16, 64, 64))[0, :2, :2].mean()
    )


def test_ome_zarr_py_writes_this_package_reads(tmp_path, version):
    import zarr
    from ome_zarr.writer import write_multiscale, write_multiscale_labels

    data = volume((6, 32, 32))
    levels = [data, data[:, ::2, ::2], data[:, ::4, ::4]]
    labels = (data > 120).astype(np.uint8)
    label_levels = [labels, labels[:, ::2, ::2], labels[:, ::4, ::4]]
    fmt = FORMATS[version]()
    zarr_format = 2 if version == "0.4" else 3
    group = zarr.open_group(tmp_path / "ozp.zarr", mode="w", zarr_format=zarr_format)
    transforms = [
        [
            {"type": "scale", "scale": [2.0, 0.5 * 2**i, 0.5 * 2**i]},
            {"type": "translation", "translation": [5.0, 1.0, -2.0]},
        ]
        for i in range(3)
    ]
    write_multiscale(
        levels,
        group,
        axes=[{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        fmt=fmt,
        coordinate_transformations=transforms,
    )
    write_multiscale_labels(
        label_levels,
        group,
        name="mask",
        axes="zyx",
        fmt=fmt,
        coordinate_transformations=transforms,
    )
    if version == "0.5":
        # ome-zarr 0.18 writes 0.5 label arrays without dimension_names: read, with a warning.
        with pytest.warns(OmeZarrWarning, match="dimension_names"):
            pyramid = open_pyramid(tmp_path / "ozp.zarr")
    else:
        pyramid = open_pyramid(tmp_path / "ozp.zarr")
    assert pyramid.ngff_version == version
    assert pyramid.axis_names == ("z", "y", "x")
    assert pyramid.units == ("micrometer",) * 3
    expected = [(2.0, 0.5, 0.5), (2.0, 1.0, 1.0), (2.0, 2.0, 2.0)]
    assert [lv.scale for lv in pyramid.levels] == expected
    assert pyramid.levels[0].translation == (5.0, 1.0, -2.0)
    for level, arr in zip(pyramid.levels, levels, strict=True):
        np.testing.assert_array_equal(level.data.compute(), arr)
    assert list(pyramid.labels) == ["mask"]
    mask = pyramid.labels["mask"]
    assert [lv.scale for lv in mask.levels] == expected
    np.testing.assert_array_equal(mask.levels[2].data.compute(), label_levels[2])


def test_write_labels_matches_image_levels(image_3d, version):
    image = open_pyramid(image_3d)
    labels = np.zeros(image.levels[0].shape[1:], dtype=np.uint16)
    labels[1:5, 4:20, 3:11] = 5
    labels[5:, 20:, 12:] = 9
    write_labels(image_3d, labels, "cells", colors={5: (255, 0, 0, 255), 9: (0, 0, 255, 255)})

    model = ome_zarr_models.open_ome_zarr(image_3d)
    assert model.ome_zarr_version == version
    nodes = _ome_zarr_py_nodes(image_3d / "labels" / "cells", version)
    label_node = next(
        n for n in nodes if "image-label" in n.zarr.root_attrs.get("ome", n.zarr.root_attrs)
    )
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)

    reread = open_pyramid(image_3d)
    cells = reread.labels["cells"]
    assert cells.image_label is not None
    assert cells.image_label.colors == {5: (255, 0, 0, 255), 9: (0, 0, 255, 255)}
    assert cells.image_label.source == "../../"
    assert len(cells.levels) == len(reread.levels)
    for lab, img in zip(cells.levels, reread.levels, strict=True):
        assert lab.shape == img.shape[1:]
        assert lab.scale == img.scale[1:]
        assert lab.translation == img.translation[1:]
        # Nearest neighbour never invents values.
        assert set(np.unique(lab.data.compute())) <= {0, 5, 9}
    if version == "0.5":
        import json

        doc = json.loads((image_3d / "labels" / "zarr.json").read_text())
        assert doc["attributes"]["ome"] == {"version": "0.5", "labels": ["cells"]}


def test_write_labels_accepts_a_lazy_prediction(image_3d):
    import dask.array as da

    image = open_pyramid(image_3d)
    lazy = (image.levels[0].data[0] > 100).astype(np.uint8)
    assert isinstance(lazy, da.Array)
    write_labels(image_3d, lazy, "pred")
    got = open_pyramid(image_3d).labels["pred"].levels[0].data.compute()
    np.testing.assert_array_equal(got, (volume() > 100).astype(np.uint8))


def test_convert_ome_tiff_uses_physical_sizes(tmp_path, version):
    data = volume((2, 6, 20, 24)).transpose(1, 0, 2, 3)  # ZCYX on disk
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(
        src,
        data,
        ome=True,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeZ": 2.0,
            "PhysicalSizeY": 0.5,
            "PhysicalSizeX": 0.5,
            "Channel": {"Name": ["a", "b"]},
        },
    )
    out = convert(src, tmp_path / "out.zarr", ngff_version=version, translation=(1, 2, 3))
    ome_zarr_models.open_ome_zarr(out)
    image = _ome_zarr_py_nodes(out, version)[0]
    np.testing.assert_array_equal(np.asarray(image.data[0]), data.transpose(1, 0, 2, 3))
    pyramid = open_pyramid(out)
    assert pyramid.axis_names == ("c", "z", "y", "x")
    assert pyramid.levels[0].scale == (1.0, 2.0, 0.5, 0.5)
    assert pyramid.levels[0].translation == (0.0, 1.0, 2.0, 3.0)
    assert [c.name for c in pyramid.channels] == ["a", "b"]


def test_convert_npy_with_spacing(tmp_path, version):
    data = volume((5, 30, 20), "float32")
    np.save(tmp_path / "in.npy", data)
    out = convert(
        tmp_path / "in.npy", tmp_path / "o.zarr", spacing=(5, 1, 1), ngff_version=version, levels=2
    )
    pyramid = open_pyramid(out)
    assert pyramid.levels[0].scale == (5.0, 1.0, 1.0)
    assert pyramid.levels[1].scale == (5.0, 2.0, 2.0)
    np.testing.assert_array_equal(pyramid.levels[0].data.compute(), data)
