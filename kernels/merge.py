"""Phase 2 of DeFT decode: merge each query's partial results by log-sum-exp.

Query ``b`` owns the partial slots ``merge_slots[merge_indptr[b]:merge_indptr[b+1]]`` (always in
the same order, so the result is deterministic; no atomics).  A query with no partial (its whole
path holds no token) gets zeros.

Two loops, one kernel: with ``stages`` > 0 it folds one partial per loop step into a
``[heads, D]`` tile and lets Triton pipeline the loop's loads; with ``stages=0`` it folds
``BLOCK_P`` partials per step in a 3-D tile.  On an H100 the 3-D tile (BLOCK_P = 8) ran at about
0.3 TB/s on a large batch (64 queries x 20 partials x 32 heads of 128: 33.8 us, against 12.5 us
sequential; ``benchmarks/results/session5-h100/merge-bench``), while small batches, whose
sequential chains are exposed, merge faster blocked: ``PlannerConfig.merge_stages_for`` picks.

Shapes and strides::

    partial_out   [P, Hq, D] (fp32, or q's 16-bit dtype)   partial_lse  fp32 [P, Hq]  (log base 2)
    merge_indptr  int32 [B+1]          merge_slots  int32 [P]
    out           [B, Hq, D]           dtype of q
    extra_out     [>=B, Hq, D]         optional: one more partial per query, row b for query b
    extra_lse     fp32 [>=B, Hq]       (tree verification: the draft-tree part, kernels.verify)
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .config import interpreter_active

try:  # programmatic dependent launch (Hopper and later; Triton >= 3.3)
    from triton.language.extra.cuda import gdc_wait
except ImportError:  # pragma: no cover - older Triton: PDL is never requested
    gdc_wait = None


@triton.jit
def fold_one(m_run, weight_sum, acc, lse, part):
    """Fold one partial per row (``lse`` [R] log2, ``part`` [R, D] fp32; an absent partial has
    lse -inf and leaves the row unchanged) into the running max, weight sum and output."""
    m_new = tl.maximum(m_run, lse)
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    scale_old = tl.exp2(m_run - m_safe)
    w = tl.exp2(lse - m_safe)
    return m_new, weight_sum * scale_old + w, acc * scale_old[:, None] + part * w[:, None]


@triton.jit
def fold_partials(partial_out_ptr, partial_lse_ptr, merge_slots_ptr, begin, end, offs_h, mask_h,
                  offs_d, mask_hd, stride_pp, stride_ph, stride_lp, m_run, weight_sum, acc,
                  BLOCK_P: tl.constexpr, STAGES: tl.constexpr, CACHE: tl.constexpr):
    """Fold partial slots ``merge_slots[begin:end]`` of heads ``offs_h`` into the running max
    ``m_run``, weight sum and unnormalised output ``acc``.  ``STAGES`` > 0:
    one partial per step, the loop's loads pipelined that deep; 0: ``BLOCK_P`` per step (3-D
    tile); returns all three.  ``CACHE``: the partials' load cache modifier (".cg", L2 only, for partials written
    by other programs of the same launch, which this SM's L1 may hold stale lines of)."""
    if STAGES > 0:
        for index in tl.range(begin, end, num_stages=STAGES):
            slot = tl.load(merge_slots_ptr + index).to(tl.int64)
            lse = tl.load(partial_lse_ptr + slot * stride_lp + offs_h, mask=mask_h,
                          other=-float("inf"), cache_modifier=CACHE)
            part = tl.load(partial_out_ptr + slot * stride_pp + offs_h[:, None] * stride_ph
                           + offs_d[None, :], mask=mask_hd, other=0.0,
                           cache_modifier=CACHE).to(tl.float32)
            m_run, weight_sum, acc = fold_one(m_run, weight_sum, acc, lse, part)
    else:
        offs_p = tl.arange(0, BLOCK_P)
        for start in range(begin, end, BLOCK_P):
            mask_p = start + offs_p < end
            slots = tl.load(merge_slots_ptr + start + offs_p, mask=mask_p, other=0).to(tl.int64)
            lse = tl.load(partial_lse_ptr + slots[:, None] * stride_lp + offs_h[None, :],
                          mask=mask_p[:, None] & mask_h[None, :], other=-float("inf"),
                          cache_modifier=CACHE)
            part = tl.load(partial_out_ptr + slots[:, None, None] * stride_pp
                           + offs_h[None, :, None] * stride_ph + offs_d[None, None, :],
                           mask=mask_p[:, None, None] & mask_hd[None, :, :],
                           other=0.0, cache_modifier=CACHE).to(tl.float32)
            m_new = tl.maximum(m_run, tl.max(lse, axis=0))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            scale_old = tl.exp2(m_run - m_safe)
            w = tl.exp2(lse - m_safe[None, :])
            weight_sum = weight_sum * scale_old + tl.sum(w, axis=0)
            acc = acc * scale_old[:, None] + tl.sum(part * w[:, :, None], axis=0)
            m_run = m_new
    return m_run, weight_sum, acc


