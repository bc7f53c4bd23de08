"""Tiny checkpoints the dock tests share (seconds to run on 2 CPU cores)."""

import pytest

SMALL = {
    "feature_dims": 16,
    "num_heads": 2,
    "iters": 1,
    "sga_attention_type": "local",
    "head": {"decoder_dims": 8},
}


@pytest.fixture(scope="session")
def dock_checkpoints(tmp_path_factory):
    """``{"2d": 2 blocks, "2d-1": 1 block, "3d": 2 blocks}``: checkpoint files."""
    import torch

    from napari_rat.config import ModelConfig
    from napari_rat.model import build_model, save_checkpoint

    tmp = tmp_path_factory.mktemp("dock-ckpt")
    torch.manual_seed(0)
    configs = {
        "2d": ModelConfig(sga_kernel_size=3, stride=2, num_blocks=2, **SMALL),
        "2d-1": ModelConfig(sga_kernel_size=3, stride=2, num_blocks=1, **SMALL),
        "3d": ModelConfig(
            spatial_dims=3, sga_kernel_size=[1, 3, 3], stride=[1, 2, 2], num_blocks=2, **SMALL
        ),
    }
    return {
        name: save_checkpoint(build_model(c), tmp / f"{name}.safetensors", c)
        for name, c in configs.items()
    }
