"""Shared test configuration: tiny torch threads so tests share 2 cores well, and the small
random model the engine, cluster and dock tests build (its config as ``small_model_config``)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402

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
    """A copy of the small 2D model's config (seconds to run on 2 CPU cores), to vary."""
    return {**SMALL_MODEL, "head": dict(SMALL_MODEL["head"])}
