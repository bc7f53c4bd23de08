"""Local spatial grouping attention and the windowed multi-resolution block, against brute-force
masked dense references written here."""

import math

import pytest
import torch
import torch.nn.functional as F
from RoSE import MultiRes_RoSE_Block
from spatial_grouping_attention import DenseSpatialGroupingAttention

from napari_rat.model import ResolutionAwareTransformer, sga_local
from napari_rat.model.multires_windowed import WindowedMultiResBlock
from napari_rat.model.sga_local import LocalSGA, _shift_rotation


class WindowMaskedDense(DenseSpatialGroupingAttention):
    """The package's dense layer with every query's logits masked outside its conv window."""

    def attn(self, k, q, q_grid_shape, input_grid_shape):
        def coords(grid):
            axes = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
            return torch.stack(axes, -1).reshape(-1, len(grid))

        kernel = torch.tensor(self.kernel_size)
        low = coords(q_grid_shape) * torch.tensor(self.stride) - (kernel - 1) // 2
        keys = coords(input_grid_shape)
        inside = ((keys[None] >= low[:, None]) & (keys[None] < low[:, None] + kernel)).all(-1)
        logits = torch.einsum("bhqd,bhkd->bhqk", q, k).masked_fill(~inside, -math.inf)
        return torch.softmax(logits, dim=-1)


def _pair(ref_cls, dims, kernel, stride):
    torch.manual_seed(0)
    kw = {"feature_dims": 32, "num_heads": 4, "spatial_dims": dims, "kernel_size": kernel,
          "stride": stride}  # fmt: skip
    ref = ref_cls(**kw)
    ours = LocalSGA(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _grads(layer, x, spacing, grid, mask, g):
    out = layer(x, spacing, grid, mask)["x_out"]
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((out * g).sum(), [x, *params.values()], allow_unused=True)
    return dict(zip(["x", *params], grads, strict=True))


CASES = [
    (2, (13, 10), (0.5, 0.7), (5, 3), (3, 2)),  # anisotropic kernel and stride
    (2, (12, 12), (1.0, 1.0), 4, 2),  # even kernel
    (2, (9, 9), (1.0, 1.0), 3, 1),  # stride 1 ("same" padding)
    (3, (4, 7, 6), (2.0, 0.5, 0.5), (3, 5, 5), (1, 2, 2)),
    (1, (20,), (0.4,), 5, 2),
]


@pytest.mark.parametrize(("dims", "grid", "spacing", "kernel", "stride"), CASES)
def test_local_matches_window_masked_dense(dims, grid, spacing, kernel, stride):
    ref, ours = _pair(WindowMaskedDense, dims, kernel, stride)
    x = torch.randn(2, math.prod(grid), 32, requires_grad=True)
    mask = torch.rand(2, *grid) > 0.8
    r, o = ref(x, spacing, grid, mask), ours(x, spacing, grid, mask)
    assert o["out_grid_shape"] == r["out_grid_shape"]
    assert (o["x_out"] - r["x_out"]).abs().max() <= 1e-4
    with torch.no_grad():  # the inference path (sparse products) gives the same
        assert (ours(x, spacing, grid, mask)["x_out"] - r["x_out"]).abs().max() <= 1e-4
    assert (o["attn_q"] - r["attn_q"]).abs().max() <= 1e-5
    assert (o["attn_k"] - r["attn_k"]).abs().max() <= 1e-5
    g = torch.randn_like(r["x_out"])
    gr, go = _grads(ref, x, spacing, grid, mask, g), _grads(ours, x, spacing, grid, mask, g)
    for name, a in gr.items():
        if a is None:
            continue
        assert (a - go[name]).abs().max() <= 1e-4 * max(1.0, a.abs().max().item()), name


@pytest.mark.parametrize(
    ("dims", "grid", "kernel", "stride"),
    [(2, (4, 3), 7, 3), (3, (3, 4, 2), (5, 7, 3), (2, 3, 1))],
)
def test_local_equals_package_dense_when_windows_cover_everything(dims, grid, kernel, stride):
    ref, ours = _pair(DenseSpatialGroupingAttention, dims, kernel, stride)
    x = torch.randn(2, math.prod(grid), 32)
    with torch.no_grad():
        r, o = ref(x, (0.5,) * dims, grid), ours(x, (0.5,) * dims, grid)
    assert (o["x_out"] - r["x_out"]).abs().max() <= 1e-4
    assert (o["attn_q"] - r["attn_q"]).abs().max() <= 1e-5


def test_inference_slabs_and_key_chunks_give_the_same_output(monkeypatch):
    _, ours = _pair(DenseSpatialGroupingAttention, 3, (3, 5, 5), (1, 2, 2))
    grid, spacing = (7, 9, 8), (2.0, 0.5, 0.5)
    x = torch.randn(1, math.prod(grid), 32)
    with torch.no_grad():
        whole = ours(x, spacing, grid, return_maps=False)["x_out"]
        ours.slab_elements = 64  # one query row per slab
        ours.chunk_tokens = 50  # keys projected and rotated a row at a time
        pieces = ours(x, spacing, grid, return_maps=False)["x_out"]
    assert (whole - pieces).abs().max() <= 1e-4


def test_shifted_rotation_equals_rotating_in_place():
    _, layer = _pair(DenseSpatialGroupingAttention, 2, 5, 2)
    k = torch.randn(1, 10 * 7, 32)
    with torch.no_grad():
        whole = layer.rose(k, (0.5, 0.3), (10, 7))
        part = layer.rose(k[:, 4 * 7 :], (0.5, 0.3), (6, 7))
        shifted = _shift_rotation(layer.rose, part, (0.5, 0.3), 4)
    assert (shifted - whole[:, 4 * 7 :]).abs().max() <= 1e-5


def test_dense_maps_refused_above_a_size(monkeypatch):
    _, ours = _pair(DenseSpatialGroupingAttention, 2, 5, 2)
    monkeypatch.setattr(sga_local, "MAX_DENSE_MAP_ELEMENTS", 100)
    x = torch.randn(1, 144, 32)
    with torch.no_grad():
        assert "attn_q" not in ours(x, (1.0, 1.0), (12, 12), return_maps=False)
        with pytest.raises(ValueError, match="attention_maps"):
            ours(x, (1.0, 1.0), (12, 12), return_maps=True)


@pytest.mark.parametrize("dims", [2, 3])
def test_local_rat_shapes_and_gradients(dims):
    torch.manual_seed(0)
    model = ResolutionAwareTransformer(
        spatial_dims=dims, input_features=1, feature_dims=32, num_heads=4, num_blocks=2,
        sga_kernel_size=(3, 5, 5)[-dims:], stride=(1, 2, 3)[-dims:],
        sga_attention_type="local", return_attention_maps=False,
    )  # fmt: skip
    grid = (4, 12, 10)[-dims:]
    x = torch.randn(1, 1, *grid, requires_grad=True)
    out = model(x, input_spacing=(2.0, 0.5, 0.4)[-dims:])
    assert out[0]["out_grid_shape"] == model.output_grid_shape(grid)
    assert out[0]["x_out"].shape == (1, math.prod(model.output_grid_shape(grid)), 32)
    out[0]["x_out"].square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.sga_layers[0].kv.parameters())


