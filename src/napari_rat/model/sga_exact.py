"""Exact dense spatial grouping attention at linear memory.

The package's :class:`~spatial_grouping_attention.DenseSpatialGroupingAttention` materialises the
``(B, heads, N_q, N_k)`` attention twice per iteration. Its maths, per batch item and head, with
``S = q kᵀ`` (``temp`` already inside ``k``)::

    A   = softmax(S, over keys)            # attn_k
    c_j = Σ_i A_ij                         # column sums
    P   = A / (c + eps)                    # attn_q, normalised over queries per key
    O   = P v

is computed here in tiles of ``S``: a first pass gives each row's log-sum-exp ``L``, a second the
column sums and the weighted values. Nothing of size ``N_q x N_k`` is held; the autograd function
saves ``q, k, v, O, L, c`` and recomputes tiles in backward.

Backward, with ``G = dO``, ``r = 1 / (c + eps)``, ``Y = Aᵀ G``::

    dv_j  = r_j Y_j
    w_j   = r_j² (v_j · Y_j)
    D_i   = G_i · O_i − Σ_j A_ij w_j
    dS_ij = A_ij (r_j G_i · v_j − w_j − D_i)
    dq = dS k,   dk = dSᵀ q
"""

from __future__ import annotations

import math
from typing import Any

import torch
from spatial_grouping_attention import DenseSpatialGroupingAttention

#: Elements of one attention tile (``heads x queries x keys``); 4 bytes each in float32.
#: Smaller tiles are more cache-friendly on an idle machine (2^19: ~40% less CPU time), but
#: every tile costs a handful of parallel regions, and on a loaded machine each region can wait
#: for a descheduled thread: 2^22 keeps the count low (2D 128²: ~60 tiles per pass).
DEFAULT_TILE_ELEMENTS = 1 << 22


