"""Tiny configs for the training tests."""

from __future__ import annotations

import pytest

from napari_rat.config import ExperimentConfig

#: The RoSE package warns when the bf16 probe tries complex bfloat16 (the run then uses fp32).
BF16_PROBE = "ignore:BComplex32 support is experimental:UserWarning"


def tiny_config(tmp_path, **sections) -> ExperimentConfig:
    raw = {
        "name": "tiny",
        "model": {
            "feature_dims": 8,
            "num_heads": 2,
            "num_blocks": 1,
            "sga_kernel_size": 3,
            "stride": 2,
            "iters": 1,
            "proj_kernel_size": 3,
            "sga_attention_type": "dense",
            "head": {"decoder_dims": 4},
        },
        "data": {
            "source": "synthetic",
            "crop_size": [16, 16],
            "num_samples": 4,
            "synthetic_images": 1,
            "synthetic_shape": [32, 48],
            "synthetic_radius": 3.0,
        },
        "training": {
            "epochs": 2,
            "batch_size": 2,
            "warmup_steps": 1,
            "log_every": 1,
            "output_dir": str(tmp_path / "runs"),
            "run_name": "tiny",
            "precision": "fp32",
        },
        "cluster": {"storage_path": str(tmp_path / "ray"), "num_workers": 2},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return ExperimentConfig.model_validate(raw)


@pytest.fixture
def tiny(tmp_path):
    return lambda **sections: tiny_config(tmp_path, **sections)
