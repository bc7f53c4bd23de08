"""The small random model the inference tests run (its config, ``small_model_config``, is in
the top-level ``tests/conftest.py``)."""

import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.model import build_model


@pytest.fixture(scope="module")
def model2d(small_model_config):
    """The small 2D model with random weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return build_model(ModelConfig(**small_model_config)).eval()
