"""Registers the fast spatial grouping attention layers with :mod:`napari_rat.model.layers`.

- ``"exact"``: :class:`~napari_rat.model.sga_exact.ExactSGA`, the package's dense maths in tiles
  (linear memory, same outputs), with the package's global multi-resolution block.
- ``"local"``: :class:`~napari_rat.model.sga_local.LocalSGA` (each group token attends to its
  conv window) with :class:`~napari_rat.model.multires_windowed.WindowedMultiResBlock`
  (physical-size windows above a token count): linear in pixels.

All of them keep the package layers' parameters, so one checkpoint runs in every mode;
:func:`set_attention_mode` switches a built model in place.
"""

from __future__ import annotations

import torch
from RoSE import MultiRes_RoSE_Block
from spatial_grouping_attention import DenseSpatialGroupingAttention

from napari_rat.model.layers import register_sga_layer
from napari_rat.model.multires_windowed import WindowedMultiResBlock
from napari_rat.model.sga_exact import ExactSGA
from napari_rat.model.sga_local import LocalSGA

register_sga_layer("exact", ExactSGA, MultiRes_RoSE_Block)
register_sga_layer("local", LocalSGA, WindowedMultiResBlock)

_MODES = {
    "dense": (DenseSpatialGroupingAttention, MultiRes_RoSE_Block),
    "exact": (ExactSGA, MultiRes_RoSE_Block),
    "local": (LocalSGA, WindowedMultiResBlock),
}


def set_attention_mode(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Switch every SGA layer and multi-resolution block of ``model`` to ``mode`` in place.

    The classes share their parameters, so this only changes how attention is computed.
    ``model`` is a :class:`~napari_rat.model.ResolutionAwareTransformer` or anything holding
    one (e.g. a :class:`~napari_rat.model.RATSegmentation`). Returns ``model``.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {sorted(_MODES)}")
    sga_cls, mr_cls = _MODES[mode]
    found = False
    for module in model.modules():
        if isinstance(module, DenseSpatialGroupingAttention):
            module.__class__ = sga_cls
            found = True
        elif isinstance(module, MultiRes_RoSE_Block):
            module.__class__ = mr_cls
        if hasattr(module, "sga_attention_type") and hasattr(module, "sga_layers"):
            module.sga_attention_type = (mode,) * len(module.sga_layers)
    if not found:
        raise ValueError("the model has no dense spatial grouping attention layers to switch")
    return model


__all__ = ["ExactSGA", "LocalSGA", "WindowedMultiResBlock", "set_attention_mode"]
