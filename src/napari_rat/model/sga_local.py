"""Local spatial grouping attention: each group token attends to the pixels of its conv window.

The group tokens (queries) come from the layer's strided conv (``strider``); query ``o`` attends
only to the input tokens (keys) inside that conv's window: positions ``o * stride - pad + t``
for the kernel offsets ``t``, ``pad = (kernel - 1) // 2`` (the conv's own padding), keys outside
the input excluded. Then, as in the dense layer::

    A   = softmax(q kᵀ) over the window's keys          # attn_k
    c_j = Σ over the queries whose window covers j      # column sums
    P   = A / (c + eps);   out = P v                    # attn_q

Nothing of size ``N_q x N_k`` exists: memory is ``O(N · heads)`` and work linear in pixels.
Two implementations of the same maths:

- with gradients (training tiles): a loop over kernel offsets on strided slices of the key and
  value maps, differentiated by autograd;
- without (inference): per head and slab of query rows, the window's key indices drive a
  sampled matrix product (``torch.sparse.sampled_addmm``) for the logits, ``index_add_`` for
  the column sums and ``embedding_bag`` for the weighted values; keys and values are projected
  in chunks, so inference at 1024² or 128³ keeps a bounded working set.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from napari_rat.model.sga_exact import ExactSGA

#: Elements of the stacked attention (``B x kernel volume x queries x heads``) held at once.
DEFAULT_SLAB_ELEMENTS = 1 << 23
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
        self._index_cache: dict[tuple[int, int], tuple] = {}
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

    def index_for(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat key index ``(n, T)`` of every offset of the flat ``queries`` (0 where outside
        the input) and whether it is inside, ``(n, T)`` bool."""
        dev = queries.device
        o = torch.stack(torch.unravel_index(queries, self.out_grid), dim=-1)  # (n, D)
        t = torch.tensor(self.offsets, device=dev).reshape(-1, self.dims)  # (T, D)
        stride = torch.tensor(self.stride, device=dev)
        pad = torch.tensor(self.pad, device=dev)
        pos = o.unsqueeze(1) * stride - pad + t.unsqueeze(0)  # (n, T, D)
        size = torch.tensor(self.in_grid, device=dev)
        valid = ((pos >= 0) & (pos < size)).all(dim=-1)
        flat = torch.zeros(pos.shape[:2], dtype=torch.int64, device=dev)
        for d in range(self.dims):
            flat = flat * self.in_grid[d] + pos[..., d]
        return flat.masked_fill_(~valid, 0), valid

    def rows(self, start: int, stop: int, device=None) -> torch.Tensor:
        """Flat indices of the queries in rows ``start:stop`` of the first axis."""
        per_row = math.prod(self.out_grid[1:])
        return torch.arange(start * per_row, stop * per_row, device=device)

    def slab_index(self, start: int, stop: int, device=None):
        """``(span, idx, valid, border)`` for query rows ``start:stop``, cached: the flat query
        slice, int32 key indices and validity ``(n, T)``, and the rows with a key outside."""
        key = (start, stop)
        if key not in self._index_cache:
            rows = self.rows(start, stop, device)
            idx, valid = self.index_for(rows)
            border = (~valid).any(dim=1).nonzero().squeeze(1)
            span = slice(int(rows[0]), int(rows[-1]) + 1)
            self._index_cache[key] = (span, idx.to(torch.int32), valid, border)
        return self._index_cache[key]

    def key_span(self, start: int, stop: int) -> tuple[int, int]:
        """Flat range of the keys that query rows ``start:stop`` can read."""
        per_row = math.prod(self.in_grid[1:])
        lo = max(0, start * self.stride[0] - self.pad[0])
        hi = min(self.in_grid[0], (stop - 1) * self.stride[0] - self.pad[0] + self.kernel[0])
        return lo * per_row, hi * per_row

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


