"""Attention maps on demand against the backbone's dense composed maps, and their memory bound."""

import math

import numpy as np
import pytest
import torch

from napari_rat.model import RATSegmentation, ResolutionAwareTransformer, sga_local
from napari_rat.model.attention_maps import native_grouping, point_attention, token_grid_shapes
from napari_rat.model.fast_sga import set_attention_mode

SMALL = {"input_features": 1, "feature_dims": 32, "num_heads": 4, "num_blocks": 2,
         "sga_kernel_size": 5}  # fmt: skip


def _model(mode, dims):
    torch.manual_seed(0)
    return ResolutionAwareTransformer(spatial_dims=dims, sga_attention_type=mode, **SMALL).eval()


def _layer_maps(model, x, spacing):
    """Each grouping layer's own attn_q (before the backbone composes them), via hooks."""
    maps = []
    hooks = [
        layer.register_forward_hook(lambda m, i, out: maps.append(out["attn_q"].clone()))
        for layer in model.sga_layers
    ]
    try:
        with torch.no_grad():
            out = model(x, spacing, return_attention_maps=True)
    finally:
        for h in hooks:
            h.remove()
    return out, maps


CASES = [("exact", (17, 15), (0.5, 0.7)), ("local", (23, 19), (0.5, 0.7)),
         ("local", (7, 9, 8), (2.0, 0.5, 0.5))]  # fmt: skip


@pytest.mark.parametrize(("mode", "grid", "spacing"), CASES)
def test_point_attention_equals_composed_dense_maps(mode, grid, spacing):
    model = _model(mode, len(grid))
    x = torch.randn(2, 1, *grid)
    out, layer_maps = _layer_maps(model, x, spacing)
    point = (3.1, 4.2, 1.0)[: len(grid)]
    got = point_attention(model, x, spacing, point, batch_index=1)
    assert len(got) == 2 and all(g.shape == grid for g in got)
    # block 0: the row of layer 0's attn_q; block 1: the backbone's composed map
    spacings = [model.sga_layers[0]._calculate_strided_spacing(spacing)]
    spacings.append(model.sga_layers[1]._calculate_strided_spacing(spacings[0]))
    grids = token_grid_shapes(model, grid)
    composed = [layer_maps[0], out[0]["attn_q"]]
    for block in range(2):
        idx = [
            min(max(round(p / s), 0), n - 1)
            for p, s, n in zip(point, spacings[block], grids[block], strict=True)
        ]
        row = composed[block][1, :, np.ravel_multi_index(idx, grids[block])]
        assert np.abs(row.mean(0).reshape(grid).numpy() - got[block]).max() < 1e-6
    one_head = point_attention(model, x, spacing, point, batch_index=1, head=2, blocks=[1])
    row = out[0]["attn_q"][1, 2, np.ravel_multi_index(idx, grids[1])]
    assert np.abs(row.reshape(grid).numpy() - one_head[0]).max() < 1e-6


@pytest.mark.parametrize(("mode", "grid", "spacing"), CASES)
def test_native_grouping_chains_per_layer_argmax(mode, grid, spacing):
    model = _model(mode, len(grid))
    x = torch.randn(1, 1, *grid)
    _, layer_maps = _layer_maps(model, x, spacing)
    labels = native_grouping(model, x, spacing)
    first = layer_maps[0][0].mean(0).argmax(0)  # each pixel's group token at block 0
    second = layer_maps[1][0].mean(0).argmax(0)
    assert np.array_equal(labels[0], first.reshape(grid).numpy())
    assert np.array_equal(labels[1], second[first].reshape(grid).numpy())
    grids = token_grid_shapes(model, grid)
    assert labels[1].max() < math.prod(grids[1]) and labels[1].min() >= 0
    by_head = native_grouping(model, x, spacing, head=0)
    assert np.array_equal(by_head[0], layer_maps[0][0, 0].argmax(0).reshape(grid).numpy())


def test_maps_work_where_dense_maps_are_refused(monkeypatch):
    # Dense maps above a (here tiny) size are refused; the on-demand maps still work.
    monkeypatch.setattr(sga_local, "MAX_DENSE_MAP_ELEMENTS", 1000)
    model = _model("local", 2)
    x = torch.randn(1, 1, 30, 27)
    with pytest.raises(ValueError, match="attention_maps"), torch.no_grad():
        model(x, return_attention_maps=True)
    model.sga_layers[0].slab_elements = 10000  # a few slabs per layer
    maps = point_attention(model, x, (1.0, 1.0), (15.0, 13.0))
    assert all(m.shape == (30, 27) and np.isfinite(m).all() for m in maps)
    assert all(m.sum() > 0 for m in maps)
    labels = native_grouping(model, x, (1.0, 1.0))
    assert labels[0].shape == (30, 27) and labels[0].min() >= 0


def test_segmentation_model_and_mode_switch():
    torch.manual_seed(0)
    seg = RATSegmentation({"spatial_dims": 2, **SMALL}).eval()
    x = torch.randn(1, 1, 20, 20)
    with pytest.raises(ValueError, match="set_attention_mode"):
        native_grouping(seg, x, None)
    set_attention_mode(seg, "local")
    labels = native_grouping(seg, x, None)
    assert len(labels) == 2 and labels[1].shape == (20, 20)
    assert len(point_attention(seg, x, None, (5.0, 5.0), blocks=[0])) == 1
    with pytest.raises(ValueError, match="blocks"):
        point_attention(seg, x, None, (5.0, 5.0), blocks=[7])
