"""Phase 1 of DeFT decode: partial attention of one KV chunk for every query that shares it.

A work item is a chunk of one tree node's KV (``kv_len`` tokens starting at ``kv_begin`` in
``node_kv_indices``) and the node's query group (``q_count`` queries starting at ``q_begin`` in the
sorted query order).  The query heads that share the KV head are packed into rows (GQA): row ``r``
is query ``r // GROUP`` and head ``r % GROUP`` of this KV head, so a chunk is applied to all
``q_count * GROUP`` rows.

After the items the launch may run packs of short private tails (``kernels.short_tails``):
the tails of a few queries, their keys side by side, in one 16-row tile where each row sees
only its own query's keys.

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

try:  # programmatic dependent launch (Hopper and later; Triton >= 3.3)
    from triton.language.extra.cuda import gdc_launch_dependents
except ImportError:  # pragma: no cover - older Triton: PDL is never requested
    gdc_launch_dependents = None

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
def gather_kv_block(k_ptr, v_ptr, slots_ptr, cols, mask_n, kv_head, offs_d, mask_d, stride_kn,
                    stride_kh, stride_vn, stride_vh, DOT_FP32: tl.constexpr):
    """K and V ([BLOCK_N, BLOCK_D]) of one KV head at the pool slots ``slots_ptr[cols]``
    (zeros where ``mask_n`` is off), in fp32 when ``DOT_FP32``."""
    slots = tl.load(slots_ptr + cols, mask=mask_n, other=0).to(tl.int64)
    kv_mask = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_ptr + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


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
            k, v = gather_kv_block(k_ptr, v_ptr, kv_indices_ptr + kv_begin, cols, mask_n,
                                   kv_head, offs_d, mask_d, stride_kn, stride_kh, stride_vn,
                                   stride_vh, DOT_FP32)
            m_i, l_i, acc = online_softmax_block(q, k, v, mask_n[None, :], m_i, l_i, acc,
                                                 qk_scale_log2, IEEE_FP32, False)
        out = acc / l_i[:, None]
        slot = (slot_base + local_query).to(tl.int64)
        tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
                 + offs_d[None, :], out, mask=mask_m[:, None] & mask_d[None, :])
        tl.store(partial_lse_ptr + slot * stride_lp + head, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _attend_tail_pack(pack, kv_head, q_ptr, k_ptr, v_ptr, pack_info_ptr, tail_indptr_ptr,
                      tail_slots_ptr, partial_out_ptr, partial_lse_ptr,
                      stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                      stride_pp, stride_ph, stride_lp, qk_scale_log2,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                      PACK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr):
    """Pack ``pack`` of short private tails (``kernels.short_tails``): the tails of up to
    ``per_pack`` queries, whose keys lie side by side in ``tail_slots``, attended in one row
    tile; each row sees only its own query's keys.  Packed tail ``j``'s partial is slot
    ``pack_info[2] + j``."""
    num_tails = tl.load(pack_info_ptr)
    per_pack = tl.load(pack_info_ptr + 1)
    slot_base = tl.load(pack_info_ptr + 2)
    offs_m = tl.arange(0, PACK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < HEAD_DIM
    rank = pack * per_pack + offs_m // GROUP  # which packed tail each row belongs to
    mask_m = (offs_m // GROUP < per_pack) & (rank < num_tails)
    query = tl.load(pack_info_ptr + 3 + rank, mask=mask_m, other=0)
    key_begin = tl.load(tail_indptr_ptr + query, mask=mask_m, other=0)
    key_end = tl.load(tail_indptr_ptr + query + 1, mask=mask_m, other=0)
    head = kv_head * GROUP + offs_m % GROUP
    q = tl.load(q_ptr + query[:, None].to(tl.int64) * stride_qb + head[:, None] * stride_qh
                + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    m_i = tl.full([PACK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([PACK_M], tl.float32)
    acc = tl.zeros([PACK_M, BLOCK_D], tl.float32)
    # The pack's tails are consecutive in tail_slots: one key range covers them all.
    first = tl.min(tl.where(mask_m, key_begin, 2147483647))
    last = tl.max(tl.where(mask_m, key_end, 0))
    for kv_start in range(first, last, BLOCK_N):
        cols = kv_start + offs_n
        mask_n = cols < last
        k, v = gather_kv_block(k_ptr, v_ptr, tail_slots_ptr, cols, mask_n, kv_head, offs_d,
                               mask_d, stride_kn, stride_kh, stride_vn, stride_vh, DOT_FP32)
        own = (cols[None, :] >= key_begin[:, None]) & (cols[None, :] < key_end[:, None])
        m_i, l_i, acc = online_softmax_block(q, k, v, own, m_i, l_i, acc, qk_scale_log2,
                                             IEEE_FP32, True)
    owns = l_i > 0  # (rows past the pack's tails own no key)
    out = acc / tl.where(owns, l_i, 1.0)[:, None]
    slot = (slot_base + rank).to(tl.int64)
    tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
             + offs_d[None, :], out, mask=mask_m[:, None] & mask_d[None, :])
    tl.store(partial_lse_ptr + slot * stride_lp + head,
             tl.where(owns, m_i + tl.log2(tl.where(owns, l_i, 1.0)), -float("inf")), mask=mask_m)


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
def _run_work(index, num_items, first_item, kv_head, q_ptr, k_ptr, v_ptr,
              kv_indices_ptr, query_order_ptr, items_ptr, items_stride, partial_out_ptr,
              partial_lse_ptr, pack_info_ptr, tail_indptr_ptr, tail_slots_ptr,
              stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
              stride_pp, stride_ph, stride_lp, qk_scale_log2,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
              SMALL_M: tl.constexpr, SMALL_N: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr,
              PACK_M: tl.constexpr):
    """Work ``index`` of one KV head: item ``first_item + index`` of the ``num_items``, then
    (``PACK_M`` > 0) tail pack ``index - num_items``.  (Packs spread evenly among the items, so
    that memory-bound packs share SMs with compute-bound chunks, were no faster: H100, session
    9, ``results/session9-h100/hold2-packs``.)"""
    if PACK_M > 0 and index >= num_items:
        _attend_tail_pack(index - num_items, kv_head, q_ptr, k_ptr, v_ptr, pack_info_ptr,
                          tail_indptr_ptr, tail_slots_ptr, partial_out_ptr, partial_lse_ptr,
                          stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                          stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM, BLOCK_D,
                          GROUP, PACK_M, BLOCK_N, DOT_FP32, IEEE_FP32)
    else:
        _run_item(first_item + index, kv_head, q_ptr, k_ptr, v_ptr, kv_indices_ptr,
                  query_order_ptr, items_ptr, items_stride, partial_out_ptr, partial_lse_ptr,
                  stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                  stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM, BLOCK_D, GROUP,
                  SMALL_M, SMALL_N, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32)


@triton.jit
def _partial_attention_kernel(
    q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, items_ptr, items_stride, bounds_ptr,
    work_counters_ptr, partial_out_ptr, partial_lse_ptr, pack_info_ptr, tail_indptr_ptr,
    tail_slots_ptr, num_items,
    stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_pp, stride_ph, stride_lp,
    qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
    SMALL_M: tl.constexpr, SMALL_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr, PERSISTENT: tl.constexpr,
    INTERLEAVE_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, PDL_TRIGGER: tl.constexpr,
    PACK_M: tl.constexpr,
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
        work = end - first
        if PACK_M > 0:  # tail packs after the items; their count lives in device memory too
            work += tl.cdiv(tl.load(pack_info_ptr), tl.load(pack_info_ptr + 1))
        if INTERLEAVE_HEADS:  # one counter over the pairs
            counter, total = work_counters_ptr, work * NUM_KV_HEADS
        else:  # one counter per KV head
            counter, total = work_counters_ptr + tl.program_id(1), work
        claim = tl.atomic_add(counter, 1, sem="relaxed")
        while claim < total:
            if INTERLEAVE_HEADS:
                index, kv_head = claim // NUM_KV_HEADS, claim % NUM_KV_HEADS
            else:
                index, kv_head = claim, tl.program_id(1)
            _run_work(index, end - first, first, kv_head, q_ptr, k_ptr, v_ptr,
                      kv_indices_ptr, query_order_ptr, items_ptr, items_stride,
                      partial_out_ptr, partial_lse_ptr, pack_info_ptr, tail_indptr_ptr,
                      tail_slots_ptr, stride_qb, stride_qh, stride_kn, stride_kh, stride_vn,
                      stride_vh, stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM,
                      BLOCK_D, GROUP, SMALL_M, SMALL_N, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32,
                      PACK_M)
            claim = tl.atomic_add(counter, 1, sem="relaxed")
        if PDL_TRIGGER:
            gdc_launch_dependents()
    else:
        if INTERLEAVE_HEADS:
            index, kv_head = tl.program_id(0) // NUM_KV_HEADS, tl.program_id(0) % NUM_KV_HEADS
        else:
            index, kv_head = tl.program_id(0), tl.program_id(1)
        _run_work(index, num_items, 0, kv_head, q_ptr, k_ptr, v_ptr,
                  kv_indices_ptr, query_order_ptr, items_ptr, items_stride, partial_out_ptr,
                  partial_lse_ptr, pack_info_ptr, tail_indptr_ptr, tail_slots_ptr,
                  stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                  stride_pp, stride_ph, stride_lp, qk_scale_log2, HEAD_DIM, BLOCK_D, GROUP,
                  SMALL_M, SMALL_N, BLOCK_M, BLOCK_N, DOT_FP32, IEEE_FP32, PACK_M)
        if PDL_TRIGGER:
            gdc_launch_dependents()
    # PDL_TRIGGER: this program's partials are written, so the merge (launched as a
    # programmatic dependent) may be scheduled once every program gets here; it still waits
    # for this launch to finish.  Triggering at the start instead let the merge's programs sit
    # beside phase 1's last wave: 1.02x the plain launch's time against 0.95x (geomeans over
    # the steadily timed workloads), up to 1.15x on launches of several waves (H100, session 8).


def launch_partial_attention(q, k_cache, v_cache, kv_indices, query_order, items, partial_out,
                             partial_lse, sm_scale: float, small_m: int, small_n: int,
                             block_m: int, block_n: int, num_warps: int, num_stages: int,
                             item_bounds: torch.Tensor | None = None, num_programs: int = 0,
                             work_counters: torch.Tensor | None = None, max_registers: int = 0,
                             interleave_heads: bool = False, pdl_trigger: bool = False,
                             tail_packs=None):
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
    ``pdl_trigger``: each program, once its partials are written, lets a programmatic dependent
    launch (the merge, ``launch_merge(pdl=True)``) be scheduled.
    ``tail_packs``: optional ``(pack_info, tail_indptr, tail_slots, num_packs, pack_m)``, packs
    of short private tails run after the items (``kernels.short_tails``): ``pack_info`` int32
    [3 + T] on the device holds the number of packed tails T, tails per pack, the partial slot
    of the first, and each packed tail's query; the packs' row tile is ``pack_m``; ``num_packs`` (host) sizes a
    one-program-per-item grid (persistent grids read the count from ``pack_info``).
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
    pack_info, tail_indptr, tail_slots, num_packs, pack_m = \
        tail_packs if tail_packs is not None else (items, items, items, 0, 0)
    if (num_items == 0 and not num_packs and not (persistent and pack_m)) \
            or (persistent and num_programs < 1):
        return None
    group = q.shape[1] // num_kv_heads
    interpret = interpreter_active()
    fp32_inputs = q.dtype == torch.float32
    grid = (num_programs if persistent else num_items + num_packs, num_kv_heads)
    if interleave_heads:
        grid = (grid[0] * grid[1],)
    options = dict(maxnreg=max_registers) if max_registers and not interpret else {}
    return _partial_attention_kernel[grid](
        q, k_cache, v_cache, kv_indices, query_order, items, items.stride(0),
        item_bounds if persistent else items, work_counters if persistent else items,
        partial_out, partial_lse, pack_info, tail_indptr, tail_slots, num_items,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        sm_scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), GROUP=group,
        SMALL_M=small_m, SMALL_N=small_n, BLOCK_M=block_m, BLOCK_N=block_n,
        # The interpreter's bf16 dot is wrong (design.md); fp32 tests want exact fp32 products.
        DOT_FP32=interpret and q.dtype != torch.float16,
        IEEE_FP32=fp32_inputs or (interpret and q.dtype == torch.bfloat16),
        PERSISTENT=persistent, INTERLEAVE_HEADS=interleave_heads, NUM_KV_HEADS=num_kv_heads,
        PDL_TRIGGER=pdl_trigger and not interpret, PACK_M=pack_m,
        num_warps=num_warps, num_stages=num_stages, **options,
    )