def _autograd_local(q, k, v, win: Windows, eps: float):
    """Training path: per-offset strided slices, differentiated by autograd.

    ``q`` ``(B, *out, H, d)``, ``k`` ``(B, *in, H, d)``, ``v`` ``(B, H, *in, d)``; returns the
    output ``(B, H, *out, d)`` and ``1 / (c + eps)`` ``(B, *in, H)``.
    """
    b, h = q.shape[0], q.shape[-2]
    a = _slab_probs(q, k, win, 0, win.out_grid[0])
    colsum = k.new_zeros((b, *win.in_grid, h))
    for i, t in enumerate(win.offsets):
        box = win.box(t)
        if box is not None:
            colsum[(slice(None), *box[2])] += a[(slice(None), i, *box[0])]
    recip = 1.0 / (colsum + eps)
    out = q.new_zeros((b, h, *win.out_grid, q.shape[-1]))
    for i, t in enumerate(win.offsets):
        box = win.box(t)
        if box is None:
            continue
        rel, qabs, keys = box
        p = (a[(slice(None), i, *rel)] * recip[(slice(None), *keys)]).movedim(-1, 1)
        acc = out[(slice(None), slice(None), *qabs)]
        acc.addcmul_(p.unsqueeze(-1), v[(slice(None), slice(None), *keys)])
    return out, recip


def _window_probs(q, k, idx, valid, border=None) -> torch.Tensor:
    """Row-softmaxed window attention ``(H, n, T)`` of all heads at once.

    ``q`` ``(H, n, d)`` queries, ``k`` ``(H, N_in, d)`` keys, ``idx``/``valid`` ``(n, T)``
    window indices (shared by the heads) and ``border`` the rows with invalid entries, if known.
    All heads go through one sampled product (a block-diagonal pattern: head ``h``'s columns are
    offset by ``h · N_in``), so that the work is a few large operations, not many small ones.
    """
    h, n, dph = q.shape
    n_in, t = k.shape[1], idx.shape[1]
    if n_in < t:  # tiny input: the sparse pattern would repeat columns within a row
        logits = torch.einsum("hntd,hnd->hnt", k[:, idx.long()], q)
    else:
        cols = (
            idx.unsqueeze(0)
            + torch.arange(h, device=idx.device, dtype=idx.dtype).view(h, 1, 1) * n_in
        )
        crow = torch.arange(0, h * n * t + 1, t, device=idx.device, dtype=idx.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, cols.reshape(-1), q.new_zeros(h * n * t), size=(h * n, h * n_in),
                check_invariants=False,
            )  # fmt: skip
            logits = torch.sparse.sampled_addmm(
                pattern, q.reshape(h * n, dph), k.reshape(h * n_in, dph).transpose(0, 1)
            ).values()
        del pattern, cols
    logits = logits.reshape(h, n, t)
    if border is None:
        logits.masked_fill_(~valid, -math.inf)
    elif border.numel():
        logits[:, border] = logits[:, border].masked_fill_(~valid[border], -math.inf)
    logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=-1, keepdim=True))


def _head_probs(qh, kh, idx, valid, border=None) -> torch.Tensor:
    """:func:`_window_probs` of one head: ``(n, T)``."""
    return _window_probs(qh.unsqueeze(0), kh.unsqueeze(0), idx, valid, border)[0]


def _head_offsets(idx: torch.Tensor, heads: int, stride: int) -> torch.Tensor:
    """``(H, n, T)`` indices into a ``(H · stride)`` table holding the heads one after another."""
    off = torch.arange(heads, device=idx.device, dtype=torch.int64).view(heads, 1, 1) * stride
    return idx.unsqueeze(0).long() + off


