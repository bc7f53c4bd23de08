"""Our RAT against the reference implementation: strict state_dict loading and equal outputs."""

import pytest
import torch

ref_pkg = pytest.importorskip("resolution_aware_transformer")

from napari_rat.model import ResolutionAwareTransformer  # noqa: E402

TINY = {"feature_dims": 32, "num_heads": 4, "num_blocks": 2, "sga_kernel_size": 5}


def _pair(**kwargs):
    torch.manual_seed(0)
    ref = ref_pkg.ResolutionAwareTransformer(**kwargs).eval()
    ours = ResolutionAwareTransformer(**kwargs).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ref, ours


def _assert_same(ref_out, our_out, maps=True):
    assert len(ref_out) == len(our_out)
    for r, o in zip(ref_out, our_out, strict=True):
        assert o["x_out"].shape == r["x_out"].shape
        assert (o["x_out"] - r["x_out"]).abs().max() <= 1e-4
        assert tuple(o["out_grid_shape"]) == tuple(r["out_grid_shape"])
        assert tuple(o["out_spacing"]) == pytest.approx(tuple(r["out_spacing"]))
        if maps:
            assert (o["attn_q"] - r["attn_q"]).abs().max() <= 1e-4
            assert (o["attn_k"] - r["attn_k"]).abs().max() <= 1e-4


def test_default_constructor_state_dict_matches_reference_names():
    ref = ref_pkg.ResolutionAwareTransformer()
    ours = ResolutionAwareTransformer()
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert [v.shape for v in ref.state_dict().values()] == [
        v.shape for v in ours.state_dict().values()
    ]


def test_2d_single_image_non_square_anisotropic():
    ref, ours = _pair(spatial_dims=2, input_features=2, **TINY)
    x = torch.randn(2, 2, 23, 17)
    with torch.no_grad():
        _assert_same(ref(x, input_spacing=(0.7, 0.3)), ours(x, input_spacing=(0.7, 0.3)))


def test_2d_pyramid_with_per_level_spacing():
    ref, ours = _pair(spatial_dims=2, input_features=1, **TINY)
    x0 = torch.randn(1, 1, 24, 20)
    x1 = torch.nn.functional.avg_pool2d(x0, 2)
    spacing = [(0.5, 0.5), (1.0, 1.0)]
    with torch.no_grad():
        _assert_same(ref([x0, x1], input_spacing=spacing), ours([x0, x1], input_spacing=spacing))


def test_3d_volume_anisotropic():
    ref, ours = _pair(
        spatial_dims=3,
        input_features=1,
        feature_dims=32,
        num_heads=4,
        num_blocks=2,
        sga_kernel_size=(3, 5, 5),
        stride=(1, 2, 2),
    )
    x = torch.randn(1, 1, 6, 14, 11)
    with torch.no_grad():
        _assert_same(ref(x, input_spacing=(2.0, 0.5, 0.5)), ours(x, input_spacing=(2.0, 0.5, 0.5)))


def test_mask_matches_reference():
    ref, ours = _pair(spatial_dims=2, input_features=1, **TINY)
    x = torch.randn(1, 1, 20, 20)
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[:, :5] = True
    with torch.no_grad():
        _assert_same(ref(x, mask=mask.clone()), ours(x, mask=mask.clone()))
        unmasked = ours(x)
    assert (unmasked[0]["x_out"] - ours(x, mask=mask)[0]["x_out"]).abs().max() > 1e-3


def test_attention_maps_flag_drops_maps_and_keeps_output():
    ref, ours = _pair(spatial_dims=2, input_features=1, **TINY)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        with_maps = ours(x)
        without = ours(x, return_attention_maps=False)
    assert "attn_q" in with_maps[0] and "attn_q" not in without[0]
    assert torch.equal(with_maps[0]["x_out"], without[0]["x_out"])
    n_in = 16 * 16
    assert with_maps[0]["attn_q"].shape[-1] == n_in  # composed down to the input pixels


NON_DEFAULT = {
    "spatial_dims": 3,
    "input_features": 2,
    "proj_kernel_size": (1, 3, 3),
    "proj_padding": 0,
    "feature_dims": 16,
    "num_blocks": 2,
    "sga_kernel_size": (3, 5, 5),
    "stride": (1, 2, 2),
    "num_heads": 2,
    "iters": 2,
    "mlp_ratio": 2.5,
    "mlp_dropout": 0.1,
    "mlp_bias": False,
    "mlp_activation": torch.nn.ReLU,
    "qkv_bias": False,
    "base_theta": 100.0,
    "learnable_rose": False,
    "learnable_rose_scaling": False,
    "rose_initial_scaling": "rope",
    "init_jitter_std": 0.01,
    "rotary_ratio": 0.25,
    "frequency_scaling": "linear",
    "leading_tokens": 2,
    "spacing": (2.0, 0.5, 0.5),
}


def _constructor_attributes(model: torch.nn.Module) -> dict:
    """What the constructor stored on ``model``: no torch.nn.Module bookkeeping, submodule or
    tensor, so an attribute the reference adds later is compared without editing this test."""
    bookkeeping = set(vars(torch.nn.Module()))
    return {
        name: value
        for name, value in vars(model).items()
        if name not in bookkeeping and not isinstance(value, torch.nn.Module | torch.Tensor)
    }


@pytest.mark.parametrize("kwargs", [{}, NON_DEFAULT], ids=["defaults", "non-defaults"])
def test_every_attribute_the_reference_keeps_is_ours_with_the_same_value(kwargs):
    ref = ref_pkg.ResolutionAwareTransformer(**kwargs)
    ours = ResolutionAwareTransformer(**kwargs)
    expected = _constructor_attributes(ref)
    # The introspection finds the constructor arguments the reference keeps.
    assert {"mlp_ratio", "rose_initial_scaling", "spatial_dims", "stride"} <= set(expected)
    missing = sorted(set(expected) - set(vars(ours)))
    assert not missing, f"attributes of the reference missing on ours: {missing}"
    differing = {
        name: (value, getattr(ours, name))
        for name, value in expected.items()
        if getattr(ours, name) != value
    }
    assert not differing, f"attributes with another value than the reference's: {differing}"