@triton.jit
def fold_tail_tokens(q_ptr, k_ptr, v_ptr, tail_slots_ptr, begin, end, query, offs_h, mask_h,
                     offs_d, mask_hd, stride_qb, stride_qh, stride_kn, stride_kh, stride_vn,
                     stride_vh, qk_scale_log2, m_run, weight_sum, acc, GROUP: tl.constexpr):
    """Attend heads ``offs_h`` of ``query`` to the KV slots ``tail_slots[begin:end]`` (its
    private tail, see ``kernels.short_tails``) one token at a time: a token is a partial of its
    own, output v at log2-sum-exp = its scaled score, folded like the others."""
    q = tl.load(q_ptr + query.to(tl.int64) * stride_qb + offs_h[:, None] * stride_qh
                + offs_d[None, :], mask=mask_hd, other=0.0).to(tl.float32)
    kv_head = offs_h // GROUP
    # Pipelined like the sequential merge: the next tokens' loads go out before this fold.
    for index in tl.range(begin, end, num_stages=4):
        slot = tl.load(tail_slots_ptr + index).to(tl.int64)
        k = tl.load(k_ptr + slot * stride_kn + kv_head[:, None] * stride_kh + offs_d[None, :],
                    mask=mask_hd, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + slot * stride_vn + kv_head[:, None] * stride_vh + offs_d[None, :],
                    mask=mask_hd, other=0.0).to(tl.float32)
        score = tl.where(mask_h, tl.sum(q * k, axis=1) * qk_scale_log2, -float("inf"))
        m_run, weight_sum, acc = fold_one(m_run, weight_sum, acc, score, v)
    return m_run, weight_sum, acc


@triton.jit
def store_merged(out_ptr, query, offs_h, offs_d, mask_hd, stride_ob, stride_oh, weight_sum, acc):
    """The merged result of ``query``'s heads ``offs_h`` (zeros where it had no partial)."""
    result = tl.where(weight_sum[:, None] > 0, acc / weight_sum[:, None], 0.0)
    tl.store(out_ptr + query.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh
             + offs_d[None, :], result.to(out_ptr.dtype.element_ty), mask=mask_hd)


