"""Load a model for inference: a checkpoint file or a bundled starter model.

Checkpoints trained with the package's dense attention (``"dense"``) run with the ``"local"``
implementation at inference, linear in pixels end to end: the same weights, windowed. ``"exact"``
gives the dense maths (outputs equal to dense within 1e-4) at memory linear in the tile but
quadratic time; the README compares the two on the starter model. ``attention`` overrides the
choice.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from napari_rat.pretrained import STARTER, STARTERS, starter_for

__all__ = ["STARTER", "STARTERS", "checkpoint_path", "load_model_for_inference", "starter_for"]


def checkpoint_path(checkpoint: str | os.PathLike) -> Path:
    """Resolve a bundled starter's name (:data:`STARTERS`) to its file; other values are
    paths."""
    if str(checkpoint) in STARTERS:
        from napari_rat.pretrained import starter_model_path

        path = Path(starter_model_path(STARTERS[str(checkpoint)]))
        if not path.is_file():
            raise FileNotFoundError(
                f"the bundled starter model ({path.name}) is not part of this installation; "
                "choose a checkpoint file"
            )
        return path
    return Path(checkpoint)


def inference_attention(stored: str) -> str:
    """The attention implementation prediction runs for a checkpoint stored with ``stored``."""
    return "local" if stored == "dense" else stored


def load_model_for_inference(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    attention: str | None = None,
) -> torch.nn.Module:
    """Load ``checkpoint`` (a path or a starter's name, :data:`STARTERS`) ready for prediction.

    Raises
    ------
    napari_rat.model.CheckpointError
        For a missing, corrupt or foreign file (the message names it).
    """
    from napari_rat.model import CheckpointError, load_checkpoint, read_checkpoint_info

    try:
        path = checkpoint_path(checkpoint)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from None
    if attention is None:
        attention = inference_attention(read_checkpoint_info(path).model_config.sga_attention_type)
    return load_checkpoint(path, device=device, sga_attention_type=attention)
