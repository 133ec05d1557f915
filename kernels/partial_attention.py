"""Phase 1 of DeFT decode: partial attention of one KV chunk for every query that shares it.

A work item is a chunk of one tree node's KV (``kv_len`` tokens starting at ``kv_begin`` in
``node_kv_indices``) and the node's query group (``q_count`` queries starting at ``q_begin`` in the
sorted query order).  The query heads that share the KV head are packed into rows (GQA): row ``r``
is query ``r // GROUP`` and head ``r % GROUP`` of this KV head, so a chunk is applied to all
``q_count * GROUP`` rows.

By default one program handles one work item for one KV head (grid ``[num_items, Hkv]``, or
``[num_items * Hkv]`` item-major with ``INTERLEAVE_HEADS``, the planner's default, so that every
head's heaviest items start first).  For CUDA graphs a fixed grid of persistent programs consumes
the work list through an atomic counter instead (one per KV head, or one over (item, head) pairs
when interleaved): each program claims the next unclaimed item whenever it is free.  The planner
sorts items heaviest first, so the heavy items start first and the light ones fill in behind
them; load balance matches the one-program-per-item grid, whose hardware block scheduler hands
items out in the same order.

Rows are processed in tiles of ``BLOCK_M``; for each row tile the chunk is streamed in blocks of
``BLOCK_N`` tokens with an online softmax.  A program whose group needs several row tiles walks
the same chunk once per tile; the planner bounds such chunks so that the later passes are served
from L2 and device memory sees each KV byte once.

Shapes and strides::

    q            [B, Hq, D]              any strides on B and H, unit stride on D
    k_cache      [num_slots, Hkv, D]     likewise; v_cache the same
    query_order  int32 [B]               sorted position -> query id
    items        int32 [5, num_items]    rows: kv_begin, kv_len, q_begin, q_count, slot_base
    work_counters int32 [Hkv]            persistent grid only: next unclaimed item, zero at launch
    partial_out  [P, Hq, D]              normalised partial output of each (item, query), fp32
                                         or q's 16-bit dtype
    partial_lse  fp32 [P, Hq]            its log2-sum-exp (log base 2, scaled scores)

The partial slot of sorted query ``s`` in item ``i`` is ``slot_base[i] + s - q_begin[i]``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import interpreter_active
from .merge import fold_partials, store_merged

LOG2E = 1.4426950408889634


@triton.jit
def online_softmax_block(q, k, v, allowed, m_i, l_i, acc, qk_scale_log2,
                         IEEE_FP32: tl.constexpr, MAY_BE_EMPTY: tl.constexpr):
    """One KV block of a row tile (flash attention, log2 domain): scores ``q k^T`` where
    ``allowed``, then the running max ``m_i``, sum ``l_i`` and output ``acc`` of every row.
    ``MAY_BE_EMPTY``: a row may have no allowed key yet (its running max is still -inf)."""
    if IEEE_FP32:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(allowed, s * qk_scale_log2, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    if MAY_BE_EMPTY:
        m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
    else:
        m_ref = m_new
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if IEEE_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _attend_rows(q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, partial_out_ptr,
                 partial_lse_ptr, kv_head, kv_begin, kv_len, q_begin, num_rows, slot_base,
                 stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                 stride_pp, stride_ph, stride_lp, qk_scale_log2,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for row_start in range(0, num_rows, BLOCK_M):
        rows = row_start + offs_m
        mask_m = rows < num_rows
        local_query = rows // GROUP
        head = kv_head * GROUP + rows % GROUP
        query = tl.load(query_order_ptr + q_begin + local_query, mask=mask_m, other=0)
        q = tl.load(q_ptr + query[:, None].to(tl.int64) * stride_qb
                    + head[:, None] * stride_qh + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for kv_start in range(0, kv_len, BLOCK_N):
            cols = kv_start + offs_n
            mask_n = cols < kv_len
            slots = tl.load(kv_indices_ptr + kv_begin + cols, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            k = tl.load(k_ptr + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                        mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                        mask=kv_mask, other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            m_i, l_i, acc = online_softmax_block(q, k, v, mask_n[None, :], m_i, l_i, acc,
                                                 qk_scale_log2, IEEE_FP32, False)
        out = acc / l_i[:, None]
        slot = (slot_base + local_query).to(tl.int64)
        tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
                 + offs_d[None, :], out, mask=mask_m[:, None] & mask_d[None, :])
        tl.store(partial_lse_ptr + slot * stride_lp + head, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _run_item(item, kv_head, q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, items_ptr,
              items_stride, partial_out_ptr, partial_lse_ptr,
              stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
              stride_pp, stride_ph, stride_lp, qk_scale_log2,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
              SMALL_M: tl.constexpr, SMALL_N: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr):
    kv_begin = tl.load(items_ptr + item)
    kv_len = tl.load(items_ptr + items_stride + item)
    q_begin = tl.load(items_ptr + 2 * items_stride + item)
    num_rows = tl.load(items_ptr + 3 * items_stride + item) * GROUP
    slot_base = tl.load(items_ptr + 4 * items_stride + item)
    # One launch serves items of every size, so all of them balance over the SMs together;
    # items with few rows (plain decode, small groups) take the small row tile.
    if SMALL_M == BLOCK_M or num_rows <= SMALL_M:
        _attend_rows(q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, partial_out_ptr,
                     partial_lse_ptr, kv_head, kv_begin, kv_len, q_begin, num_rows, slot_base,
                     stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                     stride_pp, stride_ph, stride_lp, qk_scale_log2,
                     HEAD_DIM, BLOCK_D, GROUP, SMALL_M, SMALL_N, DOT_FP32, IEEE_FP32)
    else:
        _attend_rows(q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, partial_out_ptr,
                     partial_lse_ptr, kv_head, kv_begin, kv_len, q_begin, num_rows, slot_base,
                     stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                     stride_pp, stride_ph, stride_lp, qk_scale_log2,
                     HEAD_DIM, BLOCK_D, GROUP, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32)


@triton.jit
def _merge_finished_queries(item, kv_head, items_ptr, items_stride, query_order_ptr,
                            counters_ptr, merge_indptr_ptr, merge_slots_ptr, partial_out_ptr,
                            partial_lse_ptr, out_ptr, stride_pp, stride_ph, stride_lp,
                            stride_ob, stride_oh,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                            BLOCK_G: tl.constexpr, MERGE_P: tl.constexpr, BLOCK_Q: tl.constexpr,
                            NUM_KV_HEADS: tl.constexpr):
    """Fused phase 2: count this item's partials in, and merge the KV head's query heads of
    every query whose last partial this was (its ``counters[query, kv_head]`` reaching the
    query's partial count), then zero that counter for the next launch.  The merge reads the
    slots in merge-list order, so the result does not depend on which program merges."""
    q_begin = tl.load(items_ptr + 2 * items_stride + item)
    q_count = tl.load(items_ptr + 3 * items_stride + item)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_g = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + offs_g
    mask_g = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_gd = mask_g[:, None] & (offs_d < HEAD_DIM)[None, :]
    # Every thread's partial stores come before the counts (the atomics release them to the
    # merging program, whose atomics acquire them).
    tl.debug_barrier()
    for start in range(0, q_count, BLOCK_Q):
        live = start + offs_q < q_count
        query = tl.load(query_order_ptr + q_begin + start + offs_q, mask=live, other=0)
        begin = tl.load(merge_indptr_ptr + query, mask=live, other=0)
        end = tl.load(merge_indptr_ptr + query + 1, mask=live, other=0)
        counter = counters_ptr + query * NUM_KV_HEADS + kv_head
        seen = tl.atomic_add(counter, 1, mask=live, sem="acq_rel")
        last = live & (seen == end - begin - 1)
        tl.debug_barrier()
        for lane in range(0, tl.minimum(BLOCK_Q, q_count - start)):
            pick = offs_q == lane
            if tl.sum(tl.where(pick & last, 1, 0)) > 0:
                query_j = tl.sum(tl.where(pick, query, 0))
                tl.store(counters_ptr + query_j * NUM_KV_HEADS + kv_head, 0)
                weight_sum, acc = fold_partials(
                    partial_out_ptr, partial_lse_ptr, merge_slots_ptr,
                    tl.sum(tl.where(pick, begin, 0)), tl.sum(tl.where(pick, end, 0)),
                    heads, mask_g, offs_d, mask_gd, stride_pp, stride_ph, stride_lp,
                    tl.full([BLOCK_G], -float("inf"), tl.float32),
                    tl.zeros([BLOCK_G], tl.float32), tl.zeros([BLOCK_G, BLOCK_D], tl.float32),
                    MERGE_P, 0, ".cg")
                store_merged(out_ptr, query_j, heads, offs_d, mask_gd, stride_ob, stride_oh,
                             weight_sum, acc)


@triton.jit
def _partial_attention_kernel(
    q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, items_ptr, items_stride, bounds_ptr,
    work_counters_ptr, partial_out_ptr, partial_lse_ptr,
    merge_counters_ptr, merge_indptr_ptr, merge_slots_ptr, out_ptr,
    stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_pp, stride_ph, stride_lp, stride_ob, stride_oh,
    qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    SMALL_M: tl.constexpr, SMALL_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr, PERSISTENT: tl.constexpr,
    INTERLEAVE_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
    FUSED_MERGE: tl.constexpr, BLOCK_G: tl.constexpr, MERGE_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    # INTERLEAVE_HEADS: one order over (item, KV head) pairs, item-major, so the heaviest items
    # of every head start first (a head-major order starts the last head's heavy items last).
    if PERSISTENT:
        # A fixed grid walks a work list whose length lives in device memory (CUDA graphs).
        # Items are claimed one at a time rather than dealt round-robin: items differ widely in
        # cost, and a static deal can leave programs that drew heavy items running after the
        # rest are idle.  No `break` in Triton: claim the first item before the loop.  Relaxed
        # order suffices: the counter is the only state programs share (items are read-only and
        # every partial slot has one writer), and acq_rel's fences cost about 5% (H200).
        first, end = tl.load(bounds_ptr), tl.load(bounds_ptr + 1)
        if INTERLEAVE_HEADS:  # one counter over the pairs
            counter, total = work_counters_ptr, (end - first) * NUM_KV_HEADS
        else:  # one counter per KV head
            counter, total = work_counters_ptr + tl.program_id(1), end - first
        claim = tl.atomic_add(counter, 1, sem="relaxed")
        while claim < total:
            if INTERLEAVE_HEADS:
                item, kv_head = first + claim // NUM_KV_HEADS, claim % NUM_KV_HEADS
            else:
                item, kv_head = first + claim, tl.program_id(1)
            _run_item(item, kv_head, q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr,
                      items_ptr, items_stride, partial_out_ptr, partial_lse_ptr,
                      stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                      stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM, BLOCK_D, GROUP,
                      SMALL_M, SMALL_N, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32)
            if FUSED_MERGE:
                _merge_finished_queries(item, kv_head, items_ptr, items_stride, query_order_ptr,
                                        merge_counters_ptr, merge_indptr_ptr, merge_slots_ptr,
                                        partial_out_ptr, partial_lse_ptr, out_ptr, stride_pp,
                                        stride_ph, stride_lp, stride_ob, stride_oh, HEAD_DIM,
                                        BLOCK_D, GROUP, BLOCK_G, MERGE_P, BLOCK_Q, NUM_KV_HEADS)
            claim = tl.atomic_add(counter, 1, sem="relaxed")
    else:
        if INTERLEAVE_HEADS:
            item, kv_head = tl.program_id(0) // NUM_KV_HEADS, tl.program_id(0) % NUM_KV_HEADS
        else:
            item, kv_head = tl.program_id(0), tl.program_id(1)
        _run_item(item, kv_head, q_ptr, k_ptr, v_ptr, kv_indices_ptr,
                  query_order_ptr, items_ptr, items_stride, partial_out_ptr, partial_lse_ptr,
                  stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                  stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM, BLOCK_D, GROUP,
                  SMALL_M, SMALL_N, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32)
        if FUSED_MERGE:
            _merge_finished_queries(item, kv_head, items_ptr, items_stride, query_order_ptr,
                                    merge_counters_ptr, merge_indptr_ptr, merge_slots_ptr,
                                    partial_out_ptr, partial_lse_ptr, out_ptr, stride_pp,
                                    stride_ph, stride_lp, stride_ob, stride_oh, HEAD_DIM,
                                    BLOCK_D, GROUP, BLOCK_G, MERGE_P, BLOCK_Q, NUM_KV_HEADS)


def launch_partial_attention(q, k_cache, v_cache, kv_indices, query_order, items, partial_out,
                             partial_lse, sm_scale: float, small_m: int, small_n: int,
                             block_m: int, block_n: int, num_warps: int, num_stages: int,
                             item_bounds: torch.Tensor | None = None, num_programs: int = 0,
                             work_counters: torch.Tensor | None = None, max_registers: int = 0,
                             interleave_heads: bool = False, fused_merge=None):
    """Run phase 1 over ``items`` (int32 [5, capacity], row-major: kv_begin, kv_len, q_begin,
    q_count, slot_base).  Items of at most ``small_m`` rows use ``small_m x small_n`` tiles, the
    others ``block_m x block_n``.  Writes ``partial_out``/``partial_lse``; no host sync.

    By default one program per item.  With ``item_bounds`` (int32 [2] on the device: first, end)
    a fixed grid of ``num_programs`` programs per KV head consumes items ``[first, end)``
    through ``work_counters`` (int32 [Hkv] on the device, required then): the launch depends on
    no host value of the tree, as CUDA-graph replay requires.  The counters must be zero at
    launch and are left past the end of the list, so the caller zeroes them before every launch
    (a memset, which a graph captures too).  ``max_registers`` > 0 caps the registers per
    thread (the compiler's ``maxnreg``; ignored by the interpreter).  ``interleave_heads``: the
    programs take (item, KV head) pairs item-major, so every head's heaviest items go first (a
    1-D grid; persistent programs then share ``work_counters[0]``).
    ``fused_merge``: ``(merge_counters int32 [B, Hkv] zeroed, merge_indptr, merge_slots, out)``
    to merge each query in the program that writes its last partial (phase 2 in this launch:
    see ``_merge_finished_queries``; every query needs at least one partial, and the counters
    are left zeroed).
    Returns the compiled kernel (registers, spills, shared memory), or None for no items.

    Raises
    ------
    ValueError
        If ``item_bounds`` is given without ``work_counters`` of at least Hkv int32 entries.
    """
    persistent = item_bounds is not None
    num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
    if persistent and (work_counters is None or work_counters.dtype != torch.int32
                       or work_counters.numel() < num_kv_heads
                       or not work_counters.is_contiguous()):
        raise ValueError("a persistent launch (item_bounds) needs work_counters: "
                         f"int32 [{num_kv_heads}] (one per KV head), zeroed before each launch")
    num_items = items.shape[1]
    if num_items == 0 or (persistent and num_programs < 1):
        return None
    group = q.shape[1] // num_kv_heads
    interpret = interpreter_active()
    fp32_inputs = q.dtype == torch.float32
    grid = (num_programs if persistent else num_items, num_kv_heads)
    if interleave_heads:
        grid = (grid[0] * grid[1],)
    options = dict(maxnreg=max_registers) if max_registers and not interpret else {}
    block_d, block_g = triton.next_power_of_2(head_dim), triton.next_power_of_2(group)
    merge_counters, merge_indptr, merge_slots, out = fused_merge or (items,) * 4
    return _partial_attention_kernel[grid](
        q, k_cache, v_cache, kv_indices, query_order, items, items.stride(0),
        item_bounds if persistent else items, work_counters if persistent else items,
        partial_out, partial_lse, merge_counters, merge_indptr, merge_slots, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        out.stride(0), out.stride(1) if out.dim() > 1 else 0,
        sm_scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=block_d, GROUP=group,
        SMALL_M=small_m, SMALL_N=small_n, BLOCK_M=block_m, BLOCK_N=block_n,
        # The interpreter's bf16 dot is wrong (design.md); fp32 tests want exact fp32 products.
        DOT_FP32=interpret and q.dtype != torch.float16,
        IEEE_FP32=fp32_inputs or (interpret and q.dtype == torch.bfloat16),
        PERSISTENT=persistent, INTERLEAVE_HEADS=interleave_heads, NUM_KV_HEADS=num_kv_heads,
        FUSED_MERGE=fused_merge is not None, BLOCK_G=block_g, BLOCK_Q=16,
        MERGE_P=max(1, min(8, 8192 // (block_g * block_d))),  # the merge kernel's tile bound
        num_warps=num_warps, num_stages=num_stages, **options,
    )
