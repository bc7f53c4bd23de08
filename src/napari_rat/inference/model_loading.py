"""Load a model for inference: a checkpoint file or a bundled starter model.

Checkpoints trained with the package's dense attention (``"dense"``) run with the ``"local"``
implementation at inference, linear in pixels end to end: the same weights, windowed. ``"exact"``
gives the dense maths (outputs equal to dense within 1e-4) at memory linear in the tile but
quadratic time; the README compares the two on the starter model. ``attention`` overrides the
choice. :func:`as_trained` gives the attention and tiles that run a checkpoint as its training
validated it (``--as-trained``): a dense-attention model's output depends on how much it sees at
once, and a model whose answer rests on the told spacing can lose it in larger windows
(``docs/starter_model.md``, "A task that needs the spacing").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from napari_rat.pretrained import STARTER, STARTERS, starter_for

__all__ = [
    "STARTER",
    "STARTERS",
    "as_trained",
    "checkpoint_path",
    "load_model_for_inference",
    "starter_for",
]


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


def as_trained(
    checkpoint: str | os.PathLike,
) -> tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]:
    """``(attention, tile, halo)`` that run ``checkpoint`` as the training loop validated it.

    A dense-attention model gets the dense maths (``"exact"``, memory linear in the tile) in
    tiles of its training crop (:func:`~napari_rat.inference.tiled_predict.training_tiles`);
    other models their stored attention in the engine's tiles (``None``: the defaults).

    Raises
    ------
    napari_rat.model.CheckpointError
        For an unreadable file, or a dense-attention checkpoint that does not record its
        training crop size.
    """
    from napari_rat.inference.tiled_predict import training_tiles
    from napari_rat.model import CheckpointError, read_checkpoint_info

    try:
        path = checkpoint_path(checkpoint)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from None
    info = read_checkpoint_info(path)
    stored = info.model_config.sga_attention_type
    if stored != "dense":
        return stored, None, None
    crop = info.extra.get("crop_size")
    if not crop or len(crop) != info.model_config.spatial_dims:
        raise CheckpointError(
            f"{path} does not record the crop size it was trained on; run it with --attention "
            "exact and a --tile of that size instead"
        )
    tile, halo = training_tiles(crop)
    return "exact", tile, halo


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
