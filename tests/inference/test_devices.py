"""One device rule and one autocast helper for prediction, validation and training."""

import pytest
import torch

from napari_rat.inference.devices import autocast_for, precision_dtype, resolve_device


def test_devices_resolve_the_same_for_prediction_and_training():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        for asked in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match=f"device '{asked}' asked for but CUDA is not"):
                resolve_device(asked)


def test_autocast_follows_the_precision_and_fp32_turns_an_enclosing_one_off():
    cpu = torch.device("cpu")
    assert precision_dtype("fp32") is None and precision_dtype("bf16") == torch.bfloat16
    with autocast_for(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with autocast_for(cpu, "fp32"):
            assert not torch.is_autocast_enabled("cpu")
    with autocast_for(cpu, "auto"):  # bf16 only pays off on GPUs
        assert not torch.is_autocast_enabled("cpu")
