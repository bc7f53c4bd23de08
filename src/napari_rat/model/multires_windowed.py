"""Multi-resolution RoSE block that attends within physical-size windows on large inputs.

Below ``window_threshold`` tokens (all levels together) it is exactly the package's
:class:`RoSE.MultiRes_RoSE_Block` (global attention). Above, space is cut into windows of one
physical size (by default ``window_size`` tokens of the finest level per axis), each token of
every level is placed in the window holding its physical position (index x spacing, as RoSE
places it), and tokens attend to the tokens of all levels in their window. Leading tokens attend
to everything and are attended by every token. Work and memory are linear in the token count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from RoSE import MultiRes_RoSE_Block

#: Default window side, in tokens of the finest level, per number of spatial dimensions.
DEFAULT_WINDOW_TOKENS = {1: 256, 2: 16, 3: 8}


def window_ids(
    grids: Sequence[tuple[int, ...]],
    spacings: Sequence[tuple[float, ...]],
    window: Sequence[float],
    device=None,
) -> torch.Tensor:
    """Window index of every token of every level (concatenated in level order), ``(N,)``."""
    dims = len(window)
    per_level = []
    extent = [1] * dims
    for grid, spacing in zip(grids, spacings, strict=True):
        coords = []
        for d in range(dims):
            pos = torch.arange(grid[d], dtype=torch.float64, device=device) * float(spacing[d])
            # The small tolerance keeps tokens exactly on a boundary in the upper window.
            c = torch.floor(pos / float(window[d]) + 1e-9).to(torch.int64)
            extent[d] = max(extent[d], int(c.max()) + 1 if c.numel() else 1)
            coords.append(c)
        per_level.append(coords)
    ids = []
    for coords in per_level:
        lin = torch.zeros((), dtype=torch.int64, device=device)
        for d in range(dims):
            shape = [1] * dims
            shape[d] = -1
            lin = lin * extent[d] + coords[d].reshape(shape)
        ids.append(lin.reshape(-1))
    return torch.cat(ids)


class WindowedMultiResBlock(MultiRes_RoSE_Block):
    """The package's multi-resolution RoSE block, windowed above a token count.

    Same parameters (and names) as :class:`RoSE.MultiRes_RoSE_Block`, plus:

    Parameters
    ----------
    window_threshold
        Token count (all levels, leading tokens excluded) above which attention is windowed.
    window_size
        Window side in tokens of the finest level (int or one per axis); default 16 in 2D,
        8 in 3D, 256 in 1D.
    window_physical_size
        Window side in physical units (overrides ``window_size``).
    """

    window_threshold: int = 4096
    window_size: int | tuple[int, ...] | None = None
    window_physical_size: tuple[float, ...] | None = None
    #: Attention elements (``B x heads x windows x tokens x keys``) computed at once.
    chunk_elements: int = 1 << 24

    def __init__(
        self,
        *args,
        window_threshold: int | None = None,
        window_size: int | Sequence[int] | None = None,
        window_physical_size: Sequence[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if window_threshold is not None:
            self.window_threshold = int(window_threshold)
        if window_size is not None:
            self.window_size = window_size
        if window_physical_size is not None:
            self.window_physical_size = tuple(float(w) for w in window_physical_size)

    def physical_window(self, spacings: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
        """The window side in physical units for levels with these spacings."""
        if self.window_physical_size is not None:
            return tuple(self.window_physical_size)
        size = self.window_size
        if size is None:
            size = DEFAULT_WINDOW_TOKENS.get(self.spatial_dims, 8)
        if isinstance(size, int):
            size = (size,) * self.spatial_dims
        finest = [min(float(sp[d]) for sp in spacings) for d in range(self.spatial_dims)]
        return tuple(float(n) * f for n, f in zip(size, finest, strict=True))

    def forward(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        input_spacing,
        input_grid_shape,
        leading_tokens: bool = False,
    ):
        """As the package block; windowed attention above ``window_threshold`` tokens."""
        was_list = isinstance(x, Sequence)
        xs, spacings, grids, n_lead = self._prepare_inputs(
            x, input_spacing, input_grid_shape, leading_tokens
        )
        n_tokens = xs.shape[1] - int(n_lead)
        if n_tokens <= self.window_threshold:
            return super().forward(x, input_spacing, input_grid_shape, leading_tokens)
        n_lead = int(n_lead)
        identity = xs
        b, n, dim = xs.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.qkv(self.norm1(xs)).chunk(3, dim=-1)
        qs = [q[:, :n_lead].reshape(b, n_lead, h, hd)]
        ks = [k[:, :n_lead].reshape(b, n_lead, h, hd)]
        start = n_lead
        for spacing, grid in zip(spacings, grids, strict=True):
            length = math.prod(grid)
            qs.append(self.rose(q[:, start : start + length], spacing, grid))
            ks.append(self.rose(k[:, start : start + length], spacing, grid))
            start += length
        q = torch.cat(qs, dim=1).transpose(1, 2)  # (B, H, N, hd)
        k = torch.cat(ks, dim=1).transpose(1, 2)
        v = v.reshape(b, n, h, hd).transpose(1, 2)
        del qs, ks
        attn = self._windowed_attention(q, k, v, n_lead, grids, spacings)
        attn = self.proj_dropout(self.proj(attn.transpose(1, 2).reshape(b, n, dim)))
        out = identity + self.drop_path(attn)
        out = out + self.drop_path(self.mlp(self.norm2(out)))
        if len(grids) > 1 or n_lead or was_list:
            outputs = [out[:, :n_lead]] if n_lead else []
            start = n_lead
            for grid in grids:
                length = math.prod(grid)
                outputs.append(out[:, start : start + length])
                start += length
            return outputs
        return out

    def _windowed_attention(self, q, k, v, n_lead, grids, spacings) -> torch.Tensor:
        b, h, n, hd = q.shape
        dropout = self.attn_dropout if self.training else 0.0
        ids = window_ids(grids, spacings, self.physical_window(spacings), device=q.device)
        order = torch.argsort(ids, stable=True)
        uniq, counts = torch.unique_consecutive(ids[order], return_counts=True)
        n_win, m = int(uniq.numel()), int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(order.numel(), device=q.device) - torch.repeat_interleave(
            starts, counts
        )
        win = torch.repeat_interleave(torch.arange(n_win, device=q.device), counts)
        table = torch.full((n_win, m), -1, dtype=torch.int64, device=q.device)
        table[win, slot] = order + n_lead  # token index (leading tokens first) per window slot
        valid = table >= 0
        full = bool(valid.all())

        out = q.new_zeros((b, h, n, hd))
        if n_lead:  # leading queries see every token
            out[:, :, :n_lead] = F.scaled_dot_product_attention(
                q[:, :, :n_lead], k, v, dropout_p=dropout, scale=self.scale
            )
        keys = m + n_lead
        per_window = b * h * m * keys
        chunk = max(1, self.chunk_elements // max(per_window, 1))
        for w0 in range(0, n_win, chunk):
            tab = table[w0 : w0 + chunk]
            ok = valid[w0 : w0 + chunk]
            idx = tab.clamp(min=0)
            cw = tab.shape[0]
            qw = q[:, :, idx]  # (B, H, cw, m, hd)
            kw, vw = k[:, :, idx], v[:, :, idx]
            mask = None
            if n_lead:
                kw = torch.cat([k[:, :, None, :n_lead].expand(b, h, cw, n_lead, hd), kw], dim=3)
                vw = torch.cat([v[:, :, None, :n_lead].expand(b, h, cw, n_lead, hd), vw], dim=3)
            if not full:
                mask = ok if not n_lead else torch.cat([ok.new_ones((cw, n_lead)), ok], dim=1)
                mask = mask[:, None, :]  # (cw, 1, keys): padding slots are never keys
            res = F.scaled_dot_product_attention(
                qw, kw, vw, attn_mask=mask, dropout_p=dropout, scale=self.scale
            )
            out[:, :, tab[ok]] = res[:, :, ok]
        return out