def _inference_local(q, k, v, win: Windows, eps: float, slab_elements: int):
    """Inference path (head-major tensors); see :func:`local_grouping_attention`.

    ``v`` may also be a callable ``v(b, h, n0, n1) -> (n1 - n0, d)`` giving value rows on demand.
    """
    b, h, n_out, dph = q.shape
    n_in = k.shape[2]
    dtype = q.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k = q.to(work).contiguous(), k.to(work).contiguous()
    if isinstance(v, torch.Tensor):
        v = v.to(work).contiguous()
    per_row = b * h * len(win.offsets) * math.prod(win.out_grid[1:])
    slabs = list(win.slabs(per_row, slab_elements))
    recip = k.new_zeros((b, h, n_in))
    cache = {}
    for start, stop in slabs:
        span, idx, valid, border = win.slab_index(start, stop, q.device)
        cols = _head_offsets(idx, h, n_in).reshape(-1)
        for bi in range(b):
            a = _window_probs(q[bi, :, span], k[bi], idx, valid, border)
            recip[bi].view(-1).index_add_(0, cols, a.reshape(-1))
            if len(slabs) == 1:
                cache[bi] = a
        del cols
    recip.add_(eps).reciprocal_()
    out = q.new_empty((b, h, n_out, dph))  # in the working dtype
    for start, stop in slabs:
        span, idx, valid, border = win.slab_index(start, stop, q.device)
        n = span.stop - span.start
        cols = _head_offsets(idx, h, n_in)
        if not isinstance(v, torch.Tensor):
            n0, n1 = win.key_span(start, stop)
            rows = _head_offsets((idx - n0).clamp_(min=0), h, n1 - n0)  # outside: zero weight
        else:
            rows = cols
        for bi in range(b):
            a = cache.pop(bi, None)
            if a is None:
                a = _window_probs(q[bi, :, span], k[bi], idx, valid, border)
            weights = a.mul_(recip[bi].view(-1)[cols])
            if isinstance(v, torch.Tensor):
                table = v[bi].reshape(h * n_in, dph)
            else:
                table = torch.cat([v(bi, hi, n0, n1) for hi in range(h)]).to(work)
            out[bi, :, span] = F.embedding_bag(
                rows.reshape(h * n, -1), table, per_sample_weights=weights.reshape(h * n, -1),
                mode="sum",
            ).view(h, n, dph)  # fmt: skip
    return out.to(dtype), recip


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
    q, k, v
        Queries ``(B, H, N_out, d)``, keys and values ``(B, H, N_in, d)`` (flattened grids).
        Without gradients ``v`` may be a callable ``v(b, h, n0, n1)`` returning value rows.
    win
        The window geometry.
    eps
        Added to the column sums.
    slab_elements
        Inference working budget: window-attention elements (``B x H x T x queries``) per slab
        of query rows.

    Returns
    -------
    out, recip
        ``(B, H, N_out, d)`` output and ``1 / (c + eps)`` ``(B, H, N_in)``.
    """
    if torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v) if isinstance(t, torch.Tensor)
    ):
        b, h, _, dph = q.shape
        out, recip = _autograd_local(
            q.transpose(1, 2).reshape(b, *win.out_grid, h, dph),
            k.transpose(1, 2).reshape(b, *win.in_grid, h, dph),
            v.reshape(b, h, *win.in_grid, -1),
            win,
            eps,
        )
        return out.reshape(b, h, -1, out.shape[-1]), recip.reshape(b, -1, h).transpose(1, 2)
    return _inference_local(q, k, v, win, eps, slab_elements)


# ---------------------------------------------------------------------------- on-demand maps
def _state_slabs(state, slab_elements):
    """Per slab of query rows: the flat query slice, window indices, validity, border rows."""
    win: Windows = state["win"]
    b, h = state["q"].shape[:2]
    per_row = b * h * len(win.offsets) * math.prod(win.out_grid[1:])
    for start, stop in win.slabs(per_row, slab_elements):
        yield win.slab_index(start, stop, state["q"].device)


def _weights(state, bi, hi, queries, idx, valid, border=None) -> torch.Tensor:
    """``attn_q`` entries ``(n, T)`` of one head for the queries' windows."""
    a = _head_probs(state["q"][bi, hi, queries], state["k"][bi, hi], idx, valid, border)
    return a.mul_(state["recip"][bi, hi][idx])