def _plan(g: int, nq: int, nk: int, tile_elements: int) -> tuple[int, int, int]:
    """Head, query and key block sizes whose product stays within ``tile_elements``.

    All queries in one tile when possible (the column sums are then complete per key block).
    """
    tile_elements = max(int(tile_elements), 1)
    kb = min(nk, 32)
    if nq * kb > tile_elements:
        return 1, min(nq, max(1, tile_elements // kb)), kb
    kb = min(nk, max(kb, tile_elements // nq))
    gb = min(g, max(1, tile_elements // (nq * kb)))
    return gb, nq, kb


def _blocks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _augment(q: torch.Tensor, k: torch.Tensor, offset: torch.Tensor):
    """``[q, -offset]`` and ``[k, 1]``: one GEMM then gives ``q kᵀ − offset`` per row."""
    qa = torch.cat([q, -offset.unsqueeze(-1)], dim=-1)
    ka = torch.cat([k, torch.ones_like(k[..., :1])], dim=-1)
    return qa, ka


def _tile_exp(qa, ka, gs, qs, ks) -> torch.Tensor:
    """``exp(q kᵀ − offset)`` on one tile."""
    return torch.bmm(qa[gs, qs], ka[gs, ks].transpose(1, 2)).exp_()


def _row_lse(q: torch.Tensor, k: torch.Tensor, plan) -> torch.Tensor:
    """Log-sum-exp over keys of ``q kᵀ`` for every query: ``(G, N_q)``.

    The stabiliser is the Cauchy-Schwarz bound ``|q_i| max_j |k_j|`` (no overflow, one pass);
    rows whose sum underflows against it are redone with their exact maximum.
    """
    gb, qb, kb = plan
    g, nq, _ = q.shape
    nk = k.shape[1]
    bound = q.norm(dim=-1) * k.norm(dim=-1).amax(dim=-1, keepdim=True)  # (G, N_q)
    qa, ka = _augment(q, k, bound)
    total = torch.zeros((g, nq), dtype=q.dtype, device=q.device)
    for gs in _blocks(g, gb):
        for qs in _blocks(nq, qb):
            for ks in _blocks(nk, kb):
                total[gs, qs] += _tile_exp(qa, ka, gs, qs, ks).sum(dim=-1)
    lse = bound + total.log()
    floor = math.log(torch.finfo(q.dtype).tiny) + 8.0
    bad = (total.log() < floor).nonzero()
    for gi, qi in bad.tolist():  # rare: logits far below their bound
        lse[gi, qi] = torch.logsumexp(k[gi] @ q[gi, qi], dim=0)
    return lse


def grouping_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, tile_elements: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output ``P v``, row log-sum-exp ``L`` and column sums ``c`` for ``(G, N, d)`` inputs."""
    g, nq, d = q.shape
    nk = k.shape[1]
    plan = _plan(g, nq, nk, tile_elements)
    gb, qb, kb = plan
    lse = _row_lse(q, k, plan)
    qa, ka = _augment(q, k, lse)
    out = torch.zeros((g, nq, v.shape[-1]), dtype=q.dtype, device=q.device)
    colsum = torch.zeros((g, nk), dtype=q.dtype, device=q.device)
    for gs in _blocks(g, gb):
        for ks in _blocks(nk, kb):
            if qb == nq:  # all queries in the tile: the column sums are complete at once
                a = _tile_exp(qa, ka, gs, slice(None), ks)
                c = a.sum(dim=1)
                colsum[gs, ks] = c
                out[gs].baddbmm_(a, v[gs, ks] / (c + eps).unsqueeze(-1))
            else:
                for qs in _blocks(nq, qb):
                    colsum[gs, ks] += _tile_exp(qa, ka, gs, qs, ks).sum(dim=1)
    if qb < nq:
        for gs in _blocks(g, gb):
            for ks in _blocks(nk, kb):
                w = v[gs, ks] / (colsum[gs, ks] + eps).unsqueeze(-1)
                for qs in _blocks(nq, qb):
                    out[gs, qs].baddbmm_(_tile_exp(qa, ka, gs, qs, ks), w)
    return out, lse, colsum


def grouping_backward(q, k, v, out, lse, colsum, grad_out, eps: float, tile_elements: int):
    """Gradients of :func:`grouping_forward`'s output with respect to ``q``, ``k`` and ``v``."""
    g, nq, _ = q.shape
    nk = k.shape[1]
    gb, qb, kb = _plan(g, nq, nk, tile_elements)
    qa, ka = _augment(q, k, lse)
    r = 1.0 / (colsum + eps)  # (G, N_k)
    y = torch.zeros_like(v)  # Aᵀ G
    a_w = torch.zeros((g, nq), dtype=q.dtype, device=q.device)  # A w
    for gs in _blocks(g, gb):
        for ks in _blocks(nk, kb):
            if qb == nq:
                a = _tile_exp(qa, ka, gs, slice(None), ks)
                y[gs, ks] = torch.bmm(a.transpose(1, 2), grad_out[gs])
                w = r[gs, ks] ** 2 * (v[gs, ks] * y[gs, ks]).sum(-1)
                a_w[gs] += torch.bmm(a, w.unsqueeze(-1)).squeeze(-1)
            else:
                for qs in _blocks(nq, qb):
                    a = _tile_exp(qa, ka, gs, qs, ks)
                    y[gs, ks] += torch.bmm(a.transpose(1, 2), grad_out[gs, qs])
    w = r**2 * (v * y).sum(-1)  # (G, N_k)
    if qb < nq:
        for gs in _blocks(g, gb):
            for ks in _blocks(nk, kb):
                for qs in _blocks(nq, qb):
                    a = _tile_exp(qa, ka, gs, qs, ks)
                    a_w[gs, qs] += torch.bmm(a, w[gs, ks].unsqueeze(-1)).squeeze(-1)
    dv = y * r.unsqueeze(-1)
    big_d = (grad_out * out).sum(-1) - a_w  # (G, N_q)
    # dS = A ∘ (G ṽᵀ − w − D) as one GEMM: [G, -D, 1] · [ṽ, 1, -w]
    ga = torch.cat([grad_out, -big_d.unsqueeze(-1), torch.ones_like(big_d).unsqueeze(-1)], -1)
    va = torch.cat([v * r.unsqueeze(-1), torch.ones_like(w).unsqueeze(-1), -w.unsqueeze(-1)], -1)
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    for gs in _blocks(g, gb):
        for ks in _blocks(nk, kb):
            for qs in _blocks(nq, qb):
                ds = _tile_exp(qa, ka, gs, qs, ks)
                ds.mul_(torch.bmm(ga[gs, qs], va[gs, ks].transpose(1, 2)))
                dq[gs, qs].baddbmm_(ds, k[gs, ks])
                dk[gs, ks].baddbmm_(ds.transpose(1, 2), q[gs, qs])
    return dq, dk, dv


class _ExactGrouping(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eps, tile_elements):
        out, lse, colsum = grouping_forward(q, k, v, eps, tile_elements)
        ctx.save_for_backward(q, k, v, out, lse, colsum)
        ctx.eps = eps
        ctx.tile_elements = tile_elements
        ctx.mark_non_differentiable(lse, colsum)
        return out, lse, colsum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_lse, _grad_colsum):
        q, k, v, out, lse, colsum = ctx.saved_tensors
        if grad_out is None:
            return None, None, None, None, None
        dq, dk, dv = grouping_backward(
            q, k, v, out, lse, colsum, grad_out.contiguous(), ctx.eps, ctx.tile_elements
        )
        return dq, dk, dv, None, None


def exact_grouping_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float | None = None,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense grouping attention ``(softmax(q kᵀ) / column sums) v`` without the full matrix.

    Parameters
    ----------
    q, k, v
        ``(B, H, N_q, d)``, ``(B, H, N_k, d)`` and ``(B, H, N_k, d_v)``.
    eps
        Added to the column sums; defaults to ``finfo(q.dtype).eps`` as the package layer.
    tile_elements
        Elements of one attention tile: the working memory (times a small factor).

    Returns
    -------
    out, lse, colsum
        ``(B, H, N_q, d_v)`` output, ``(B, H, N_q)`` row log-sum-exp of the logits and
        ``(B, H, N_k)`` column sums of the row-softmaxed attention. Only ``out`` has gradients.
    """
    if eps is None:
        eps = torch.finfo(q.dtype).eps
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):  # tiles in float32; eps as the input's
        q, k, v = q.float(), k.float(), v.float()
    b, h, nq, d = q.shape
    nk = k.shape[2]
    out, lse, colsum = _ExactGrouping.apply(
        q.reshape(b * h, nq, d).contiguous(),
        k.reshape(b * h, nk, d).contiguous(),
        v.reshape(b * h, nk, v.shape[-1]).contiguous(),
        float(eps),
        int(tile_elements),
    )
    return (
        out.reshape(b, h, nq, -1).to(dtype),
        lse.reshape(b, h, nq),
        colsum.reshape(b, h, nk),
    )


# ---------------------------------------------------------------------------- on-demand maps
def exact_rows(state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
    """Rows of ``attn_q`` for the given query indices: ``(B, H, len(queries), N_k)``."""
    q = state["q"][:, :, queries]
    s = torch.einsum("bhqd,bhkd->bhqk", q, state["k"])
    a = (s - state["lse"][:, :, queries].unsqueeze(-1)).exp()
    return a / (state["colsum"] + state["eps"]).unsqueeze(2)


def exact_propagate(state: dict[str, Any], rows: torch.Tensor, tile_elements: int) -> torch.Tensor:
    """``rows @ attn_q`` for ``rows`` ``(B, H, N_q)``: the rows over the layer's input tokens."""
    q, k, lse, colsum = state["q"], state["k"], state["lse"], state["colsum"]
    b, h, nq, d = q.shape
    nk = k.shape[2]
    g = b * h
    qa, ka = _augment(q.reshape(g, nq, d), k.reshape(g, nk, d), lse.reshape(g, nq))
    rf = rows.reshape(g, 1, nq).to(q.dtype)
    out = torch.zeros((g, nk), dtype=q.dtype, device=q.device)
    gb, qb, kb = _plan(g, nq, nk, tile_elements)
    for gs in _blocks(g, gb):
        for ks in _blocks(nk, kb):
            for qs in _blocks(nq, qb):
                a = _tile_exp(qa, ka, gs, qs, ks)
                out[gs, ks] += torch.bmm(rf[gs, :, qs], a).squeeze(1)
    return (out / (colsum.reshape(g, nk) + state["eps"])).reshape(b, h, nk)


def exact_assignment(
    state: dict[str, Any], tile_elements: int, head: int | None = None
) -> torch.Tensor:
    """For each key, the query with the largest ``attn_q`` (mean over heads, or one head).

    Returns ``(B, N_k)`` int64 query indices.
    """
    q, k, lse, colsum = state["q"], state["k"], state["lse"], state["colsum"]
    if head is not None:
        q, k = q[:, head : head + 1], k[:, head : head + 1]
        lse, colsum = lse[:, head : head + 1], colsum[:, head : head + 1]
    b, h, nq, d = q.shape
    nk = k.shape[2]
    r = 1.0 / (colsum + state["eps"])  # (B, H, N_k)
    best = torch.full((b, nk), -math.inf, dtype=q.dtype, device=q.device)
    arg = torch.zeros((b, nk), dtype=torch.int64, device=q.device)
    # Tiles over (queries, keys) with all heads, which are summed inside a tile.
    kb = min(nk, 256)
    qb = min(nq, max(1, tile_elements // (h * kb)))
    for bi in range(b):
        for ks in _blocks(nk, kb):
            for qs in _blocks(nq, qb):
                s = torch.einsum("hqd,hkd->hqk", q[bi, :, qs], k[bi, :, ks])
                p = (s - lse[bi, :, qs].unsqueeze(-1)).exp_().mul_(r[bi, :, ks].unsqueeze(1))
                val, idx = p.sum(0).max(dim=0)
                better = val > best[bi, ks]
                best[bi, ks] = torch.where(better, val, best[bi, ks])
                arg[bi, ks] = torch.where(better, idx + qs.start, arg[bi, ks])
    return arg


# ---------------------------------------------------------------------------- the layer
class ExactSGA(DenseSpatialGroupingAttention):
    """The package's dense spatial grouping attention, computed in tiles at linear memory.

    Same parameters (and names) as :class:`DenseSpatialGroupingAttention`, same outputs
    (within float rounding), gradients through a custom autograd function. ``k`` and ``v``
    depend only on the input, so they are computed once for all ``iters`` iterations.
    """

    supports_return_maps = True
    #: Working memory of one attention tile, in elements.
    tile_elements: int = DEFAULT_TILE_ELEMENTS
    #: Set by :mod:`napari_rat.model.attention_maps` to record the last iteration's state.
    _attention_recorder = None

    def _keys_values(self, x, input_spacing, input_grid_shape):
        k, v = self.kv(x).chunk(2, dim=-1)
        k = self.temp * self.rose(k, input_spacing, input_grid_shape, flatten=False).transpose(1, 2)
        # The package reinterprets v's (B, N, D) memory as (B, H, N, d) (no transpose).
        v = v.reshape(*k.shape)
        return k, v

    def _prepare(self, x, input_spacing, input_grid_shape, mask):
        input_spacing = tuple(input_spacing)
        input_grid_shape = tuple(int(n) for n in input_grid_shape)
        q_spacing = self._calculate_strided_spacing(input_spacing)
        q_grid_shape = self._calculate_strided_grid_shape(input_grid_shape)
        b, n_in, d = x.shape
        if mask is not None:
            mask = mask.to(x.device) > 0
            x = torch.where(
                mask.flatten(1).unsqueeze(-1), self.mask_embedding.expand(b, n_in, d), x
            )
        x_out = self.strider(x.transpose(1, 2).reshape(b, d, *input_grid_shape))
        x_out = self.norm1(x_out.flatten(2).transpose(1, 2))
        return x, x_out, input_spacing, input_grid_shape, q_spacing, q_grid_shape

    def _queries(self, x_out, q_spacing, q_grid_shape):
        return self.rose(self.q(x_out), q_spacing, q_grid_shape, flatten=False).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        input_spacing: tuple[float, ...],
        input_grid_shape: tuple[int, ...],
        mask: torch.Tensor | None = None,
        return_maps: bool = True,
    ) -> dict[str, Any]:
        """As the package layer; ``return_maps=False`` skips the dense ``attn_q``/``attn_k``."""
        x, x_out, in_sp, in_grid, q_spacing, q_grid = self._prepare(
            x, input_spacing, input_grid_shape, mask
        )
        b, n_out, d = x_out.shape
        k, v = self._keys_values(x, in_sp, in_grid)
        eps = torch.finfo(k.dtype).eps
        q = lse = colsum = None
        for _ in range(self.iters):
            q = self._queries(x_out, q_spacing, q_grid)
            out, lse, colsum = exact_grouping_attention(q, k, v, eps, self.tile_elements)
            x_out = x_out + self.norm2(out.reshape(b, n_out, d))
            x_out = x_out + self.norm3(self.mlp(x_out))
        result = {"x_out": x_out, "out_grid_shape": q_grid, "out_spacing": q_spacing}
        if self._attention_recorder is not None and q is not None:
            self._attention_recorder(
                self,
                {
                    "kind": "exact",
                    "q": q.detach(),
                    "k": k.detach(),
                    "lse": lse,
                    "colsum": colsum,
                    "eps": eps,
                    "in_grid": in_grid,
                    "in_spacing": in_sp,
                    "out_grid": q_grid,
                    "out_spacing": q_spacing,
                },
            )
        if return_maps and q is not None:
            attn_k = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k), dim=-1)
            result["attn_k"] = attn_k
            result["attn_q"] = attn_k / (attn_k.sum(dim=-2, keepdim=True) + eps)
        return result

    # ---- on-demand attention maps (see napari_rat.model.attention_maps)
    def attention_rows(self, state: dict[str, Any], queries: torch.Tensor) -> torch.Tensor:
        """Rows of this layer's ``attn_q`` for ``queries`` (flat output-token indices)."""
        return exact_rows(state, queries)

    def propagate_rows(self, state: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
        """``rows @ attn_q`` without the matrix: ``(B, H, N_out)`` → ``(B, H, N_in)``."""
        return exact_propagate(state, rows, self.tile_elements)

    def group_assignment(self, state: dict[str, Any], head: int | None = None) -> torch.Tensor:
        """Each input token's group token (argmax of ``attn_q`` over queries): ``(B, N_in)``."""
        return exact_assignment(state, self.tile_elements, head)
