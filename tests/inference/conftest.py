"""The small random model the inference tests run (its config as ``small_model_config``)."""

import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.model import build_model

SMALL_MODEL = {
    "feature_dims": 16,
    "num_heads": 2,
    "num_blocks": 2,
    "sga_kernel_size": 3,
    "stride": 2,
    "iters": 1,
    "head": {"decoder_dims": 8},
}


@pytest.fixture(scope="module")
def small_model_config() -> dict:
    """A copy of the small 2D model's config (``model2d``'s), to vary."""
    return {**SMALL_MODEL, "head": dict(SMALL_MODEL["head"])}


@pytest.fixture(scope="module")
def model2d():
    """The small 2D model with random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return build_model(ModelConfig(**SMALL_MODEL)).eval()
