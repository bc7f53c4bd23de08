"""Images open readable: ``omero`` display windows from a coarse level's percentiles, and a
time axis keeps the increment and unit its OME-TIFF gives."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_rat.io import Channel, convert, open_pyramid, write_image
from napari_rat.io.napari_reader import pyramid_layer_data
from napari_rat.io.ome_zarr_writer import WINDOW_PERCENTILES

napari = pytest.importorskip("napari")


def _dim_image_with_a_hot_pixel(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Noise between 100 and 1100 with one saturated voxel: min/max would make it black."""
    rng = np.random.default_rng(seed)
    data = rng.integers(100, 1100, size=shape, dtype=np.uint16)
    data[(0,) * (len(shape) - 2) + (5, 7)] = 65535
    return data


def _window(level: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(level.astype(np.float64), WINDOW_PERCENTILES)
    return float(lo), float(hi)


def test_write_image_stores_percentile_windows(tmp_path, version):
    data = _dim_image_with_a_hot_pixel((64, 64))
    out = write_image(tmp_path / "img.zarr", data, axes="yx", levels=2, ngff_version=version)
    pyramid = open_pyramid(out)
    (channel,) = pyramid.channels
    coarse = pyramid.levels[-1].data.compute()
    assert channel.window == pytest.approx(_window(coarse))
    assert 100 <= channel.window[0] < channel.window[1] < 1100  # not the hot pixel
    assert channel.limits == (0.0, 65535.0)
    # The layer keeps the name it had without omero, and napari gets the window.
    ((_, kwargs, kind),) = pyramid_layer_data(pyramid)
    assert kind == "image" and kwargs["name"] == "img.zarr"
    assert kwargs["contrast_limits"] == pytest.approx(channel.window)


def test_channels_without_window_get_one_and_given_windows_stay(tmp_path, version):
    data = np.stack([_dim_image_with_a_hot_pixel((64, 64)), np.full((64, 64), 3, np.uint16)])
    data[1, :32] = 9
    out = write_image(
        tmp_path / "c.zarr",
        data,
        axes="cyx",
        levels=2,
        ngff_version=version,
        channels=[Channel("dapi"), Channel("gfp", window=(0, 50))],
    )
    dapi, gfp = open_pyramid(out).channels
    coarse = open_pyramid(out).levels[-1].data.compute()
    assert dapi.window == pytest.approx(_window(coarse[0]))
    assert gfp.window == (0.0, 50.0)
    # Without channels, the layers keep their default names.
    plain = write_image(tmp_path / "p.zarr", data, axes="cyx", levels=2, ngff_version=version)
    names = [kwargs["name"] for _, kwargs, _ in pyramid_layer_data(open_pyramid(plain))]
    assert names == ["p.zarr c0", "p.zarr c1"]


def test_float_windows_ignore_nan(tmp_path):
    data = np.linspace(-1.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    data[0, 0] = np.nan
    out = write_image(tmp_path / "f.zarr", data, axes="yx", levels=1)
    (channel,) = open_pyramid(out).channels
    assert channel.window == pytest.approx(_window(data[np.isfinite(data)]), rel=1e-5)
    assert channel.limits == pytest.approx((np.nanmin(data), np.nanmax(data)))


def _ome_tiff_time_series(path, unit: str = "min") -> np.ndarray:
    data = _dim_image_with_a_hot_pixel((3, 4, 64, 64))
    metadata = {
        "axes": "TZYX",
        "PhysicalSizeX": 0.5,
        "PhysicalSizeY": 0.5,
        "PhysicalSizeZ": 2.0,
        "TimeIncrement": 2.5,
        "TimeIncrementUnit": unit,
    }
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return data


def test_convert_keeps_the_time_increment_and_unit(tmp_path, version):
    _ome_tiff_time_series(tmp_path / "t.ome.tif")
    out = convert(tmp_path / "t.ome.tif", tmp_path / "t.zarr", ngff_version=version, levels=2)
    pyramid = open_pyramid(out)
    assert [(a.name, a.unit) for a in pyramid.axes] == [
        ("t", "minute"),
        ("z", "micrometer"),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    assert pyramid.levels[0].scale == pytest.approx((2.5, 2.0, 0.5, 0.5))
    assert pyramid.levels[1].scale[0] == pytest.approx(2.5)  # time is never downsampled
    (channel,) = pyramid.channels
    assert channel.window == pytest.approx(_window(pyramid.levels[-1].data.compute()))


@pytest.mark.parametrize(("given", "expected"), [("s", "second"), ("ms", "millisecond")])
def test_time_units_from_ome_xml(tmp_path, given, expected):
    _ome_tiff_time_series(tmp_path / "t.ome.tif", given)
    out = convert(tmp_path / "t.ome.tif", tmp_path / "t.zarr", levels=1)
    assert open_pyramid(out).axes[0].unit == expected


@pytest.mark.gui
def test_converted_ome_tiff_opens_with_its_window_and_time_axis(make_napari_viewer, tmp_path):
    """Through napari's File > Open: the window written by convert, not napari's guess (the
    coarse level's min and max, which the hot pixel would stretch to an all-black image)."""
    data = _ome_tiff_time_series(tmp_path / "t.ome.tif")
    out = convert(tmp_path / "t.ome.tif", tmp_path / "t.zarr", levels=2)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(out), plugin="napari-rat")
    coarse = open_pyramid(out).levels[-1].data.compute()
    assert tuple(layer.contrast_limits) == pytest.approx(_window(coarse))
    assert layer.contrast_limits[1] < 1100 < data.max()
    assert str(layer.units[0]) == "minute"
    assert layer.scale[0] == pytest.approx(2.5)
    assert tuple(layer.axis_labels) == ("t", "z", "y", "x")


def test_a_large_level_is_sampled_not_read_whole(monkeypatch):
    """Above the sample budget a few planes are read, strided, and the window still
    describes the image."""
    import dask.array as da

    from napari_rat.io import ome_zarr_writer

    monkeypatch.setattr(ome_zarr_writer, "_WINDOW_SAMPLE", 4096)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1001, size=(2, 200, 128, 128)).astype(np.uint16)
    data[1] //= 10

    class CountingArray:
        """The data, counting the elements read from it."""

        shape, dtype, ndim = data.shape, data.dtype, data.ndim
        read = 0

        def __getitem__(self, key):
            block = data[key]
            CountingArray.read += block.size
            return block

    level = da.from_array(CountingArray(), chunks=(1, 4, 64, 64))
    (w0, limits), (w1, _) = ome_zarr_writer.contrast_windows(level, 0)
    # 16 planes of each channel: at most 16 chunk-deep slabs of its 50.
    assert CountingArray.read <= 2 * 16 * 4 * 128 * 128 < data.size / 2
    assert w0 == pytest.approx(_window(data[0]), abs=15)
    assert w1 == pytest.approx(_window(data[1]), abs=2)
    assert limits == (0.0, 65535.0)


def test_convert_keeps_an_imagej_frame_interval(tmp_path):
    data = _dim_image_with_a_hot_pixel((3, 4, 32, 32))
    metadata = {"axes": "TZYX", "spacing": 3.0, "unit": "um", "finterval": 0.5, "tunit": "min"}
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(2, 2), metadata=metadata)
    pyramid = open_pyramid(convert(tmp_path / "ij.tif", tmp_path / "ij.zarr", levels=1))
    assert [a.unit for a in pyramid.axes] == ["minute"] + ["micrometer"] * 3
    assert pyramid.levels[0].scale == pytest.approx((0.5, 3.0, 0.5, 0.5))
