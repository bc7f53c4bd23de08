"""Which device and which autocast a forward pass runs under: one rule for prediction,
validation and training.

``auto`` is the GPU when CUDA is available, else the CPU; ``bf16``/``fp16`` run fp32 weights
under :func:`torch.autocast`, ``fp32`` turns autocast off (also inside an enclosing one).
"""

from __future__ import annotations

from typing import Literal

import torch

#: Precisions a forward pass can be asked for (``auto``: bf16 on a GPU that supports it).
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for ``requested``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` and ``cuda`` pick the local rank's GPU (``local_rank`` modulo the GPU count; 0 in
    a single process), ``auto`` falls back to the CPU without CUDA.

    Raises
    ------
    ValueError
        When a CUDA device is asked for and CUDA is not available.
    """
    if requested == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        requested = "cuda"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for but CUDA is not available; use cpu")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def precision_dtype(precision: str) -> torch.dtype | None:
    """The reduced dtype of a resolved precision (``None`` for fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast_for(device: torch.device, precision: str):
    """The autocast context for ``precision`` on ``device`` (``auto``: bf16 on CUDA only)."""
    if precision == "auto":
        # bf16 pays off on GPUs; on CPUs it is usually slower than fp32.
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    dtype = precision_dtype(precision)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
