"""Registers the fast spatial grouping attention layers with :mod:`napari_rat.model.layers`.

- ``"exact"``: :class:`~napari_rat.model.sga_exact.ExactSGA`, the package's dense maths in tiles
  (linear memory, same outputs), with the package's global multi-resolution block.
"""

from __future__ import annotations

from RoSE import MultiRes_RoSE_Block

from napari_rat.model.layers import register_sga_layer
from napari_rat.model.sga_exact import ExactSGA

register_sga_layer("exact", ExactSGA, MultiRes_RoSE_Block)

__all__ = ["ExactSGA"]
