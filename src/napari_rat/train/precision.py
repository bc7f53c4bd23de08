"""Which precision a run really uses: bf16/fp16 only where the device and the layers support it.

The RoSE package computes its rotations with complex numbers, which torch does not implement
for bfloat16 on every device (on the CPU: "view_as_complex is only supported for half, float
and double"). A tiny forward pass on the run's device decides, once per process and setting.
The device itself and the autocast context come from :mod:`napari_rat.inference.devices`, the
same rule prediction uses.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch

from napari_rat.config import ModelConfig


@lru_cache(maxsize=16)
def _probe(model_json: str, device: str, dtype_name: str, mode: str) -> str | None:
    from napari_rat.model import build_model

    config = ModelConfig.model_validate_json(model_json)
    small = config.model_copy(update={"num_blocks": 1})
    dtype = getattr(torch, dtype_name)
    # The probe itself may warn ("BComplex32 support is experimental"); only the answer matters.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = build_model(small).to(device)
            x = torch.rand(1, config.input_features, *[16] * config.spatial_dims, device=device)
            if mode == "cast":
                model = model.to(dtype)
                x = x.to(dtype)
                model(x)[0].float().sum().backward()
            else:
                with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
                    model(x)[0].float().sum().backward()
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            return str(exc).splitlines()[0]
    return None


def precision_support(
    model_config: ModelConfig, device: torch.device, precision: str, *, mode: str = "autocast"
) -> tuple[str, str | None]:
    """``(precision actually used, note or None)``.

    ``mode`` is ``autocast`` (in-process loop) or ``cast`` (DeepSpeed casts the weights).
    """
    if precision == "fp32":
        return "fp32", None
    if precision == "fp16" and device.type == "cpu":
        return "fp32", "fp16 is not supported on the CPU; training in fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", "this GPU has no bf16 support; training in fp32"
    dtype_name = "bfloat16" if precision == "bf16" else "float16"
    error = _probe(model_config.model_dump_json(), str(device), dtype_name, mode)
    if error is not None:
        return (
            "fp32",
            f"{precision} does not work with these layers on {device.type} ({error}); "
            "training in fp32",
        )
    return precision, None
