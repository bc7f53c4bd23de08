"""Forward and backward contract of the backbone and the segmentation model."""

import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.model import (
    RATSegmentation,
    ResolutionAwareTransformer,
    available_models,
    build_model,
)

SMALL = {"feature_dims": 16, "num_heads": 2, "num_blocks": 2, "sga_kernel_size": 3, "iters": 2}

CASES = [
    pytest.param(1, (1, 1, 40), id="1d"),
    pytest.param(2, (2, 1, 19, 13), id="2d"),
    pytest.param(3, (1, 1, 5, 12, 9), id="3d"),
]


def _half(x):
    sl = (slice(None), slice(None)) + tuple(slice(None, None, 2) for _ in x.shape[2:])
    return x[sl].contiguous()


@pytest.mark.parametrize(("dims", "shape"), CASES)
def test_backbone_single_and_pyramid_forward_backward(dims, shape):
    model = ResolutionAwareTransformer(spatial_dims=dims, input_features=1, **SMALL)
    x = torch.randn(*shape, requires_grad=True)
    out = model(x, return_attention_maps=False)
    assert len(out) == 1 and out[0]["x_out"].shape[0] == shape[0]
    assert out[0]["x_out"].shape[1] == torch.Size(out[0]["out_grid_shape"]).numel()
    assert tuple(out[0]["out_grid_shape"]) == model.output_grid_shape(shape[2:])
    pyramid = model([x, _half(x)], input_spacing=[(1.0,) * dims, (2.0,) * dims])
    assert len(pyramid) == 2
    loss = sum(level["x_out"].square().mean() for level in pyramid)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2


@pytest.mark.parametrize(("dims", "shape"), CASES)
def test_spacing_changes_outputs(dims, shape):
    torch.manual_seed(1)
    model = ResolutionAwareTransformer(spatial_dims=dims, input_features=1, **SMALL).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        a = model(x, input_spacing=(1.0,) * dims, return_attention_maps=False)[0]["x_out"]
        b = model(x, input_spacing=(3.0,) * dims, return_attention_maps=False)[0]["x_out"]
        c = model(x, input_spacing=(1.0,) * dims, return_attention_maps=False)[0]["x_out"]
    assert torch.equal(a, c)
    assert (a - b).abs().max() > 1e-4


def test_leading_tokens_join_attention_and_get_gradients():
    torch.manual_seed(0)
    model = ResolutionAwareTransformer(spatial_dims=2, input_features=1, leading_tokens=3, **SMALL)
    x = torch.randn(2, 1, 12, 12)
    out = model([x, _half(x)], input_spacing=[(1.0, 1.0), (2.0, 2.0)])
    lead = out[0]["leading_tokens"]
    assert lead.shape == (2, 3, 16)
    assert out[1]["leading_tokens"] is lead
    (lead.sum() + out[0]["x_out"].sum()).backward()
    assert model.leading_tokens.grad is not None and model.leading_tokens.grad.abs().sum() > 0
    # The leading tokens take part in attention: changing them changes the image tokens.
    with torch.no_grad():
        before = model(x)[0]["x_out"].clone()
        model.leading_tokens.add_(torch.randn_like(model.leading_tokens))
        after = model(x)[0]["x_out"]
    assert (before - after).abs().max() > 1e-5


def test_masks_per_level():
    model = ResolutionAwareTransformer(spatial_dims=2, input_features=1, **SMALL).eval()
    x = torch.randn(1, 1, 16, 16)
    m0 = torch.zeros(1, 16, 16, dtype=torch.bool)
    m0[:, 8:] = True
    m1 = torch.zeros(1, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        out = model([x, _half(x)], input_spacing=[(1, 1), (2, 2)], mask=[m0, m1])
        plain = model([x, _half(x)], input_spacing=[(1, 1), (2, 2)])
    assert (out[0]["x_out"] - plain[0]["x_out"]).abs().max() > 1e-4
    assert out[0]["mask"] is None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.randn(1, 2, 8, 8), "channels"),
        (torch.randn(1, 1, 8), "spatial dimensions"),
    ],
)
def test_bad_input_is_named(bad, message):
    model = ResolutionAwareTransformer(spatial_dims=2, input_features=1, **SMALL)
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_pyramid_needs_one_spacing_per_level():
    model = ResolutionAwareTransformer(spatial_dims=2, input_features=1, **SMALL)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="one spacing per level"):
        model([x, x], input_spacing=(1.0, 1.0))


