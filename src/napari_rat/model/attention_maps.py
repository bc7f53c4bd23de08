"""Attention maps on demand: a point's attention over the input pixels, and native grouping.

The backbone composes per-layer grouping maps (``attn_q``, ``(B, heads, N_out, N_in)``) into maps
over the input pixels only when asked, and densely; that is quadratic in pixels. Here nothing of
that size exists:

- :func:`point_attention` runs the backbone once, with each grouping layer keeping what defines
  its last iteration's ``attn_q`` (queries, keys, normalisers: linear in pixels), then takes the
  row of the token at a physical point and pushes it down through the layers as blocked or
  sparse vector-matrix products.
- :func:`native_grouping` assigns each input token of every layer to its group token (the
  argmax of ``attn_q`` over queries, i.e. over the group tokens whose window covers it in local
  mode) while the backbone runs, and chains the assignments down to the input pixels.

Both need the fast layers (modes ``"exact"`` or ``"local"``); switch a model built as
``"dense"`` with :func:`napari_rat.model.fast_sga.set_attention_mode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    backbone = getattr(model, "backbone", model)
    layers = getattr(backbone, "sga_layers", None)
    if layers is None:
        raise TypeError(
            "expected a ResolutionAwareTransformer or a model with a .backbone holding one, "
            f"got {type(model).__name__}"
        )
    missing = [type(layer).__name__ for layer in layers if not hasattr(layer, "propagate_rows")]
    if missing:
        raise ValueError(
            f"attention maps on demand need the 'exact' or 'local' layers, but the model has "
            f"{sorted(set(missing))}; switch it with "
            "napari_rat.model.fast_sga.set_attention_mode(model, 'local') (same weights)"
        )
    return backbone


@contextmanager
def _recording(backbone, keep):
    """Install ``keep(block, layer, state)`` on every grouping layer while the body runs."""
    calls = {}
    for block, layer in enumerate(backbone.sga_layers):

        def recorder(layer, state, block=block):
            level = calls.get(block, 0)
            calls[block] = level + 1
            keep(block, level, layer, state)

        layer._attention_recorder = recorder
    try:
        yield
    finally:
        for layer in backbone.sga_layers:
            layer.__dict__.pop("_attention_recorder", None)


def _run(backbone, x, spacing, mask) -> None:
    with torch.no_grad():
        backbone(x, spacing, mask, return_attention_maps=False)


def _as_numpy(t: torch.Tensor, grid: Sequence[int]) -> np.ndarray:
    return t.reshape(tuple(grid)).detach().cpu().numpy()


def point_attention(
    model: torch.nn.Module,
    x: torch.Tensor | Sequence[torch.Tensor],
    spacing: Sequence[float] | Sequence[Sequence[float]] | None,
    point_physical: Sequence[float],
    *,
    mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    blocks: Sequence[int] | None = None,
    level: int = 0,
    batch_index: int = 0,
    head: int | None = None,
) -> list[np.ndarray]:
    """The attention of the token at a physical point over the input pixels, per block.

    For block ``b`` the token of block ``b``'s output grid nearest ``point_physical`` is taken
    and its ``attn_q`` row is composed down through blocks ``b-1 … 0`` (as the backbone's
    composed ``attn_q`` maps, per head), so the result sums to the token's share of each pixel.

    Parameters
    ----------
    model
        A :class:`~napari_rat.model.ResolutionAwareTransformer` in mode ``"exact"`` or
        ``"local"``, or a model with such a ``.backbone`` (e.g. ``RATSegmentation``).
    x, spacing, mask
        The backbone's inputs (one image ``[B, C, *spatial]`` or a pyramid).
    point_physical
        The point, in the physical units of ``spacing`` (position = index x spacing).
    blocks
        Which blocks to report (default: all).
    level
        The pyramid level whose pixels the maps cover.
    batch_index
        The batch item.
    head
        One attention head, or ``None`` for the mean over heads.

    Returns
    -------
    list of numpy.ndarray
        One float array per requested block, shaped like the level's input pixels.
    """
    backbone = _backbone(model)
    n_blocks = len(backbone.sga_layers)
    blocks = list(range(n_blocks)) if blocks is None else [int(b) for b in blocks]
    if any(not 0 <= b < n_blocks for b in blocks):
        raise ValueError(f"blocks must lie in [0, {n_blocks}), got {blocks}")
    needed = max(blocks) + 1 if blocks else 0
    states: dict[int, tuple[Any, dict[str, Any]]] = {}

    def keep(block, lvl, layer, state):
        if lvl == level and block < needed:
            states[block] = (layer, _select_batch(state, batch_index))

    with _recording(backbone, keep):
        _run(backbone, x, spacing, mask)
    if len(states) < needed:
        raise ValueError(f"level {level} was not run; the input has fewer levels")

    results = []
    with torch.no_grad():
        for block in blocks:
            layer, state = states[block]
            index = _nearest_token(state, point_physical)
            rows = layer.attention_rows(state, torch.tensor([index]))[:, :, 0]  # (1, H, N_in)
            for below in range(block - 1, -1, -1):
                lower, lower_state = states[below]
                rows = lower.propagate_rows(lower_state, rows)
            rows = rows[0].mean(dim=0) if head is None else rows[0, head]
            results.append(_as_numpy(rows, states[0][1]["in_grid"]))
    return results


def native_grouping(
    model: torch.nn.Module,
    x: torch.Tensor | Sequence[torch.Tensor],
    spacing: Sequence[float] | Sequence[Sequence[float]] | None,
    *,
    mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    level: int = 0,
    batch_index: int = 0,
    head: int | None = None,
) -> list[np.ndarray]:
    """Each input pixel's group token at every block (the model's native segmentation).

    Every layer assigns each of its input tokens to the group token with the largest
    ``attn_q`` (mean over heads, or ``head``); the assignments are chained from the pixels up.
    Labels are flat indices into block ``b``'s output grid (``-1`` where no window covers a
    token, possible only with a stride larger than the kernel).

    Returns
    -------
    list of numpy.ndarray
        One int64 label array per block, shaped like the level's input pixels.
    """
    backbone = _backbone(model)
    assignments: dict[int, torch.Tensor] = {}
    grids: dict[int, tuple[int, ...]] = {}

    def keep(block, lvl, layer, state):
        if lvl == level:
            state = _select_batch(state, batch_index)
            assignments[block] = layer.group_assignment(state, head)[0]
            grids[block] = tuple(state["in_grid"])

    with _recording(backbone, keep):
        _run(backbone, x, spacing, mask)
    if len(assignments) < len(backbone.sga_layers):
        raise ValueError(f"level {level} was not run; the input has fewer levels")
    labels = None
    results = []
    for block in range(len(backbone.sga_layers)):
        assign = assignments[block]
        if labels is None:
            labels = assign
        else:
            labels = torch.where(labels >= 0, assign[labels.clamp(min=0)], labels)
        results.append(_as_numpy(labels, grids[0]))
    return results


def _nearest_token(state: dict[str, Any], point: Sequence[float]) -> int:
    grid, spacing = state["out_grid"], state["out_spacing"]
    if len(point) != len(grid):
        raise ValueError(f"point has {len(point)} coordinates; the data has {len(grid)} axes")
    idx = [
        min(max(int(round(float(p) / float(s))), 0), n - 1)
        for p, s, n in zip(point, spacing, grid, strict=True)
    ]
    return int(np.ravel_multi_index(idx, grid))


def _select_batch(state: dict[str, Any], index: int) -> dict[str, Any]:
    """The state of one batch item (tensors keep a batch axis of one)."""
    out = dict(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            if not 0 <= index < value.shape[0]:
                raise IndexError(f"batch_index {index} out of range for batch {value.shape[0]}")
            out[key] = value[index : index + 1]
    return out


def token_grid_shapes(model: torch.nn.Module, input_grid_shape: Sequence[int]) -> list[tuple]:
    """Each block's output grid for an input grid (what the labels of a block index)."""
    backbone = _backbone(model)
    shapes, shape = [], tuple(int(n) for n in input_grid_shape)
    for layer in backbone.sga_layers:
        shape = layer._calculate_strided_grid_shape(shape)
        shapes.append(tuple(shape))
    return shapes


__all__ = ["native_grouping", "point_attention", "token_grid_shapes"]
