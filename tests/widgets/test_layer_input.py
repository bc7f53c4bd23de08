"""From a napari layer to the model input and back to the result layers' data (no viewer)."""

from types import SimpleNamespace

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.inference_widget import result_arrays, result_layers  # noqa: E402
from napari_rat._widgets.layer_input import layer_input  # noqa: E402


def _source():
    layer = napari.layers.Image(
        np.zeros((3, 20, 24), np.float32),
        name="vol",
        scale=(2.0, 0.5, 0.25),
        translate=(1.0, 2.0, 3.0),
        units=("um", "um", "nm"),
        axis_labels=("z", "y", "x"),
    )
    return layer, layer_input(layer, 2, "slice", current_step=[2, 0, 0])


def test_placement_is_captured_when_the_input_is_cut():
    layer, source = _source()
    layer.units = ("m", "m", "m")
    layer.axis_labels = ("a", "b", "c")
    meta = source.placement()
    assert meta["scale"] == (2.0, 0.5, 0.25)
    assert meta["translate"] == (1.0 + 2 * 2.0, 2.0, 3.0)
    assert meta["axis_labels"] == ("z", "y", "x")
    assert meta["units"] == ("micrometer", "micrometer", "nanometer")
    out = napari.layers.Labels(np.zeros((1, 20, 24), np.uint16), **meta)
    assert [str(u) for u in out.units] == ["micrometer", "micrometer", "nanometer"]


@pytest.mark.parametrize(
    ("top", "dtype"), [(7, np.uint16), (65534, np.uint16), (65535, np.int64), (70000, np.int64)]
)
def test_instance_labels_are_uint16_when_they_fit(top, dtype):
    _, source = _source()
    labels = np.zeros((20, 24), np.int64)
    labels[3:6, 4:9] = top
    labels[10, 10] = 1
    probabilities = np.stack([np.full((20, 24), 0.25, np.float32)] * 2)
    result = SimpleNamespace(probabilities=probabilities, labels=labels)
    arrays = result_arrays(result, source)
    assert arrays["instances"].dtype == dtype
    assert arrays["instances"].shape == (1, 20, 24)
    np.testing.assert_array_equal(arrays["instances"][0], labels)
    np.testing.assert_allclose(arrays["foreground"][0], 0.75)
    kinds = [(kind, kw["name"]) for _, kw, kind in result_layers(source, arrays, "vol")]
    assert kinds == [("image", "vol foreground (RAT)"), ("labels", "vol instances (RAT)")]


@pytest.mark.parametrize("multiscale", [False, True])
def test_a_3d_click_points_at_the_brightest_voxel_on_its_ray(multiscale):
    from napari_rat._widgets.layer_input import brightest_on_ray

    rng = np.random.default_rng(0)
    volume = rng.random((16, 32, 32)).astype(np.float32)
    volume[11, 20:22, 8:10] = 5.0  # one bright 2x2 column, at every level a single voxel
    volume[3, 4, 30] = 9.0  # brighter, but off the ray
    data = [volume, volume.reshape(8, 2, 16, 2, 16, 2).mean((1, 3, 5))] if multiscale else volume
    layer = napari.layers.Image(data, multiscale=multiscale, scale=(2.0, 0.5, 0.5))
    # A ray along z through the column (level-0 data coordinates, as napari gives them).
    point = brightest_on_ray(layer, (-0.5, 20.2, 8.2), (15.5, 20.2, 8.2))
    expected = (11.0, 20.5, 8.5) if multiscale else (11.0, 20.0, 8.0)
    np.testing.assert_allclose(point, expected, atol=0.51 if multiscale else 0)
    # An oblique ray crossing the column.
    point = brightest_on_ray(layer, (3.0, 20.2, 0.2), (15.0, 20.2, 12.2))
    assert abs(point[0] - 11) <= 1 and abs(point[2] - 8.2) <= 1
