"""The RAT model package: pure torch (no Qt, napari, ray or deepspeed).

- :class:`ResolutionAwareTransformer` — the backbone, compatible with the reference
  implementation's constructor, ``state_dict`` and forward contract.
- :class:`RATSegmentation` — backbone plus decoder: per-pixel logits at each level's resolution.
- :func:`build_model` / :func:`register_model` — the registry a config's ``model.variant`` names.
- :func:`save_checkpoint` / :func:`load_checkpoint` — the single-file checkpoint format;
  :func:`write_card` puts a model card (:mod:`napari_rat.model_card`) into one.
- :mod:`napari_rat.model.layers` — which attention layers ``sga_attention_type`` selects.
"""

from napari_rat.model.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    write_card,
)
from napari_rat.model.rat import ResolutionAwareTransformer, num_parameters
from napari_rat.model.registry import available_models, build_model, register_model
from napari_rat.model.segmentation import RATSegmentation

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "RATSegmentation",
    "ResolutionAwareTransformer",
    "available_models",
    "build_model",
    "load_checkpoint",
    "num_parameters",
    "read_checkpoint_info",
    "register_model",
    "save_checkpoint",
    "write_card",
]