# --------------------------------------------------------------------------- windowed MR block
MR_KW = {"feature_dims": 32, "num_heads": 4, "spatial_dims": 2, "rotary_ratio": 0.5,
         "learnable_scale": True, "initial_scaling": "log"}  # fmt: skip
GRIDS = [(10, 9), (5, 5)]
SPACINGS = [(0.5, 0.7), (1.0, 1.4)]


def _mr_pair(**kwargs):
    torch.manual_seed(0)
    ref = MultiRes_RoSE_Block(**MR_KW).eval()
    ours = WindowedMultiResBlock(**MR_KW, **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _brute_force(ref, xs, lead, window):
    """The package block with its attention masked to same-window pairs (plus leading tokens)."""
    ids = []
    for grid, spacing in zip(GRIDS, SPACINGS, strict=True):
        for i in range(grid[0]):
            for j in range(grid[1]):
                ids.append(
                    (math.floor(i * spacing[0] / window[0]), math.floor(j * spacing[1] / window[1]))
                )
    n_lead = 0 if lead is None else lead.shape[1]
    n = len(ids) + n_lead
    allow = torch.zeros(n, n, dtype=torch.bool)
    allow[:n_lead], allow[:, :n_lead] = True, True
    for a, ia in enumerate(ids):
        for c, ic in enumerate(ids):
            allow[a + n_lead, c + n_lead] = ia == ic
    sdpa = F.scaled_dot_product_attention

    def masked(q, k, v, dropout_p=0.0, scale=None, **_):
        return sdpa(q, k, v, attn_mask=allow, dropout_p=dropout_p, scale=scale)

    F.scaled_dot_product_attention = masked
    try:
        if lead is None:
            return ref(xs, SPACINGS, GRIDS)
        return ref([lead, *xs], SPACINGS, GRIDS, leading_tokens=True)
    finally:
        F.scaled_dot_product_attention = sdpa


@pytest.mark.parametrize("leading", [False, True])
@pytest.mark.parametrize("chunk", [1 << 24, 100])
def test_windowed_block_matches_masked_reference_above_threshold(leading, chunk):
    ref, ours = _mr_pair(window_threshold=10, window_size=4)
    ours.chunk_elements = chunk
    xs = [torch.randn(2, math.prod(g), 32) for g in GRIDS]
    lead = torch.randn(2, 3, 32) if leading else None
    with torch.no_grad():
        expected = _brute_force(ref, xs, lead, (4 * 0.5, 4 * 0.7))
        got = ours(xs if lead is None else [lead, *xs], SPACINGS, GRIDS, leading_tokens=leading)
    assert len(got) == len(expected)
    for e, o in zip(expected, got, strict=True):
        assert (e - o).abs().max() <= 1e-5


def test_windowed_block_is_the_package_block_below_threshold():
    ref, ours = _mr_pair()
    xs = [torch.randn(1, math.prod(g), 32) for g in GRIDS]
    with torch.no_grad():
        for e, o in zip(ref(xs, SPACINGS, GRIDS), ours(xs, SPACINGS, GRIDS), strict=True):
            assert torch.equal(e, o)
        single = torch.randn(1, 90, 32)
        assert torch.equal(ref(single, SPACINGS[0], GRIDS[0]), ours(single, SPACINGS[0], GRIDS[0]))


def test_windowed_block_physical_window_and_gradients():
    _, ours = _mr_pair(window_threshold=10, window_physical_size=(2.0, 2.8))
    assert ours.physical_window(SPACINGS) == (2.0, 2.8)
    ours.window_physical_size = None
    ours.window_size = (4, 2)
    assert ours.physical_window(SPACINGS) == pytest.approx((2.0, 1.4))
    x0 = torch.randn(1, 90, 32, requires_grad=True)
    out = ours([x0, torch.randn(1, 25, 32)], SPACINGS, GRIDS)
    sum(o.sum() for o in out).backward()
    assert torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
