"""Which attention layer classes build a RAT, by ``sga_attention_type``.

The layer classes come from the PyPI packages ``spatial-grouping-attention`` and
``rotary-spatial-embeddings``. Faster layers subclass them, keep their parameters and parameter
names (so checkpoints are interchangeable) and replace only the computation; they register here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from RoSE import MultiRes_RoSE_Block
from spatial_grouping_attention import DenseSpatialGroupingAttention

SGA_TYPES = ("dense", "exact", "local", "sparse")

_SGA_LAYERS: dict[str, Callable[..., torch.nn.Module]] = {}
_MR_BLOCKS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_sga_layer(
    kind: str,
    sga_factory: Callable[..., torch.nn.Module],
    mr_factory: Callable[..., torch.nn.Module] | None = None,
) -> None:
    """Register the SGA layer (and optionally the multi-resolution block) for ``kind``."""
    _SGA_LAYERS[kind] = sga_factory
    if mr_factory is not None:
        _MR_BLOCKS[kind] = mr_factory


def _sparse_layer(**kwargs) -> torch.nn.Module:
    try:
        import natten  # noqa: F401
    except ImportError:
        raise ImportError(
            "sga_attention_type 'sparse' is the package's NATTEN layer, and natten is not "
            "installed (it needs CUDA: pip install natten). Use 'local' for a windowed layer "
            "that runs anywhere, or 'exact' for the dense maths at linear memory."
        ) from None
    from spatial_grouping_attention import SparseSpatialGroupingAttention

    return SparseSpatialGroupingAttention(**kwargs)


register_sga_layer("dense", DenseSpatialGroupingAttention, MultiRes_RoSE_Block)
register_sga_layer("sparse", _sparse_layer, MultiRes_RoSE_Block)


def _load_fast_layers() -> None:
    # The fast layers register themselves on import; imported here, not at the top, because
    # fast_sga imports register_sga_layer from this module.
    from napari_rat.model import fast_sga  # noqa: F401


def build_sga_layer(kind: str, **kwargs) -> torch.nn.Module:
    """Build the spatial grouping attention layer for ``kind`` (see :data:`SGA_TYPES`)."""
    _load_fast_layers()
    if kind not in _SGA_LAYERS:
        raise ValueError(
            f"unknown or unavailable sga_attention_type {kind!r}; "
            f"choose one of {sorted(_SGA_LAYERS)}"
        )
    return _SGA_LAYERS[kind](**kwargs)


def build_mr_block(kind: str, **kwargs) -> torch.nn.Module:
    """Build the multi-resolution RoSE block that pairs with the SGA layer ``kind``."""
    _load_fast_layers()
    return _MR_BLOCKS.get(kind, MultiRes_RoSE_Block)(**kwargs)