@pytest.mark.parametrize(("dims", "shape"), CASES)
@pytest.mark.parametrize("boundary", [True, False])
def test_segmentation_logits_at_input_resolution(dims, shape, boundary):
    cfg = ModelConfig(
        spatial_dims=dims,
        input_features=1,
        **SMALL,
        head={"class_names": ["bg", "a", "b"], "boundary": boundary, "decoder_dims": 8},
    )
    model = build_model(cfg)
    assert isinstance(model, RATSegmentation)
    x = torch.randn(*shape)
    logits = model([x, _half(x)], input_spacing=[(1.0,) * dims, (2.0,) * dims])
    assert logits[0].shape == (shape[0], 3 + boundary, *shape[2:])
    assert logits[1].shape == (shape[0], 3 + boundary, *_half(x).shape[2:])
    logits[0].mean().backward()
    assert model.backbone.init_proj.weight.grad.abs().sum() > 0


def test_registry_builds_backbone_and_rejects_unknown():
    model = build_model(ModelConfig(variant="rat", input_features=1, **SMALL))
    assert isinstance(model, ResolutionAwareTransformer)
    cfg = ModelConfig(input_features=1, **SMALL)
    object.__setattr__(cfg, "variant", "nope")
    with pytest.raises(ValueError, match="unknown model variant"):
        build_model(cfg)


def test_estimated_parameters_match_built_model():
    from napari_rat.model import num_parameters

    for kwargs in [
        {"spatial_dims": 2, "feature_dims": 32, "num_heads": 4, "num_blocks": 2},
        {"spatial_dims": 3, "feature_dims": 64, "num_heads": 8, "sga_kernel_size": [3, 5, 5]},
    ]:
        cfg = ModelConfig(variant="rat", input_features=1, **kwargs)
        assert cfg.estimated_parameters() == num_parameters(build_model(cfg))


ATTENTION_MODES = ["dense", "exact", "local", "sparse"]
CONTRACT_INPUTS = [
    pytest.param(2, (2, 1, 13, 10), id="2d"),
    pytest.param(3, (1, 1, 5, 9, 8), id="3d"),
]


def _output_tensors(out):
    """The tensors a forward returns: logits (a segmentation model) or each level's x_out."""
    return [level if isinstance(level, torch.Tensor) else level["x_out"] for level in out]


@pytest.mark.parametrize(("dims", "shape"), CONTRACT_INPUTS)
@pytest.mark.parametrize("mode", ATTENTION_MODES)
@pytest.mark.parametrize("variant", available_models())
def test_every_model_in_every_attention_mode_builds_runs_saves_and_loads(
    variant, mode, dims, shape, tmp_path
):
    from napari_rat.model import load_checkpoint, save_checkpoint

    if mode == "sparse":
        pytest.importorskip("natten", reason="the sparse layer is the package's NATTEN layer")
    cfg = ModelConfig(
        variant=variant,
        spatial_dims=dims,
        input_features=1,
        sga_attention_type=mode,
        head={"decoder_dims": 8},
        **SMALL,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(*shape)
    pyramid = [x, _half(x)]
    spacing = [(2.0,) + (0.5,) * (dims - 1), (4.0,) + (1.0,) * (dims - 1)]
    with torch.no_grad():
        before = _output_tensors(model(pyramid, input_spacing=spacing))
    assert len(before) == 2
    for level, out in zip(pyramid, before, strict=True):
        assert out.shape[0] == shape[0] and out.numel() > 0 and torch.isfinite(out).all()
        if isinstance(model, RATSegmentation):
            assert out.shape[2:] == level.shape[2:]
    path = save_checkpoint(model, tmp_path / f"{variant}-{mode}.safetensors", cfg)
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert loaded.checkpoint_info.model_config == cfg
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    with torch.no_grad():
        after = _output_tensors(loaded(pyramid, input_spacing=spacing))
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
