"""The attention dock's core without Qt: normalisation, units and origin of a model input."""

import numpy as np
import pytest
import torch

from napari_rat._widgets.layer_input import LayerSnapshot, layer_input
from napari_rat.config import ModelConfig
from napari_rat.inference.attention_at_point import attention_at_point
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.inference.normalization import image_statistics
from napari_rat.inference.sources import PredictionInput, PyramidInput
from napari_rat.model import build_model, save_checkpoint
from napari_rat.model.attention_maps import native_grouping, point_attention
from napari_rat.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(
        feature_dims=16,
        num_heads=2,
        num_blocks=2,
        iters=1,
        sga_attention_type="local",
        sga_kernel_size=3,
        stride=2,
        head={"decoder_dims": 8},
    )
    path = tmp_path_factory.mktemp("ckpt") / "m2.safetensors"
    save_checkpoint(build_model(config), path, config)  # the model's unit: micrometer
    return load_model_for_inference(path)


@pytest.fixture(scope="module")
def image():
    img, _ = synthetic_nuclei((40, 36), (0.5, 0.5), seed=0)
    return (img * 1000).astype(np.uint16)[None]


def _input(image, spacing, translation, units):
    return PyramidInput(image, spacing, translation, ("y", "x"), units)


def test_maps_are_the_model_s_on_the_normalised_input(model, image):
    """The core normalises as the model was trained and places the point inside the input."""
    source = _input(image, (0.5, 0.5), (100.0, 50.0), ("micrometer", "micrometer"))
    got = attention_at_point(model, source, (110.0, 58.0))
    stats = image_statistics(image, model.checkpoint_info.normalization)
    x = torch.from_numpy(stats.apply(image.astype(np.float32)))[None]
    want = point_attention(model, x, [(0.5, 0.5)], (10.0, 8.0))
    groups = native_grouping(model, x, [(0.5, 0.5)])
    assert len(got.attention) == len(got.grouping) == 2
    for a, b in zip(got.attention, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert a.shape == (40, 36)
    for a, b in zip(got.grouping, groups, strict=True):
        np.testing.assert_array_equal(a, b)
    # The point's own pixel (row 20, column 16) gets attention; a far corner none (local).
    assert got.attention[0][20, 16] > 0 and got.attention[0][0, 35] == 0


def test_an_input_in_nanometres_gives_the_maps_of_the_same_input_in_micrometres(model, image):
    um = _input(image, (0.5, 0.5), (100.0, 50.0), ("micrometer", "micrometer"))
    nm = _input(image, (500.0, 500.0), (100e3, 50e3), ("nanometer", "nanometer"))
    a = attention_at_point(model, um, (110.0, 58.0))
    b = attention_at_point(model, nm, (110e3, 58e3))
    for x, y in zip(a.attention, b.attention, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    # Without the conversion the point would lie 1000x further in: another token's map.
    wrong = attention_at_point(model, _input(image, (500.0, 500.0), (0.0, 0.0), None), (10e3, 8e3))
    assert not np.allclose(wrong.attention[0], a.attention[0], atol=1e-6)


def test_a_layer_input_and_a_pyramid_input_are_prediction_inputs(image):
    snapshot = LayerSnapshot(
        name="img",
        data=image[0],
        multiscale=False,
        scale=(0.5, 0.5),
        translate=(100.0, 50.0),
        units=("micrometer", "micrometer"),
        axis_labels=("y", "x"),
        rgb=False,
        data_level=0,
        world_transform=np.array([[0.5, 0, 100.0], [0, 0.5, 50.0], [0, 0, 1]]),
    )
    from_layer = layer_input(snapshot, 2)
    assert isinstance(from_layer, PredictionInput)
    assert isinstance(_input(image, (0.5, 0.5), (0.0, 0.0), None), PredictionInput)
    assert from_layer.units == ("micrometer", "micrometer")
    assert from_layer.translation == (100.0, 50.0) and from_layer.spacing == (0.5, 0.5)
    np.testing.assert_allclose(snapshot.data_to_world((4, 2)), (102.0, 51.0))
