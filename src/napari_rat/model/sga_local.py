"""Local spatial grouping attention: each group token attends to the pixels of its conv window.

The group tokens (queries) come from the layer's strided conv (``strider``); query ``o`` attends
only to the input tokens (keys) inside that conv's window: positions ``o * stride - pad + t``
for the kernel offsets ``t``, ``pad = (kernel - 1) // 2`` (the conv's own padding), keys outside
the input excluded. Then, as in the dense layer::

    A   = softmax(q kᵀ) over the window's keys          # attn_k
    c_j = Σ over the queries whose window covers j      # column sums
    P   = A / (c + eps);   out = P v                    # attn_q

Everything is computed per kernel offset on strided slices of the padded key and value maps,
so memory is ``O(N · heads · kernel volume / stride volume)`` at most and the work linear in
pixels. Large inputs are processed in slabs of query rows (the column sums first, then the
output), so inference at 1024² or 128³ stays within a fixed working budget.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from napari_rat.model.sga_exact import ExactSGA

#: Elements of the stacked attention (``B x heads x kernel volume x queries``) processed at once.
DEFAULT_SLAB_ELEMENTS = 1 << 24
#: Largest dense ``attn_q``/``attn_k`` (``B x heads x N_out x N_in`` elements) built on request.
MAX_DENSE_MAP_ELEMENTS = 1 << 27


class Windows:
    """Geometry of the strided-conv windows: padding, offsets and strided slices."""

    def __init__(self, in_grid, out_grid, kernel, stride) -> None:
        self.in_grid = tuple(int(n) for n in in_grid)
        self.out_grid = tuple(int(n) for n in out_grid)
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.dims = len(self.in_grid)
        self.pad_lo = tuple((k - 1) // 2 for k in self.kernel)
        self.padded = tuple(
            max(n + p, (no - 1) * s + k)
            for n, p, no, s, k in zip(
                self.in_grid, self.pad_lo, self.out_grid, self.stride, self.kernel, strict=True
            )
        )
        self.offsets = list(itertools.product(*(range(k) for k in self.kernel)))

    @property
    def interior(self) -> tuple[slice, ...]:
        return tuple(slice(p, p + n) for p, n in zip(self.pad_lo, self.in_grid, strict=True))

    def key_slices(self, t, start: int = 0, stop: int | None = None) -> tuple[slice, ...]:
        """Padded-map slices holding, for output rows ``start:stop``, the keys at offset ``t``."""
        stop = self.out_grid[0] if stop is None else stop
        rows = [(start, stop)] + [(0, n) for n in self.out_grid[1:]]
        return tuple(
            slice(td + a * s, td + (b - 1) * s + 1, s)
            for td, (a, b), s in zip(t, rows, self.stride, strict=True)
        )

    def valid(self, device) -> torch.Tensor:
        """``(T, *out_grid)`` bool: the key at offset ``t`` of query ``o`` lies in the input."""
        mask = None
        for d in range(self.dims):
            o = torch.arange(self.out_grid[d], device=device)
            t = torch.arange(self.kernel[d], device=device)
            pos = o.unsqueeze(0) * self.stride[d] - self.pad_lo[d] + t.unsqueeze(1)
            vd = (pos >= 0) & (pos < self.in_grid[d])  # (K_d, n_out_d)
            shape = [1] * (2 * self.dims)
            shape[d], shape[self.dims + d] = self.kernel[d], self.out_grid[d]
            vd = vd.reshape(shape)
            mask = vd if mask is None else mask & vd
        return mask.reshape(len(self.offsets), *self.out_grid)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the trailing spatial dimensions of ``x`` to the padded grid."""
        lead = x.shape[: x.dim() - self.dims]
        out = x.new_zeros((*lead, *self.padded))
        out[(Ellipsis, *self.interior)] = x
        return out

    def slabs(self, per_row: int, budget: int):
        """Ranges of output rows (first spatial axis) of at most ``budget`` elements each."""
        rows = max(1, budget // max(per_row, 1))
        for start in range(0, self.out_grid[0], rows):
            yield start, min(start + rows, self.out_grid[0])


def _slab_probs(q, kpad, valid, win: Windows, start: int, stop: int) -> torch.Tensor:
    """Row-softmaxed attention of output rows ``start:stop``: ``(B, H, T, *slab)``."""
    qs = q[:, :, :, start:stop]
    logits = []
    for t in win.offsets:
        kt = kpad[(slice(None), slice(None), slice(None), *win.key_slices(t, start, stop))]
        logits.append((qs * kt).sum(dim=2))
    s = torch.stack(logits, dim=2)
    del logits
    s = s.masked_fill(~valid[:, start:stop], -math.inf)
    return torch.softmax(s, dim=2)


def local_grouping_attention(
    q: torch.Tensor,
    kpad: torch.Tensor,
    vpad: torch.Tensor,
    win: Windows,
    eps: float,
    slab_elements: int = DEFAULT_SLAB_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed grouping attention.

    Parameters
    ----------
    q
        Queries ``(B, H, d, *out_grid)``.
    kpad, vpad
        Keys and values ``(B, H, d, *padded_grid)`` (zero outside the input).
    win
        The window geometry.
    eps
        Added to the column sums.
    slab_elements
        Working budget: stacked attention elements per slab of output rows (inference only;
        with gradients the whole input is one slab, as autograd keeps it all anyway).

    Returns
    -------
    out, colsum_pad
        ``(B, H, d, *out_grid)`` and the padded column sums ``(B, H, *padded_grid)``.
    """
    b, h = q.shape[:2]
    valid = win.valid(q.device)
    per_row = b * h * len(win.offsets) * math.prod(win.out_grid[1:])
    budget = per_row * win.out_grid[0] if torch.is_grad_enabled() else slab_elements
    slabs = list(win.slabs(per_row, budget))
    colsum = q.new_zeros((b, h, *win.padded))
    out = torch.zeros_like(q)
    cached = None
    for start, stop in slabs:
        a = _slab_probs(q, kpad, valid, win, start, stop)
        for i, t in enumerate(win.offsets):
            colsum[(slice(None), slice(None), *win.key_slices(t, start, stop))] += a[:, :, i]
        cached = a if len(slabs) == 1 else None
    r = 1.0 / (colsum + eps)
    for start, stop in slabs:
        a = cached if cached is not None else _slab_probs(q, kpad, valid, win, start, stop)
        acc = out[:, :, :, start:stop]
        for i, t in enumerate(win.offsets):
            sl = win.key_slices(t, start, stop)
            p = a[:, :, i] * r[(slice(None), slice(None), *sl)]
            acc.addcmul_(p.unsqueeze(2), vpad[(slice(None), slice(None), slice(None), *sl)])
    return out, colsum


# ---------------------------------------------------------------------------- on-demand maps
def _state_probs(state, start, stop):
    return _slab_probs(state["q"], state["kpad"], state["valid"], state["win"], start, stop)


def local_rows(state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
    """Rows of ``attn_q`` for flat query indices: ``(B, H, len(queries), N_in)``."""
    win: Windows = state["win"]
    r = 1.0 / (state["colsum"] + state["eps"])
    b, h = r.shape[:2]
    rows = []
    for qi in queries.tolist():
        o = [int(c) for c in torch.unravel_index(torch.tensor(qi), win.out_grid)]
        dense = r.new_zeros((b, h, *win.padded))
        a = _state_probs(state, o[0], o[0] + 1)  # (B, H, T, 1, *rest)
        a = a[(slice(None), slice(None), slice(None), 0, *o[1:])]  # (B, H, T)
        for i, t in enumerate(win.offsets):
            pos = tuple(oc * s + tc for oc, s, tc in zip(o, win.stride, t, strict=True))
            idx = (slice(None), slice(None), *pos)
            dense[idx] += a[:, :, i] * r[idx]
        rows.append(dense[(slice(None), slice(None), *win.interior)].flatten(2))
    return torch.stack(rows, dim=2)


def local_propagate(state: dict[str, Any], rows: torch.Tensor, slab_elements: int) -> torch.Tensor:
    """``rows @ attn_q`` for ``rows`` ``(B, H, N_out)`` without the matrix: ``(B, H, N_in)``."""
    win: Windows = state["win"]
    r = 1.0 / (state["colsum"] + state["eps"])
    b, h = r.shape[:2]
    rows = rows.reshape(b, h, *win.out_grid).to(r.dtype)
    out = r.new_zeros((b, h, *win.padded))
    per_row = b * h * len(win.offsets) * math.prod(win.out_grid[1:])
    for start, stop in win.slabs(per_row, slab_elements):
        rs = rows[:, :, start:stop]
        if not bool((rs != 0).any()):
            continue
        a = _state_probs(state, start, stop)
        for i, t in enumerate(win.offsets):
            sl = (slice(None), slice(None), *win.key_slices(t, start, stop))
            out[sl] += rs * a[:, :, i] * r[sl]
    return out[(slice(None), slice(None), *win.interior)].flatten(2)


def local_assignment(
    state: dict[str, Any], slab_elements: int, head: int | None = None
) -> torch.Tensor:
    """Each key's group token: argmax over the covering queries of ``attn_q`` (head mean or one
    head). ``(B, N_in)`` int64; ``-1`` for keys no window covers (stride larger than kernel)."""
    win: Windows = state["win"]
    r = 1.0 / (state["colsum"] + state["eps"])
    b, h = r.shape[:2]
    heads = slice(None) if head is None else slice(head, head + 1)
    best = r.new_full((b, *win.padded), -math.inf)
    arg = torch.full((b, *win.padded), -1, dtype=torch.int64, device=r.device)
    index = torch.arange(math.prod(win.out_grid), device=r.device).reshape(win.out_grid)
    per_row = b * h * len(win.offsets) * math.prod(win.out_grid[1:])
    for start, stop in win.slabs(per_row, slab_elements):
        a = _state_probs(state, start, stop)
        qidx = index[start:stop].expand(b, *index[start:stop].shape)
        for i, t in enumerate(win.offsets):
            sl = win.key_slices(t, start, stop)
            val = (a[:, heads, i] * r[(slice(None), heads, *sl)]).mean(dim=1)
            val = val.masked_fill(~state["valid"][i, start:stop], -math.inf)
            cur = best[(slice(None), *sl)]
            better = val > cur
            best[(slice(None), *sl)] = torch.where(better, val, cur)
            arg[(slice(None), *sl)] = torch.where(better, qidx, arg[(slice(None), *sl)])
    return arg[(slice(None), *win.interior)].flatten(1)


def _dense_maps(state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    win: Windows = state["win"]
    r = 1.0 / (state["colsum"] + state["eps"])
    b, h = r.shape[:2]
    n_out, n_in = math.prod(win.out_grid), math.prod(win.in_grid)
    if b * h * n_out * n_in > MAX_DENSE_MAP_ELEMENTS:
        raise ValueError(
            f"dense attention maps of {b}x{h}x{n_out}x{n_in} elements are too large for the "
            "local layer; use napari_rat.model.attention_maps (point_attention, "
            "native_grouping), which computes them on demand at linear memory"
        )
    a = _state_probs(state, 0, win.out_grid[0])  # (B, H, T, *out)
    attn_k = r.new_zeros((b, h, *win.out_grid, *win.padded))
    attn_q = torch.zeros_like(attn_k)
    grid = torch.meshgrid(*(torch.arange(n, device=r.device) for n in win.out_grid), indexing="ij")
    for i, t in enumerate(win.offsets):
        keys = tuple(g * s + tc for g, s, tc in zip(grid, win.stride, t, strict=True))
        idx = (slice(None), slice(None), *grid, *keys)
        attn_k[idx] = a[:, :, i]
        attn_q[idx] = a[:, :, i] * r[(slice(None), slice(None), *keys)]
    crop = (slice(None), slice(None), *[slice(None)] * win.dims, *win.interior)
    return (
        attn_q[crop].reshape(b, h, n_out, n_in),
        attn_k[crop].reshape(b, h, n_out, n_in),
    )


# ---------------------------------------------------------------------------- the layer
class LocalSGA(ExactSGA):
    """Spatial grouping attention restricted to each group token's conv window.

    Same parameters (and names) as the package's ``DenseSpatialGroupingAttention`` (it
    subclasses it through :class:`~napari_rat.model.sga_exact.ExactSGA`), so the same weights run
    exact or local. Equals the dense layer when every window covers the whole input.
    """

    supports_return_maps = True
    #: Working budget of one slab of query rows, in stacked-attention elements (inference).
    slab_elements: int = DEFAULT_SLAB_ELEMENTS

    def forward(
        self,
        x: torch.Tensor,
        input_spacing: tuple[float, ...],
        input_grid_shape: tuple[int, ...],
        mask: torch.Tensor | None = None,
        return_maps: bool = True,
    ) -> dict[str, Any]:
        """As the package layer, windowed; ``return_maps`` builds dense maps (small inputs only)."""
        x, x_out, in_sp, in_grid, q_spacing, q_grid = self._prepare(
            x, input_spacing, input_grid_shape, mask
        )
        b, n_out, d = x_out.shape
        h = self.num_heads
        win = Windows(in_grid, q_grid, self.kernel_size, self.stride)
        kpad, vpad = self._padded_keys_values(x, in_sp, in_grid, win)
        del x
        eps = torch.finfo(kpad.dtype).eps
        q = colsum = None
        for _ in range(self.iters):
            q = self._queries(x_out, q_spacing, q_grid)  # (B, H, N_out, d)
            q = q.permute(0, 1, 3, 2).reshape(b, h, -1, *q_grid)
            out, colsum = local_grouping_attention(q, kpad, vpad, win, eps, self.slab_elements)
            # (B, H, d, *grid) -> (B, H, N_out, d) -> the package's (B, N_out, D) reinterpretation
            out = out.flatten(3).transpose(2, 3).reshape(b, n_out, d)
            x_out = x_out + self.norm2(out)
            x_out = x_out + self.norm3(self.mlp(x_out))
        result = {"x_out": x_out, "out_grid_shape": q_grid, "out_spacing": q_spacing}
        if q is None or (self._attention_recorder is None and not return_maps):
            return result
        state = {
            "kind": "local",
            "q": q.detach(),
            "kpad": kpad.detach(),
            "colsum": colsum.detach(),
            "valid": win.valid(q.device),
            "win": win,
            "eps": eps,
            "in_grid": in_grid,
            "in_spacing": in_sp,
            "out_grid": q_grid,
            "out_spacing": q_spacing,
        }
        if self._attention_recorder is not None:
            self._attention_recorder(self, state)
        if return_maps:
            with torch.no_grad():
                result["attn_q"], result["attn_k"] = _dense_maps(state)
        return result

    def _padded_keys_values(self, x, in_sp, in_grid, win: Windows):
        b, n_in, _ = x.shape
        h = self.num_heads
        k, v = self.kv(x).chunk(2, dim=-1)
        # v's (B, N, D) memory read as (B, H, N, d), as the package layer does
        vpad = win.pad(v.reshape(b, h, *in_grid, -1).movedim(-1, 2))
        del v
        k = self.rose(k, in_sp, in_grid, flatten=False)  # (B, N, H, d)
        k = self.temp * k.permute(0, 2, 3, 1).reshape(b, h, -1, *in_grid)
        return win.pad(k), vpad

    # ---- on-demand attention maps (see napari_rat.model.attention_maps)
    def attention_rows(self, state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
        """Rows of this layer's ``attn_q`` for ``queries`` (flat output-token indices)."""
        return local_rows(state, queries)

    def propagate_rows(self, state: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
        """``rows @ attn_q`` without the matrix: ``(B, H, N_out)`` → ``(B, H, N_in)``."""
        return local_propagate(state, rows, self.slab_elements)

    def group_assignment(self, state: dict[str, Any], head: int | None = None) -> torch.Tensor:
        """Each input token's group token (argmax of ``attn_q`` over covering queries)."""
        return local_assignment(state, self.slab_elements, head)
