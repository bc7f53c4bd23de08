"""The Resolution Aware Transformer backbone.

Same constructor arguments, attributes, parameter names and forward contract as the reference
implementation (``resolution-aware-transformer==2025.9.29.2036``), so a reference ``state_dict``
loads with ``strict=True`` and gives the same outputs, and every constructor argument the
reference keeps (``model.mlp_ratio``, ``model.rose_initial_scaling``, ...) is there with the same
value. Differences, all additive:

- ``sga_attention_type`` also accepts ``"exact"`` (the dense maths at linear memory) and
  ``"local"`` (windowed, linear in pixels); see :mod:`napari_rat.model.layers`.
- ``return_attention_maps`` (constructor default ``True``, as the reference; overridable per
  call) turns the composed ``attn_q``/``attn_k`` maps off for speed.
- ``leading_tokens`` work: the learned tokens join every multi-resolution block (not rotated,
  not grouped) and come back in each level's dict under ``"leading_tokens"``.
- ``return_intermediates=True`` adds each level's token features after the projection and
  after every block (``"intermediates"`` and ``"intermediate_grid_shapes"``), for decoders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from spatial_grouping_attention.utils import to_tuple

from napari_rat.model.layers import build_mr_block, build_sga_layer

_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
_POOL = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}


class ResolutionAwareTransformer(torch.nn.Module):
    """RAT: a conv projection, then ``num_blocks`` pairs of spatial grouping attention and
    multi-resolution RoSE attention.

    Parameters are those of the reference (see its docstring); in short: ``spatial_dims``
    (1, 2 or 3), ``input_features`` (channels), ``feature_dims``, ``num_blocks``, ``num_heads``,
    ``sga_kernel_size`` and ``stride`` (the grouping conv; stride defaults to half the kernel),
    ``iters`` (grouping iterations), the MLP and RoSE settings, ``leading_tokens`` and the default
    physical ``spacing``. ``spacing_blind`` (not in the reference) makes a resolution-blind
    baseline: level 0 is always told ``spacing`` whatever ``input_spacing`` says, and further
    pyramid levels keep their spacing ratios to level 0.

    Forward
    -------
    ``forward(x, input_spacing=None, mask=None)`` with ``x`` a tensor ``[B, C, *spatial]`` or a
    list of them (an image pyramid), ``input_spacing`` one tuple or one per level, ``mask`` a
    boolean ``[B, *spatial]`` (or one per level; ``True`` = masked out). Returns one dict per
    level with ``x_out [B, N, D]``, ``out_spacing``, ``out_grid_shape``, ``mask`` and, when maps
    are on, ``attn_q``/``attn_k`` ``[B, heads, N_out, N_in]`` composed down to the input pixels.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        input_features: int = 3,
        proj_kernel_size: int | Sequence[int] = 7,
        proj_padding: int | Sequence[int] | Literal["same"] = "same",
        feature_dims: int = 128,
        num_blocks: int = 4,
        sga_attention_type: str | Sequence[str] = "dense",
        sga_kernel_size: int | Sequence[int] = 7,
        stride: int | Sequence[int] | None = None,
        num_heads: int = 16,
        iters: int = 3,
        mlp_ratio: float | int = 4,
        mlp_dropout: float = 0.0,
        mlp_bias: bool = True,
        mlp_activation: type[torch.nn.Module] = torch.nn.GELU,
        qkv_bias: bool = True,
        base_theta: float = 1e4,
        learnable_rose: bool = True,
        learnable_rose_scaling: bool = True,
        rose_initial_scaling: str | None = "log",
        init_jitter_std: float = 0.02,
        rotary_ratio: float = 0.5,
        frequency_scaling: str = "sqrt",
        leading_tokens: int = 0,
        spacing: float | Sequence[float] | None = None,
        *,
        return_attention_maps: bool = True,
        spacing_blind: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.input_features = input_features
        self.proj_kernel_size = to_tuple(proj_kernel_size, spatial_dims, int, allow_nested=False)
        if proj_padding == "same":
            self.proj_padding = tuple(k // 2 for k in self.proj_kernel_size)
        else:
            self.proj_padding = to_tuple(proj_padding, spatial_dims, int, allow_nested=False)
        self.feature_dims = feature_dims
        self.num_blocks = num_blocks
        self.sga_attention_type = to_tuple(sga_attention_type, num_blocks, allow_nested=False)
        self.sga_kernel_size = to_tuple(sga_kernel_size, spatial_dims, int, allow_nested=False)
        if stride is None:
            self.stride = tuple(max(1, k // 2) for k in self.sga_kernel_size)
        else:
            self.stride = to_tuple(stride, spatial_dims, int, allow_nested=False)
        self.num_heads = num_heads
        self.iters = iters
        # Kept as attributes, as the reference keeps them, so code written against it works.
        self.mlp_ratio = mlp_ratio
        self.mlp_dropout = mlp_dropout
        self.mlp_bias = mlp_bias
        self.mlp_activation = mlp_activation
        self.qkv_bias = qkv_bias
        self.base_theta = base_theta
        self.learnable_rose = learnable_rose
        self.init_jitter_std = init_jitter_std
        self.rotary_ratio = rotary_ratio
        self.frequency_scaling = frequency_scaling
        self.learnable_rose_scaling = learnable_rose_scaling
        self.rose_initial_scaling = rose_initial_scaling
        self.return_attention_maps = return_attention_maps
        self._default_spacing = to_tuple(1.0 if spacing is None else spacing, spatial_dims)
        self.spacing_blind = spacing_blind
        if leading_tokens > 0:
            self.leading_tokens = torch.nn.Parameter(torch.rand((1, leading_tokens, feature_dims)))
        else:
            self.leading_tokens = None

        self.init_proj = _CONV[spatial_dims](
            in_channels=input_features,
            out_channels=feature_dims,
            kernel_size=proj_kernel_size,
            padding=proj_padding,
        )
        common = {
            "feature_dims": feature_dims,
            "num_heads": num_heads,
            "spatial_dims": spatial_dims,
            "mlp_ratio": mlp_ratio,
            "mlp_dropout": mlp_dropout,
            "mlp_bias": mlp_bias,
            "mlp_activation": mlp_activation,
            "qkv_bias": qkv_bias,
            "base_theta": base_theta,
            "init_jitter_std": init_jitter_std,
            "rotary_ratio": rotary_ratio,
            "frequency_scaling": frequency_scaling,
        }
        sga_kwargs = {
            **common,
            "kernel_size": self.sga_kernel_size,
            "stride": self.stride,
            "iters": iters,
            "learnable_rose": learnable_rose,
            "learnable_rose_scaling": learnable_rose_scaling,
            "rose_initial_scaling": rose_initial_scaling,
            "spacing": self._default_spacing,
        }
        mr_kwargs = {
            **common,
            "learnable": learnable_rose,
            "learnable_scale": learnable_rose_scaling,
            "initial_scaling": rose_initial_scaling,
        }
        self.sga_layers = torch.nn.ModuleList(
            build_sga_layer(kind, **sga_kwargs) for kind in self.sga_attention_type
        )
        self.mr_attn_layers = torch.nn.ModuleList(
            build_mr_block(kind, **mr_kwargs) for kind in self.sga_attention_type
        )
        if any(k != 1 for k in self.proj_kernel_size):
            self._dilator = _POOL[spatial_dims](
                kernel_size=self.proj_kernel_size,
                stride=1,
                padding=[k // 2 for k in self.proj_kernel_size],
            )
        else:
            self._dilator = None
        init_transformer_weights(self)

    # ------------------------------------------------------------------ inputs
    def _normalise_inputs(self, x, input_spacing, mask) -> list[dict[str, Any]]:
        if isinstance(x, torch.Tensor):
            x = [x]
        if not isinstance(x, Sequence) or not x:
            raise TypeError("x must be a tensor [B, C, *spatial] or a non-empty list of them")
        levels = len(x)
        for i, xi in enumerate(x):
            if xi.dim() != self.spatial_dims + 2:
                raise ValueError(
                    f"level {i} has shape {tuple(xi.shape)}; expected [B, C, *spatial] with "
                    f"{self.spatial_dims} spatial dimensions"
                )
            if xi.shape[1] != self.input_features:
                raise ValueError(
                    f"level {i} has {xi.shape[1]} channels; the model expects {self.input_features}"
                )
        if input_spacing is None:
            spacings = [self._default_spacing] * levels
        else:
            spacing = to_tuple(input_spacing, self.spatial_dims)
            spacings = list(spacing) if isinstance(spacing[0], Sequence) else [spacing]
            if len(spacings) == 1 and levels > 1:
                raise ValueError(
                    f"{levels} pyramid levels but one spacing; give one spacing per level"
                )
            if len(spacings) != levels:
                raise ValueError(f"{len(spacings)} spacings for {levels} pyramid levels")
        spacings = [tuple(float(s) for s in sp) for sp in spacings]
        if self.spacing_blind:
            # The pyramid's shape stays known (each level's factor to level 0); its physical
            # size does not.
            spacings = [
                tuple(
                    d * s / s0
                    for d, s, s0 in zip(self._default_spacing, sp, spacings[0], strict=True)
                )
                for sp in spacings
            ]
        if mask is None:
            masks = [None] * levels
        else:
            masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
            if len(masks) != levels:
                raise ValueError(f"{len(masks)} masks for {levels} pyramid levels")
            masks = [None if m is None else self.dilate_mask(m) for m in masks]
        return [
            {
                "x_out": xi,
                "out_spacing": sp,
                "out_grid_shape": tuple(xi.shape[-self.spatial_dims :]),
                "mask": m,
            }
            for xi, sp, m in zip(x, spacings, masks, strict=True)
        ]

    def dilate_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Grow a mask by the projection kernel, as the projection spreads masked pixels."""
        if self._dilator is None:
            return mask
        return self._dilator(mask.float().unsqueeze(1)).squeeze(1) > 0

    # ------------------------------------------------------------------ blocks
    def _forward_sga(self, layer, out, maps: bool) -> None:
        for level in out:
            if getattr(layer, "supports_return_maps", False):
                res = layer(
                    level["x_out"],
                    level["out_spacing"],
                    level["out_grid_shape"],
                    level["mask"],
                    return_maps=maps,
                )
            else:
                res = layer(
                    level["x_out"], level["out_spacing"], level["out_grid_shape"], level["mask"]
                )
            if maps:
                if "attn_q" in level:
                    res["attn_q"] = res["attn_q"] @ level["attn_q"]
                    res["attn_k"] = res["attn_k"] @ level["attn_k"]
            else:
                res.pop("attn_q", None)
                res.pop("attn_k", None)
            res["mask"] = None  # the mask only applies to the input pixels
            level.update(res)

    def _forward_mr_attn(self, layer, out, leading: torch.Tensor | None):
        x = [level["x_out"] for level in out]
        spacings = [level["out_spacing"] for level in out]
        grids = [level["out_grid_shape"] for level in out]
        if leading is not None:
            res = layer([leading, *x], spacings, grids, leading_tokens=True)
            leading, res = res[0], res[1:]
        else:
            res = layer(x, spacings, grids)
            if isinstance(res, torch.Tensor):
                res = [res]
        for level, xi in zip(out, res, strict=True):
            level["x_out"] = xi
        return leading

    def forward(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        input_spacing: Sequence[float] | Sequence[Sequence[float]] | None = None,
        mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        return_attention_maps: bool | None = None,
        return_intermediates: bool = False,
    ) -> list[dict[str, Any]]:
        """Run the backbone; see the class docstring for the contract."""
        maps = (
            self.return_attention_maps if return_attention_maps is None else return_attention_maps
        )
        out = self._normalise_inputs(x, input_spacing, mask)
        for level in out:
            level["x_out"] = self.init_proj(level["x_out"]).flatten(2).transpose(1, 2)
            if return_intermediates:
                level["intermediates"] = [level["x_out"]]
                level["intermediate_grid_shapes"] = [level["out_grid_shape"]]
        leading = None
        if self.leading_tokens is not None:
            batch = out[0]["x_out"].shape[0]
            leading = self.leading_tokens.expand(batch, -1, -1)
        for sga, mr in zip(self.sga_layers, self.mr_attn_layers, strict=True):
            self._forward_sga(sga, out, maps)
            leading = self._forward_mr_attn(mr, out, leading)
            if return_intermediates:
                for level in out:
                    level["intermediates"].append(level["x_out"])
                    level["intermediate_grid_shapes"].append(level["out_grid_shape"])
        if leading is not None:
            for level in out:
                level["leading_tokens"] = leading
        return out

    def output_grid_shape(self, input_grid_shape: Sequence[int]) -> tuple[int, ...]:
        """Token grid after all blocks for an input of ``input_grid_shape``."""
        shape = tuple(int(s) for s in input_grid_shape)
        for layer in self.sga_layers:
            shape = layer._calculate_strided_grid_shape(shape)
        return shape

    def __repr__(self) -> str:
        return f"ResolutionAwareTransformer{self.spatial_dims}D"


def init_transformer_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear and embedding weights, unit LayerNorms (as the reference)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.zeros_(module.bias)
            torch.nn.init.ones_(module.weight)


def num_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(math.prod(p.shape) for p in model.parameters())
