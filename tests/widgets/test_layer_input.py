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
