"""Local spatial grouping attention: each group token attends to the pixels of its conv window.

The group tokens (queries) come from the layer's strided conv (``strider``); query ``o`` attends
only to the input tokens (keys) inside that conv's window: positions ``o * stride - pad + t``
for the kernel offsets ``t``, ``pad = (kernel - 1) // 2`` (the conv's own padding), keys outside
the input excluded. Then, as in the dense layer::

    A   = softmax(q kᵀ) over the window's keys          # attn_k
    c_j = Σ over the queries whose window covers j      # column sums
    P   = A / (c + eps);   out = P v                    # attn_q

Everything is computed per kernel offset on strided slices of the key and value maps (keys in
RoSE's own ``(B, *grid, H, d)`` layout, values in the package's ``(B, H, *grid, d)``
reinterpretation), so memory is ``O(N · heads)`` and work linear in pixels. Without gradients,
queries are processed in slabs of rows (column sums first, then the output) and the keys and
values are projected in chunks, so inference at 1024² or 128³ keeps a bounded working set.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F

from napari_rat.model.sga_exact import ExactSGA

#: Elements of the stacked attention (``B x kernel volume x queries x heads``) held at once.
DEFAULT_SLAB_ELEMENTS = 1 << 24
#: Tokens projected to keys and values at once (inference).
DEFAULT_CHUNK_TOKENS = 1 << 16
#: Largest dense ``attn_q``/``attn_k`` (``B x heads x N_out x N_in`` elements) built on request.
MAX_DENSE_MAP_ELEMENTS = 1 << 27


class Windows:
    """Geometry of the strided-conv windows: offsets, and per offset the queries whose key lies
    inside the input (a box) and the strided slice of keys they read."""

    def __init__(self, in_grid, out_grid, kernel, stride) -> None:
        self.in_grid = tuple(int(n) for n in in_grid)
        self.out_grid = tuple(int(n) for n in out_grid)
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.dims = len(self.in_grid)
        self.pad = tuple((k - 1) // 2 for k in self.kernel)
        self.offsets = list(itertools.product(*(range(k) for k in self.kernel)))
        # per dim and kernel offset: first and end query with the key inside the input
        self._ranges = []
        for n, no, s, p, k in zip(
            self.in_grid, self.out_grid, self.stride, self.pad, self.kernel, strict=True
        ):
            ranges = []
            for t in range(k):
                lo = max(0, -((t - p) // s))  # ceil((p - t) / s)
                hi = min(no, (n - 1 + p - t) // s + 1)
                ranges.append((lo, max(lo, hi)))
            self._ranges.append(ranges)

    def box(self, t, start: int = 0, stop: int | None = None):
        """For kernel offset ``t`` and query rows ``start:stop``: ``(rel, qabs, keys)`` slices
        (queries relative to the slab, queries absolute, keys), or ``None`` if empty."""
        stop = self.out_grid[0] if stop is None else stop
        rel, qabs, keys = [], [], []
        for d, td in enumerate(t):
            lo, hi = self._ranges[d][td]
            if d == 0:
                lo, hi = max(lo, start), min(hi, stop)
            if hi <= lo:
                return None
            s, p = self.stride[d], self.pad[d]
            off = start if d == 0 else 0
            rel.append(slice(lo - off, hi - off))
            qabs.append(slice(lo, hi))
            keys.append(slice(lo * s - p + td, (hi - 1) * s - p + td + 1, s))
        return tuple(rel), tuple(qabs), tuple(keys)

    def key_index(self, o, t) -> tuple[int, ...] | None:
        """Input position of the key at offset ``t`` of query ``o``, or ``None`` if outside."""
        pos = tuple(oc * s - p + tc for oc, s, p, tc in zip(o, self.stride, self.pad, t))
        if all(0 <= c < n for c, n in zip(pos, self.in_grid, strict=True)):
            return pos
        return None

    def slabs(self, per_row: int, budget: int):
        """Ranges of query rows (first spatial axis) of at most ``budget`` elements each."""
        rows = max(1, budget // max(per_row, 1))
        for start in range(0, self.out_grid[0], rows):
            yield start, min(start + rows, self.out_grid[0])


def _head_sum(heads: int, dph: int, like: torch.Tensor) -> torch.Tensor:
    """``(H·d, H)`` block of ones: a GEMM with it sums each head's ``d`` channels."""
    eye = torch.eye(heads, dtype=like.dtype, device=like.device)
    return eye.repeat_interleave(dph, dim=0)