@triton.jit
def _merge_partials_kernel(
    partial_out_ptr, partial_lse_ptr, merge_indptr_ptr, merge_slots_ptr, out_ptr,
    extra_out_ptr, extra_lse_ptr, q_ptr, k_ptr, v_ptr, tail_indptr_ptr, tail_slots_ptr,
    pack_slots_ptr,
    stride_pp, stride_ph, stride_lp, stride_ob, stride_oh, stride_eb, stride_eh, stride_le,
    stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, qk_scale_log2,
    num_heads,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    STAGES: tl.constexpr, EXTRA: tl.constexpr, WAIT_PRIOR: tl.constexpr, TAIL: tl.constexpr,
    GROUP: tl.constexpr, PACKED: tl.constexpr,
):
    """``STAGES`` > 0: one partial per loop step (a [BLOCK_H, BLOCK_D] tile, few registers), the
    loop's loads pipelined that deep; 0: ``BLOCK_P`` partials per step (a 3-D tile).
    ``WAIT_PRIOR``: launched as a programmatic dependent of phase 1, which may still be running:
    wait for it to finish (and its writes to show) before reading anything it writes.
    ``TAIL``: then attend the query's private tail, ``tail_slots[tail_indptr[b]:...[b+1]]``.
    ``PACKED``: then fold partial ``pack_slots[b]`` too, the query's tail attended in a phase-1
    pack (none where it is negative)."""
    query = tl.program_id(0)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < num_heads
    begin = tl.load(merge_indptr_ptr + query)
    end = tl.load(merge_indptr_ptr + query + 1)
    if WAIT_PRIOR:
        gdc_wait()
    offs_d = tl.arange(0, BLOCK_D)
    mask_hd = mask_h[:, None] & (offs_d < HEAD_DIM)[None, :]
    m_run = tl.full([BLOCK_H], -float("inf"), tl.float32)
    weight_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if EXTRA:  # start from the query's extra partial (weight 1 at its own LSE, 0 when empty)
        m_run = tl.load(extra_lse_ptr + query.to(tl.int64) * stride_le + offs_h, mask=mask_h,
                        other=-float("inf"))
        weight_sum = tl.where(m_run == -float("inf"), 0.0, 1.0)
        acc = tl.load(extra_out_ptr + query.to(tl.int64) * stride_eb
                      + offs_h[:, None] * stride_eh + offs_d[None, :],
                      mask=mask_hd, other=0.0).to(tl.float32) * weight_sum[:, None]
    m_run, weight_sum, acc = fold_partials(partial_out_ptr, partial_lse_ptr, merge_slots_ptr,
                                           begin, end, offs_h, mask_h, offs_d, mask_hd,
                                           stride_pp, stride_ph, stride_lp, m_run, weight_sum,
                                           acc, BLOCK_P, STAGES, "")
    if TAIL:  # (q and the KV were written before phase 1 began: no wait needed for them)
        m_run, weight_sum, acc = fold_tail_tokens(
            q_ptr, k_ptr, v_ptr, tail_slots_ptr, tl.load(tail_indptr_ptr + query),
            tl.load(tail_indptr_ptr + query + 1), query, offs_h, mask_h, offs_d, mask_hd,
            stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, qk_scale_log2,
            m_run, weight_sum, acc, GROUP)
    if PACKED:
        slot = tl.load(pack_slots_ptr + query)
        has = slot >= 0
        slot = tl.maximum(slot, 0).to(tl.int64)
        lse = tl.load(partial_lse_ptr + slot * stride_lp + offs_h, mask=mask_h & has,
                      other=-float("inf"))
        part = tl.load(partial_out_ptr + slot * stride_pp + offs_h[:, None] * stride_ph
                       + offs_d[None, :], mask=mask_hd & has, other=0.0).to(tl.float32)
        m_run, weight_sum, acc = fold_one(m_run, weight_sum, acc, lse, part)
    store_merged(out_ptr, query, offs_h, offs_d, mask_hd, stride_ob, stride_oh, weight_sum, acc)


