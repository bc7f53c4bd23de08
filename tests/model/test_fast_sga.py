"""The exact (tiled, linear-memory) spatial grouping attention against the package layer."""

import math

import pytest
import torch
from spatial_grouping_attention import DenseSpatialGroupingAttention

from napari_rat.model import ResolutionAwareTransformer
from napari_rat.model.fast_sga import set_attention_mode
from napari_rat.model.sga_exact import ExactSGA, exact_grouping_attention


def _dense_grouping(q, k, v, eps):
    a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    return (a / (a.sum(dim=-2, keepdim=True) + eps)) @ v


@pytest.mark.parametrize("tile", [1 << 19, 64, 12])  # one tile, key blocks, query blocks too
def test_kernel_matches_dense_values_and_gradients(tile):
    torch.manual_seed(0)
    q = torch.randn(2, 3, 37, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 53, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 53, 8, dtype=torch.float64, requires_grad=True)
    eps = torch.finfo(torch.float64).eps
    out, lse, colsum = exact_grouping_attention(q, k, v, eps, tile)
    ref = _dense_grouping(q, k, v, eps)
    assert (out - ref).abs().max() < 1e-12
    s = q @ k.transpose(-1, -2)
    assert torch.allclose(lse, torch.logsumexp(s, -1))
    assert torch.allclose(colsum, torch.softmax(s, -1).sum(-2))
    g = torch.randn_like(out)
    expected = torch.autograd.grad((ref * g).sum(), (q, k, v))
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for e, o in zip(expected, got, strict=True):
        assert (e - o).abs().max() < 1e-10


@pytest.mark.parametrize("tile", [1 << 19, 12])
def test_kernel_gradcheck(tile):
    torch.manual_seed(1)
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    # a large eps makes the column normalisation's own gradient visible
    assert torch.autograd.gradcheck(
        lambda a, b, c: exact_grouping_attention(a, b, c, 1e-2, tile)[0], (q, k, v)
    )


def test_kernel_logits_far_below_their_bound():
    # |q| max|k| far above every actual logit (a long key orthogonal to all queries): the
    # bounded first pass underflows and the fallback recomputes those rows exactly.
    torch.manual_seed(2)
    q = torch.zeros(1, 1, 6, 8)
    q[..., :4] = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1) * 50
    k = torch.zeros(1, 1, 9, 8)
    k[..., :4] = torch.randn(9, 4) * 0.05
    k[..., 0, 7] = 100.0
    v = torch.randn(1, 1, 9, 8)
    out, lse, _ = exact_grouping_attention(q, k, v)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref = _dense_grouping(q.double(), k.double(), v.double(), torch.finfo(torch.float32).eps)
    assert (out.double() - ref).abs().max() < 1e-5


CASES = [
    (2, (13, 11), (0.7, 0.3), 5, None),
    (2, (9, 9), (1.0, 1.0), 3, 1),  # stride 1: "same" padding
    (3, (5, 9, 7), (2.0, 0.5, 0.5), (3, 5, 5), (1, 2, 2)),
    (1, (23,), (0.4,), 5, 2),
]


def _pair(dims, kernel, stride, cls):
    torch.manual_seed(0)
    kw = {
        "feature_dims": 32,
        "num_heads": 4,
        "spatial_dims": dims,
        "kernel_size": kernel,
        "stride": stride,
    }
    ref = DenseSpatialGroupingAttention(**kw)
    ours = cls(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("dims", "grid", "spacing", "kernel", "stride"), CASES)
def test_layer_matches_package(dims, grid, spacing, kernel, stride, masked):
    ref, ours = _pair(dims, kernel, stride, ExactSGA)
    x = torch.randn(2, math.prod(grid), 32, requires_grad=True)
    mask = (torch.rand(2, *grid) > 0.7) if masked else None
    r = ref(x, spacing, grid, mask)
    o = ours(x, spacing, grid, mask)
    assert o["out_grid_shape"] == r["out_grid_shape"]
    assert o["out_spacing"] == pytest.approx(r["out_spacing"])
    assert (o["x_out"] - r["x_out"]).abs().max() <= 1e-4
    assert (o["attn_q"] - r["attn_q"]).abs().max() <= 1e-5
    assert (o["attn_k"] - r["attn_k"]).abs().max() <= 1e-5
    g = torch.randn_like(r["x_out"])
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    gr = torch.autograd.grad((r["x_out"] * g).sum(), [x, *ref.parameters()], allow_unused=True)
    go = torch.autograd.grad((o["x_out"] * g).sum(), [x, *ours.parameters()], allow_unused=True)
    for name, a, b in zip(names, gr, go, strict=True):
        if a is None:
            assert b is None or b.abs().max() == 0, name
            continue
        assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item()), name


def test_layer_without_maps_returns_only_the_contract():
    _, ours = _pair(2, 5, None, ExactSGA)
    out = ours(torch.randn(1, 100, 32), (1.0, 1.0), (10, 10), return_maps=False)
    assert set(out) == {"x_out", "out_grid_shape", "out_spacing"}


def test_full_rat_exact_equals_dense():
    torch.manual_seed(0)
    kw = {"spatial_dims": 2, "input_features": 2, "feature_dims": 32, "num_heads": 4,
          "num_blocks": 2, "sga_kernel_size": 5}  # fmt: skip
    dense = ResolutionAwareTransformer(**kw).eval()
    exact = ResolutionAwareTransformer(**kw, sga_attention_type="exact").eval()
    exact.load_state_dict(dense.state_dict(), strict=True)
    x = [torch.randn(1, 2, 24, 20), torch.randn(1, 2, 12, 10)]
    spacing = [(0.5, 0.7), (1.0, 1.4)]
    mask = [torch.rand(1, 24, 20) > 0.8, None]
    with torch.no_grad():
        ref = dense(x, spacing, mask)
        out = exact(x, spacing, mask)
        fast = exact(x, spacing, mask, return_attention_maps=False)
    for r, o, f in zip(ref, out, fast, strict=True):
        assert (r["x_out"] - o["x_out"]).abs().max() <= 1e-4
        assert (r["attn_q"] - o["attn_q"]).abs().max() <= 1e-5
        assert (r["attn_k"] - o["attn_k"]).abs().max() <= 1e-5
        assert torch.equal(o["x_out"], f["x_out"])
        assert "attn_q" not in f


def test_set_attention_mode_switches_in_place():
    torch.manual_seed(0)
    kw = {"spatial_dims": 2, "input_features": 1, "feature_dims": 32, "num_heads": 4,
          "num_blocks": 1, "sga_kernel_size": 5}  # fmt: skip
    model = ResolutionAwareTransformer(**kw).eval()
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        ref = model(x)[0]["x_out"]
        set_attention_mode(model, "exact")
        assert isinstance(model.sga_layers[0], ExactSGA)
        assert (model(x)[0]["x_out"] - ref).abs().max() <= 1e-4
        set_attention_mode(model, "dense")
        assert type(model.sga_layers[0]) is DenseSpatialGroupingAttention
    with pytest.raises(ValueError, match="unknown attention mode"):
        set_attention_mode(model, "fast")
