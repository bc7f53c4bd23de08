"""The resolution-blind baseline (``model.spacing_blind``): trained, saved and run like any model,
but always told its native spacing, so only the told spacing changing leaves its output alone."""

import numpy as np
import pytest
import torch

from napari_rat.config import ConfigFileError, ExperimentConfig, ModelConfig, load_config
from napari_rat.inference import PredictOptions, predict
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.model import build_model, save_checkpoint
from napari_rat.synthetic import synthetic_nuclei
from napari_rat.train.loop import train

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)

STARTER = "configs/starter_nuclei_2d.yaml"
BLIND = "configs/starter_nuclei_2d_blind.yaml"


def _probabilities(model, image, spacing) -> np.ndarray:
    gen = predict(model, image, spacing, options=PredictOptions(tile=(32, 32), halo=(8, 8)))
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return np.asarray(stop.value.probabilities)


def test_blind_checkpoint_ignores_the_told_spacing_and_the_normal_one_does_not(tiny, tmp_path):
    config = tiny(model={"spacing": [1.0, 1.0], "spacing_blind": True}, data={"spacing": [1, 1]})
    train(config)
    best = tmp_path / "runs" / "tiny" / "best.safetensors"
    blind = load_model_for_inference(best)
    assert blind.checkpoint_info.model_config.spacing_blind is True
    assert blind.backbone.spacing_blind is True
    # The same weights, told the truth: the twin every blind model is compared with.
    told_config = blind.checkpoint_info.model_config.model_copy(update={"spacing_blind": False})
    told_path = save_checkpoint(blind, tmp_path / "told.safetensors", told_config)
    told = load_model_for_inference(told_path)
    image = synthetic_nuclei((48, 48), radius=3.0, seed=3)[0][None].astype(np.float32)

    blind_1 = _probabilities(blind, image, (1.0, 1.0))
    blind_3 = _probabilities(blind, image, (3.0, 3.0))
    told_1 = _probabilities(told, image, (1.0, 1.0))
    told_3 = _probabilities(told, image, (3.0, 3.0))
    np.testing.assert_array_equal(blind_1, blind_3)
    np.testing.assert_array_equal(blind_1, told_1)  # native spacing: the same model
    assert np.abs(told_1 - told_3).max() > 1e-6  # the blind pair differs by exactly 0


def test_blind_config_is_the_starter_but_for_the_switch_and_names():
    starter = load_config(STARTER).model_dump()
    blind = load_config(BLIND).model_dump()
    assert blind["model"]["spacing_blind"] is True and starter["model"]["spacing_blind"] is False
    for cfg in (starter, blind):
        cfg["model"].pop("spacing_blind")
        cfg.pop("name")
        cfg["training"].pop("run_name")
    assert blind == starter


def test_blind_needs_the_native_spacing(tmp_path):
    with pytest.raises(ValueError, match="model.spacing is not set; set model.spacing"):
        ExperimentConfig.model_validate({"model": {"spacing_blind": True}})
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: {spacing: [1.0, 1.0], spacing_blind: true}\ndata: {spacing: [0.5, 0.5]}\n"
    )
    with pytest.raises(ConfigFileError, match=r"set model.spacing: \[0.5, 0.5\]"):
        load_config(path)


def test_blind_pyramid_is_told_native_level_0_and_keeps_the_level_ratios():
    cfg = ModelConfig(
        feature_dims=8,
        num_heads=2,
        num_blocks=1,
        sga_kernel_size=3,
        iters=1,
        spacing=[1.0, 1.0],
        spacing_blind=True,
    )
    torch.manual_seed(0)
    blind = build_model(cfg).eval()
    told = build_model(cfg.model_copy(update={"spacing_blind": False})).eval()
    told.load_state_dict(blind.state_dict())
    x = torch.randn(1, 1, 24, 24)
    levels = [x, x[:, :, ::2, ::2].contiguous()]
    with torch.no_grad():
        coarse = blind(levels, [(3.0, 3.0), (6.0, 6.0)])
        native = told(levels, [(1.0, 1.0), (2.0, 2.0)])
        told_coarse = told(levels, [(3.0, 3.0), (6.0, 6.0)])
    for a, b in zip(coarse, native, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(told_coarse[0], native[0])  # told, the same weights respond
