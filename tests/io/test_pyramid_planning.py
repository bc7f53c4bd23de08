"""Pyramid planning, resampling and region parsing (pure functions)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_rat.io.downsampling import downsample, plan_factors, resample_nearest
from napari_rat.io.pyramid import parse_region


def test_plan_does_not_halve_z_while_it_is_coarser():
    factors = plan_factors((64, 512, 512), (4.0, 1.0, 1.0), [0, 1, 2], levels=5)
    assert factors == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16)]


def test_plan_isotropic_halves_everything_and_stops_by_size():
    factors = plan_factors((128, 128, 128), (1.0, 1.0, 1.0), [0, 1, 2])
    assert factors == [(1, 1, 1), (2, 2, 2)]  # 64 voxels: small enough


def test_plan_never_touches_channel_axis():
    factors = plan_factors((3, 256, 256), (1.0, 1.0, 1.0), [1, 2], levels=3)
    assert [f[0] for f in factors] == [1, 1, 1]


def test_downsample_mean_and_nearest_with_odd_sizes():
    x = np.arange(5 * 5, dtype=np.uint8).reshape(5, 5)
    mean = downsample(da.from_array(x, chunks=2), (2, 2), (2, 2), "mean").compute()
    assert mean.shape == (3, 3) and mean.dtype == np.uint8
    assert mean[0, 0] == 3  # (0 + 1 + 5 + 6) / 4 = 3
    assert mean[2, 2] == 24  # edge voxel, padded by repetition
    near = downsample(da.from_array(x, chunks=2), (2, 2), (2, 2), "nearest").compute()
    np.testing.assert_array_equal(near, x[::2, ::2])


def test_resample_nearest_onto_a_shifted_grid():
    x = da.from_array(np.arange(8), chunks=3)
    # Target voxels of size 2 centred on source voxels 1, 3, 5, 7.
    out = resample_nearest(x, (1.0,), (0.0,), (4,), (2.0,), (0.5,), (4,)).compute()
    np.testing.assert_array_equal(out, [1, 3, 5, 7])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("z=1:5, x=0:8", {"z": (1, 5), "x": (0, 8)}),
        ("2:4, 0:16", {"y": (2, 4), "x": (0, 16)}),
    ],
)
def test_parse_region(text, expected):
    assert parse_region(text, ("c", "z", "y", "x")) == expected


@pytest.mark.parametrize("text", ["q=1:2", "1:2:3, x", "z=1", "1:2, 1:2, 1:2, 1:2, 1:2", "z=a:b"])
def test_parse_region_rejects(text):
    with pytest.raises(ValueError):
        parse_region(text, ("c", "z", "y", "x"))