def local_rows(state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
    """Rows of ``attn_q`` for flat query indices: ``(B, H, len(queries), N_in)``."""
    win: Windows = state["win"]
    b, h, n_in = state["recip"].shape
    queries = queries.to(state["q"].device)
    idx, valid = win.index_for(queries)
    rows = state["recip"].new_zeros((b, h, len(queries), n_in))
    for bi in range(b):
        for hi in range(h):
            rows[bi, hi].scatter_add_(1, idx, _weights(state, bi, hi, queries, idx, valid))
    return rows


def local_propagate(state: dict[str, Any], rows: torch.Tensor, slab_elements: int) -> torch.Tensor:
    """``rows @ attn_q`` for ``rows`` ``(B, H, N_out)`` without the matrix: ``(B, H, N_in)``."""
    b, h, n_in = state["recip"].shape
    rows = rows.to(state["recip"].dtype)
    out = state["recip"].new_zeros((b, h, n_in))
    for span, idx, valid, border in _state_slabs(state, slab_elements):
        for bi in range(b):
            for hi in range(h):
                r = rows[bi, hi, span]
                if not bool((r != 0).any()):
                    continue
                w = _weights(state, bi, hi, span, idx, valid, border).mul_(r.unsqueeze(1))
                out[bi, hi].index_add_(0, idx.reshape(-1), w.reshape(-1))
    return out


def local_assignment(
    state: dict[str, Any], slab_elements: int, head: int | None = None
) -> torch.Tensor:
    """Each key's group token: argmax over the covering queries of ``attn_q`` (head mean or one
    head). ``(B, N_in)`` int64; ``-1`` for keys no window covers (stride larger than kernel)."""
    b, h, n_in = state["recip"].shape
    heads = range(h) if head is None else [head]
    best = state["recip"].new_full((b, n_in), -math.inf)
    arg = torch.full((b, n_in), -1, dtype=torch.int64, device=best.device)
    for span, idx, valid, border in _state_slabs(state, slab_elements):
        keys = idx[valid].long()
        owners = torch.arange(span.start, span.stop, device=idx.device)
        owners = owners.unsqueeze(1).expand_as(idx)[valid]
        for bi in range(b):
            vals = sum(_weights(state, bi, hi, span, idx, valid, border) for hi in heads)[valid]
            slab_best = torch.full_like(best[bi], -math.inf)
            slab_best.scatter_reduce_(0, keys, vals, reduce="amax")
            improves = slab_best > best[bi]
            hit = (vals == slab_best[keys]) & improves[keys]
            arg[bi, keys[hit]] = owners[hit]
            best[bi] = torch.where(improves, slab_best, best[bi])
    return arg


def _dense_maps(state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    win: Windows = state["win"]
    b, h, n_in = state["recip"].shape
    n_out = math.prod(win.out_grid)
    if b * h * n_out * n_in > MAX_DENSE_MAP_ELEMENTS:
        raise ValueError(
            f"dense attention maps of {b}x{h}x{n_out}x{n_in} elements are too large for the "
            "local layer; use napari_rat.model.attention_maps (point_attention, "
            "native_grouping), which computes them on demand at linear memory"
        )
    queries = torch.arange(n_out, device=state["q"].device)
    idx, valid = win.index_for(queries)
    attn_k = state["recip"].new_zeros((b, h, n_out, n_in))
    attn_q = torch.zeros_like(attn_k)
    for bi in range(b):
        for hi in range(h):
            a = _head_probs(state["q"][bi, hi], state["k"][bi, hi], idx, valid)
            attn_k[bi, hi].scatter_add_(1, idx, a)
            attn_q[bi, hi].scatter_add_(1, idx, a * state["recip"][bi, hi][idx])
    return attn_q, attn_k


# ---------------------------------------------------------------------------- the layer
class LocalSGA(ExactSGA):
    """Spatial grouping attention restricted to each group token's conv window.

    Same parameters (and names) as the package's ``DenseSpatialGroupingAttention`` (it
    subclasses it through :class:`~napari_rat.model.sga_exact.ExactSGA`), so the same weights run
    exact or local. Equals the dense layer when every window covers the whole input.
    """

    supports_return_maps = True
    #: Inference working budget of one slab of query rows, in window-attention elements.
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
        win = Windows(in_grid, q_grid, self.kernel_size, self.stride)
        k, v = self._local_keys_values(x, in_sp, in_grid)
        del x
        eps = torch.finfo(k.dtype).eps
        q = recip = None
        for _ in range(self.iters):
            q = self._queries(x_out, q_spacing, q_grid)  # (B, H, N_out, d)
            out, recip = local_grouping_attention(q, k, v, win, eps, self.slab_elements)
            # (B, H, N_out, d) read as (B, N_out, D), as the package layer does
            x_out = x_out + self.norm2(out.reshape(b, n_out, dim))
            x_out = x_out + self.norm3(self.mlp(x_out))
        result = {"x_out": x_out, "out_grid_shape": q_grid, "out_spacing": q_spacing}
        if q is None or (self._attention_recorder is None and not return_maps):
            return result
        state = {
            "kind": "local",
            "q": q.detach().contiguous(),
            "k": k.detach().contiguous(),
            "recip": recip.detach().contiguous(),
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
        """Keys ``temp · RoSE(k)`` ``(B, H, N, d)`` and values: the package's ``(B, H, N, d)``
        reinterpretation of ``(B, N, D)`` memory, or for large inputs at inference a
        :class:`_ValueRows` computing them on demand."""
        b, n, dim = x.shape
        h = self.num_heads
        if torch.is_grad_enabled() or n <= self.chunk_tokens:
            k, v = self.kv(x).chunk(2, dim=-1)
            k = self.temp * self.rose(k, in_sp, in_grid, flatten=False)
            return k.transpose(1, 2), v.reshape(b, h, n, -1)
        # Inference on large inputs: project in chunks of rows, so that neither the (B, N, 2D)
        # projection nor RoSE's temporaries exist for the whole input at once.
        w_k, w_v = self.kv.weight[:dim], self.kv.weight[dim:]
        b_k = b_v = None
        if self.kv.bias is not None:
            b_k, b_v = self.kv.bias[:dim], self.kv.bias[dim:]
        k = x.new_empty((b, h, n, dim // h))
        per_row = n // in_grid[0]
        rows = max(1, self.chunk_tokens // per_row)
        for r0 in range(0, in_grid[0], rows):
            r1 = min(r0 + rows, in_grid[0])
            sl = slice(r0 * per_row, r1 * per_row)
            kc = self.rose(F.linear(x[:, sl], w_k, b_k), in_sp, (r1 - r0, *in_grid[1:]))
            k[:, :, sl] = _shift_rotation(self.rose, kc, in_sp, r0).mul_(self.temp).transpose(1, 2)
        return k, _ValueRows(x, w_v, b_v, h)

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


class _ValueRows:
    """Value rows on demand: ``(B, N, D)`` projections read as ``(B, H, N, d)`` (the package's
    reinterpretation), computed only for the tokens whose memory holds rows ``n0:n1`` of head
    ``h``, so that the values never exist for the whole input at once."""

    def __init__(self, x, weight, bias, heads):
        self.x, self.weight, self.bias = x, weight, bias
        self.n, self.dim = x.shape[1], x.shape[2]
        self.dph = self.dim // heads

    def __call__(self, b: int, h: int, n0: int, n1: int) -> torch.Tensor:
        f0 = (h * self.n + n0) * self.dph
        f1 = (h * self.n + n1) * self.dph
        t0, t1 = f0 // self.dim, -(-f1 // self.dim)
        flat = F.linear(self.x[b, t0:t1], self.weight, self.bias).reshape(-1)
        return flat[f0 - t0 * self.dim : f1 - t0 * self.dim].view(n1 - n0, self.dph)


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
