"""RAT segmentation model: the backbone plus a decoder giving per-pixel logits.

The decoder walks back up the backbone's grids: it starts from the last block's tokens,
upsamples to the previous grid, adds a projection of that grid's tokens (a skip connection) and
mixes with a small conv block, down to the projection grid, which is the input grid. Outputs per
level ``[B, num_classes (+1 boundary), *spatial]`` at that level's input resolution. Instances
come from the foreground minus the boundary (see :mod:`napari_rat.inference.instances`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from napari_rat.model.rat import ResolutionAwareTransformer

_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


class _ConvBlock(torch.nn.Module):
    def __init__(self, dims: int, channels: int):
        super().__init__()
        conv = _CONV[dims]
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.norm = torch.nn.GroupNorm(min(8, channels), channels)
        self.conv2 = conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.norm(self.conv1(x))))


class RATSegmentation(torch.nn.Module):
    """RAT backbone with a multi-scale upsampling decoder and a segmentation head.

    Parameters
    ----------
    backbone_kwargs
        Arguments of :class:`ResolutionAwareTransformer`.
    class_names
        Semantic classes, background first; one logit each.
    boundary
        Add one boundary logit (instances = connected foreground inside boundaries).
    decoder_dims
        Channels of the decoder.
    """

    def __init__(
        self,
        backbone_kwargs: dict[str, Any],
        class_names: Sequence[str] = ("background", "foreground"),
        boundary: bool = True,
        decoder_dims: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = ResolutionAwareTransformer(**backbone_kwargs, return_attention_maps=False)
        dims = self.backbone.spatial_dims
        feat = self.backbone.feature_dims
        self.class_names = list(class_names)
        self.boundary = boundary
        self.spatial_dims = dims
        n_stages = self.backbone.num_blocks + 1
        self.lateral = torch.nn.ModuleList(
            torch.nn.Linear(feat, decoder_dims) for _ in range(n_stages)
        )
        self.mix = torch.nn.ModuleList(_ConvBlock(dims, decoder_dims) for _ in range(n_stages))
        self.out = _CONV[dims](decoder_dims, self.num_outputs, kernel_size=1)

    @property
    def num_outputs(self) -> int:
        """Channels of the logits: one per class, plus one boundary channel if enabled."""
        return len(self.class_names) + int(self.boundary)

    @property
    def num_features(self) -> int:
        """Channels of :meth:`forward_features`' per-pixel features: the decoder's last
        features, then each block's tokens."""
        return (
            self.mix[0].conv1.out_channels + self.backbone.num_blocks * self.backbone.feature_dims
        )

    def _decode(self, feats: list[torch.Tensor], grids: list[tuple[int, ...]]) -> torch.Tensor:
        return self.out(self._decoder_features(feats, grids))

    def _decoder_features(
        self, feats: list[torch.Tensor], grids: list[tuple[int, ...]]
    ) -> torch.Tensor:
        y = None
        for stage in range(len(feats) - 1, -1, -1):
            x = self.lateral[stage](feats[stage])  # [B, N, C]
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grids[stage])
            if y is not None:
                y = F.interpolate(
                    y, size=grids[stage], mode=_MODE[self.spatial_dims], align_corners=False
                )
                x = x + y
            y = self.mix[stage](x)
        return y

    def forward(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        input_spacing: Sequence[float] | Sequence[Sequence[float]] | None = None,
        mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Per-pixel logits ``[B, num_outputs, *spatial]`` for each input level."""
        levels = self.backbone(
            x, input_spacing, mask, return_intermediates=True, return_attention_maps=False
        )
        return [self._decode(lv["intermediates"], lv["intermediate_grid_shapes"]) for lv in levels]

    def forward_features(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        input_spacing: Sequence[float] | Sequence[Sequence[float]] | None = None,
        mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per input level, the logits of :meth:`forward` and the per-pixel features
        ``[B, num_features, *spatial]`` they come from (one forward for both): the decoder's
        last features (before the output conv), then each block's tokens brought back to the
        level's pixel grid (interpolated from their coarser grids)."""
        levels = self.backbone(
            x, input_spacing, mask, return_intermediates=True, return_attention_maps=False
        )
        out = []
        for lv in levels:
            feats, grids = lv["intermediates"], lv["intermediate_grid_shapes"]
            y = self._decoder_features(feats, grids)
            parts = [y]
            for tokens, grid in zip(feats[1:], grids[1:], strict=True):
                t = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
                parts.append(
                    F.interpolate(
                        t, size=grids[0], mode=_MODE[self.spatial_dims], align_corners=False
                    )
                )
            out.append((self.out(y), torch.cat(parts, dim=1)))
        return out