def merge_launch_shape(num_queries: int, num_heads: int, head_dim: int, most_partials: int,
                       num_sms: int, block_h: int = 0) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_P) for the merge: enough programs to fill the GPU, few block launches
    (a launch per (query, head) is limited by block scheduling at large batches), and most
    queries merged in one step (a serial chain of loads is latency-bound).  ``block_h`` > 0
    fixes the heads per program instead."""
    return _merge_launch_shape(num_queries, num_heads, head_dim, most_partials, num_sms, block_h,
                               interpreter_active())


@functools.lru_cache(maxsize=4096)  # a plan asks once; batches repeat their shapes
def _merge_launch_shape(num_queries, num_heads, head_dim, most_partials, num_sms, block_h,
                        interpreted):
    if block_h > 0:
        block_h = min(block_h, 1 << (num_heads - 1).bit_length())
    else:
        block_h = 1
        while block_h < num_heads and \
                num_queries * (-(-num_heads // (2 * block_h))) >= 4 * num_sms:
            block_h *= 2
    if interpreted:  # the interpreter runs programs one by one: make few, wide ones
        block_h = 1 << (num_heads - 1).bit_length()
    block_d = 1 << (head_dim - 1).bit_length()
    block_p = 1 << max(0, (max(most_partials, 1) - 1).bit_length())
    while block_p > 1 and block_p * block_h * block_d > 8192:
        block_p //= 2
    return block_h, block_p


def launch_merge(partial_out, partial_lse, merge_indptr, merge_slots, out, block_h: int = 1,
                 block_p: int = 8, extra=None, stages: int = 0, num_warps: int = 4,
                 pdl: bool = False, tail=None, pack_slots=None):
    """Write ``out[b]`` as the LSE-weighted sum of query ``b``'s partials; no host sync.
    ``block_h`` heads and ``block_p`` partials per step (see :func:`merge_launch_shape`);
    ``stages`` > 0: one partial per step instead, the loop pipelined that deep.
    ``extra``: optional ``(extra_out, extra_lse)``, one more partial per query (row b).
    ``pdl``: launch as a programmatic dependent of the previous kernel (phase 1, which lets it
    start early with ``pdl_trigger``): its programs are resident and waiting when phase 1
    ends, which hides the launch gap.  Only on Hopper or later, never in the interpreter.
    ``tail``: optional ``(q, k_cache, v_cache, tail_indptr int32 [B+1], tail_slots int32,
    qk_scale_log2)``: query b also attends the KV slots ``tail_slots[tail_indptr[b]:
    tail_indptr[b+1]]`` (``kernels.short_tails``).  ``pack_slots``: optional int32 [B],
    one more partial slot per query (its tail's, from a phase-1 pack), or -1 for none."""
    num_queries, num_qo_heads, head_dim = out.shape
    if num_queries == 0:
        return
    extra_out, extra_lse = extra if extra is not None else (partial_out, partial_lse)
    q, k_cache, v_cache, tail_indptr, tail_slots, qk_scale_log2 = \
        tail if tail is not None else (out, partial_out, partial_out, merge_indptr, merge_slots, 1.0)
    _merge_partials_kernel[(num_queries, triton.cdiv(num_qo_heads, block_h))](
        partial_out, partial_lse, merge_indptr, merge_slots, out, extra_out, extra_lse,
        q, k_cache, v_cache, tail_indptr, tail_slots,
        pack_slots if pack_slots is not None else merge_indptr,
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        out.stride(0), out.stride(1), extra_out.stride(0), extra_out.stride(1),
        extra_lse.stride(0), q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), float(qk_scale_log2), num_qo_heads,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_H=block_h,
        BLOCK_P=1 if stages > 0 else block_p, STAGES=stages, EXTRA=extra is not None,
        WAIT_PRIOR=pdl, TAIL=tail is not None,
        GROUP=num_qo_heads // k_cache.shape[1] if tail is not None else 1,
        PACKED=pack_slots is not None,
        num_warps=num_warps, **(dict(launch_pdl=True) if pdl else {}),
    )


@triton.jit
def _merge_two_kernel(a_out_ptr, a_lse_ptr, b_out_ptr, b_lse_ptr, out_ptr, lse_ptr,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse_a = tl.load(a_lse_ptr + row)
    lse_b = tl.load(b_lse_ptr + row)
    m = tl.maximum(lse_a, lse_b)
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    w_a = tl.exp(lse_a - m_safe)
    w_b = tl.exp(lse_b - m_safe)
    total = w_a + w_b
    o_a = tl.load(a_out_ptr + row * HEAD_DIM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    o_b = tl.load(b_out_ptr + row * HEAD_DIM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    merged = tl.where(total > 0, (o_a * w_a + o_b * w_b) / total, 0.0)
    tl.store(out_ptr + row * HEAD_DIM + offs_d, merged.to(out_ptr.dtype.element_ty), mask=mask_d)
    tl.store(lse_ptr + row, m_safe + tl.log(total))


def merge_attention_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                           lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results over disjoint key sets.

    Parameters
    ----------
    out_a, out_b : [..., D] normalised partial outputs (any float dtype).
    lse_a, lse_b : fp32 [...] their log-sum-exp of scaled scores (natural log; -inf = empty).

    Returns
    -------
    (out, lse) : the attention over the union of both key sets; out in ``out_a.dtype``.
    """
    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape or out_a.shape[:-1] != lse_a.shape:
        raise ValueError("out_a/out_b must share shape [..., D] and lse_a/lse_b shape [...]")
    head_dim = out_a.shape[-1]
    a, b = out_a.reshape(-1, head_dim).contiguous(), out_b.reshape(-1, head_dim).contiguous()
    la = lse_a.reshape(-1).float().contiguous()
    lb = lse_b.reshape(-1).float().contiguous()
    out = torch.empty_like(a)
    lse = torch.empty_like(la)
    if a.shape[0]:
        _merge_two_kernel[(a.shape[0],)](a, la, b, lb, out, lse, HEAD_DIM=head_dim,
                                         BLOCK_D=triton.next_power_of_2(head_dim))
    return out.reshape(out_a.shape), lse.reshape(lse_a.shape)