def _slab_probs(q, k, win: Windows, start: int, stop: int) -> torch.Tensor:
    """Row-softmaxed attention for query rows ``start:stop``: ``(B, T, *slab, H)``."""
    b, h, dph = q.shape[0], q.shape[-2], q.shape[-1]
    summer = _head_sum(h, dph, q)
    slab = (stop - start, *win.out_grid[1:])
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    s = None if grad else q.new_full((b, len(win.offsets), *slab, h), -math.inf)
    parts = []
    for i, t in enumerate(win.offsets):
        box = win.box(t, start, stop)
        if box is None:
            if grad:
                parts.append(q.new_full((b, *slab, h), -math.inf))
            continue
        rel, qabs, keys = box
        prod = q[(slice(None), *qabs)] * k[(slice(None), *keys)]  # (B, *box, H, d)
        logits = (prod.reshape(-1, h * dph) @ summer).reshape(*prod.shape[:-1])
        if grad:
            part = q.new_full((b, *slab, h), -math.inf)
            part[(slice(None), *rel)] = logits
            parts.append(part)
        else:
            s[(slice(None), i, *rel)] = logits
    if grad:
        return torch.softmax(torch.stack(parts, dim=1), dim=1)
    s.sub_(s.amax(dim=1, keepdim=True)).exp_()
    return s.div_(s.sum(dim=1, keepdim=True))


def local_grouping_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    win: Windows,
    eps: float,
    slab_elements: int = DEFAULT_SLAB_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windowed grouping attention.

    Parameters
    ----------
    q
        Queries ``(B, *out_grid, H, d)``.
    k
        Keys ``(B, *in_grid, H, d)``.
    v
        Values ``(B, H, *in_grid, d)``.
    win
        The window geometry.
    eps
        Added to the column sums.
    slab_elements
        Working budget in stacked-attention elements per slab of query rows (without
        gradients; with gradients the whole input is one slab, as autograd keeps it anyway).

    Returns
    -------
    out, recip
        ``(B, H, *out_grid, d)`` output and ``1 / (c + eps)``, ``(B, *in_grid, H)``.
    """
    b, h = q.shape[0], q.shape[-2]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    per_row = b * len(win.offsets) * math.prod(win.out_grid[1:]) * h
    budget = per_row * win.out_grid[0] if grad else slab_elements
    slabs = list(win.slabs(per_row, budget))
    colsum = k.new_zeros((b, *win.in_grid, h))
    cached = None
    for start, stop in slabs:
        a = _slab_probs(q, k, win, start, stop)
        for i, t in enumerate(win.offsets):
            box = win.box(t, start, stop)
            if box is not None:
                colsum[(slice(None), *box[2])] += a[(slice(None), i, *box[0])]
        cached = a if len(slabs) == 1 else None
        del a
    recip = 1.0 / (colsum + eps) if grad else colsum.add_(eps).reciprocal_()
    del colsum
    out = q.new_zeros((b, h, *win.out_grid, q.shape[-1]))
    for start, stop in slabs:
        a = cached if cached is not None else _slab_probs(q, k, win, start, stop)
        for i, t in enumerate(win.offsets):
            box = win.box(t, start, stop)
            if box is None:
                continue
            rel, qabs, keys = box
            p = (a[(slice(None), i, *rel)] * recip[(slice(None), *keys)]).movedim(-1, 1)
            acc = out[(slice(None), slice(None), *qabs)]
            acc.addcmul_(p.unsqueeze(-1), v[(slice(None), slice(None), *keys)])
        del a
    return out, recip


# ---------------------------------------------------------------------------- on-demand maps
def _probs(state, start, stop):
    return _slab_probs(state["q"], state["k"], state["win"], start, stop)


def _per_row(state) -> int:
    win: Windows = state["win"]
    q = state["q"]
    return q.shape[0] * len(win.offsets) * math.prod(win.out_grid[1:]) * q.shape[-2]


def local_rows(state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
    """Rows of ``attn_q`` for flat query indices: ``(B, H, len(queries), N_in)``."""
    win: Windows = state["win"]
    recip = state["recip"]
    b, h = recip.shape[0], recip.shape[-1]
    rows = []
    for qi in queries.tolist():
        o = [int(c) for c in torch.unravel_index(torch.tensor(qi), win.out_grid)]
        dense = recip.new_zeros((b, *win.in_grid, h))
        a = _probs(state, o[0], o[0] + 1)[(slice(None), slice(None), 0, *o[1:])]  # (B, T, H)
        for i, t in enumerate(win.offsets):
            pos = win.key_index(o, t)
            if pos is not None:
                idx = (slice(None), *pos)
                dense[idx] += a[:, i] * recip[idx]
        rows.append(dense.flatten(1, -2).transpose(1, 2))  # (B, H, N_in)
    return torch.stack(rows, dim=2)


def local_propagate(state: dict[str, Any], rows: torch.Tensor, slab_elements: int) -> torch.Tensor:
    """``rows @ attn_q`` for ``rows`` ``(B, H, N_out)`` without the matrix: ``(B, H, N_in)``."""
    win: Windows = state["win"]
    recip = state["recip"]
    b, h = recip.shape[0], recip.shape[-1]
    rows = rows.reshape(b, h, *win.out_grid).movedim(1, -1).to(recip.dtype)  # (B, *out, H)
    out = torch.zeros_like(recip)
    for start, stop in win.slabs(_per_row(state), slab_elements):
        rs = rows[:, start:stop]
        if not bool((rs != 0).any()):
            continue
        a = _probs(state, start, stop)
        for i, t in enumerate(win.offsets):
            box = win.box(t, start, stop)
            if box is None:
                continue
            rel, _, keys = box
            sl = (slice(None), *rel)
            out[(slice(None), *keys)] += rs[sl] * a[(slice(None), i, *rel)] * recip[
                (slice(None), *keys)
            ]
    return out.flatten(1, -2).transpose(1, 2)


def local_assignment(
    state: dict[str, Any], slab_elements: int, head: int | None = None
) -> torch.Tensor:
    """Each key's group token: argmax over the covering queries of ``attn_q`` (head mean or one
    head). ``(B, N_in)`` int64; ``-1`` for keys no window covers (stride larger than kernel)."""
    win: Windows = state["win"]
    recip = state["recip"]
    b = recip.shape[0]
    heads = slice(None) if head is None else slice(head, head + 1)
    best = recip.new_full((b, *win.in_grid), -math.inf)
    arg = torch.full((b, *win.in_grid), -1, dtype=torch.int64, device=recip.device)
    index = torch.arange(math.prod(win.out_grid), device=recip.device).reshape(win.out_grid)
    for start, stop in win.slabs(_per_row(state), slab_elements):
        a = _probs(state, start, stop)
        for i, t in enumerate(win.offsets):
            box = win.box(t, start, stop)
            if box is None:
                continue
            rel, qabs, keys = box
            ks = (slice(None), *keys)
            val = (a[(slice(None), i, *rel, heads)] * recip[(*ks, heads)]).mean(dim=-1)
            cur = best[ks]
            better = val > cur
            best[ks] = torch.where(better, val, cur)
            arg[ks] = torch.where(better, index[qabs].expand_as(val), arg[ks])
    return arg.flatten(1)


def _dense_maps(state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    win: Windows = state["win"]
    recip = state["recip"]
    b, h = recip.shape[0], recip.shape[-1]
    n_out, n_in = math.prod(win.out_grid), math.prod(win.in_grid)
    if b * h * n_out * n_in > MAX_DENSE_MAP_ELEMENTS:
        raise ValueError(
            f"dense attention maps of {b}x{h}x{n_out}x{n_in} elements are too large for the "
            "local layer; use napari_rat.model.attention_maps (point_attention, "
            "native_grouping), which computes them on demand at linear memory"
        )
    a = _probs(state, 0, win.out_grid[0])  # (B, T, *out, H)
    attn_k = recip.new_zeros((b, *win.out_grid, *win.in_grid, h))
    attn_q = torch.zeros_like(attn_k)
    grid = torch.meshgrid(
        *(torch.arange(n, device=recip.device) for n in win.out_grid), indexing="ij"
    )
    for i, t in enumerate(win.offsets):
        box = win.box(t)
        if box is None:
            continue
        rel, qabs, _ = box
        og = [g[qabs] for g in grid]
        kg = [g * s - p + tc for g, s, p, tc in zip(og, win.stride, win.pad, t, strict=True)]
        vals = a[(slice(None), i, *rel)]  # (B, *box, H)
        attn_k[(slice(None), *og, *kg)] = vals
        attn_q[(slice(None), *og, *kg)] = vals * recip[(slice(None), *kg)]

    def _flat(m):
        return m.reshape(b, n_out, n_in, h).permute(0, 3, 1, 2)

    return _flat(attn_q), _flat(attn_k)


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
    #: Tokens projected to keys and values at once (inference).
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS

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
        b, n_out, dim = x_out.shape
        h = self.num_heads
        win = Windows(in_grid, q_grid, self.kernel_size, self.stride)
        k, v = self._local_keys_values(x, in_sp, in_grid)
        del x
        eps = torch.finfo(k.dtype).eps
        q = recip = None
        for _ in range(self.iters):
            q = self.rose(self.q(x_out), q_spacing, q_grid, flatten=False)  # (B, N_out, H, d)
            q = q.reshape(b, *q_grid, h, -1)
            out, recip = local_grouping_attention(q, k, v, win, eps, self.slab_elements)
            # (B, H, *grid, d) is the package's (B, H, N_out, d); read it as (B, N_out, D)
            x_out = x_out + self.norm2(out.reshape(b, n_out, dim))
            x_out = x_out + self.norm3(self.mlp(x_out))
        result = {"x_out": x_out, "out_grid_shape": q_grid, "out_spacing": q_spacing}
        if q is None or (self._attention_recorder is None and not return_maps):
            return result
        state = {
            "kind": "local",
            "q": q.detach(),
            "k": k.detach(),
            "recip": recip.detach(),
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

    def _local_keys_values(self, x, in_sp, in_grid):
        """Keys ``temp · RoSE(k)`` as ``(B, *grid, H, d)`` and values as the package's
        ``(B, H, *grid, d)`` reinterpretation of ``(B, N, D)``."""
        b, n, dim = x.shape
        h = self.num_heads
        if torch.is_grad_enabled() or n <= self.chunk_tokens:
            k, v = self.kv(x).chunk(2, dim=-1)
            k = self.temp * self.rose(k, in_sp, in_grid, flatten=False)
            return k.reshape(b, *in_grid, h, -1), v.reshape(b, h, *in_grid, -1)
        # Inference on large inputs: project in chunks of rows, so that neither the (B, N, 2D)
        # projection nor RoSE's temporaries exist for the whole input at once.
        w_k, w_v = self.kv.weight[:dim], self.kv.weight[dim:]
        b_k = b_v = None
        if self.kv.bias is not None:
            b_k, b_v = self.kv.bias[:dim], self.kv.bias[dim:]
        k = x.new_empty((b, n, h, dim // h))
        v = x.new_empty((b, n, dim))
        per_row = n // in_grid[0]
        rows = max(1, self.chunk_tokens // per_row)
        for r0 in range(0, in_grid[0], rows):
            r1 = min(r0 + rows, in_grid[0])
            sl = slice(r0 * per_row, r1 * per_row)
            v[:, sl] = F.linear(x[:, sl], w_v, b_v)
            kc = self.rose(F.linear(x[:, sl], w_k, b_k), in_sp, (r1 - r0, *in_grid[1:]))
            k[:, sl] = _shift_rotation(self.rose, kc, in_sp, r0).mul_(self.temp)
        return k.reshape(b, *in_grid, h, -1), v.reshape(b, h, *in_grid, -1)

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


def _shift_rotation(rose, rotated: torch.Tensor, spacing, rows: int) -> torch.Tensor:
    """Move RoSE-rotated tokens of a chunk whose first row is ``rows`` to their true position.

    RoSE rotates by angles linear in the position, so rotating a chunk as if it started at the
    origin and then by the angle of ``(rows, 0, ...)`` equals rotating it in place. That angle
    is read from RoSE itself, applied to a unit vector at that position.
    """
    if rows == 0 or rose.rotary_dim == 0:
        return rotated
    dims = len(spacing)
    dim = rose.feature_dims
    unit = rotated.new_zeros((1, rows + 1, dim))
    unit[..., : rose.rotary_dim : 2] = 1.0
    phase = rose(unit, spacing, (rows + 1,) + (1,) * (dims - 1), flatten=False)[:, -1:]
    hr = rose.num_rotary_heads
    b, n, _, dph = rotated.shape
    rot = torch.view_as_complex(rotated[:, :, :hr].reshape(b, n, hr, dph // 2, 2).contiguous())
    ph = torch.view_as_complex(phase[:, :, :hr].reshape(1, 1, hr, dph // 2, 2).contiguous())
    rotated[:, :, :hr] = torch.view_as_real(rot * ph).reshape(b, n, hr, dph)
    return rotated
