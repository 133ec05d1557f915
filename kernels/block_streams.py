"""Phase 1 for the small work items, as block streams (``PlannerConfig.stream_small_items``).

Items of at most 16 rows (a private tail, a node shared by a few queries) are memory-bound and
short: a chunk of a few hundred tokens is 3-4 blocks of ``BLOCK_N``.  One program per item
spends much of its life filling its load pipeline and draining it again (the item's metadata,
its query rows and its first slots are a chain of dependent loads before the first K/V byte
moves).  Here a program instead walks a *stream*: the blocks of several items in one flat,
pipelined loop, so the loads of the next item's first blocks are in flight while the current
item finishes.  At an item's first block the running softmax state is reset, at its last the
item's partial results are written; the results equal the per-item kernel's (the same blocks,
the same order within an item).

Streams are formed in the program, from the work list itself: stream ``s`` of ``S`` takes the
small items of ranks ``s, 2S-1-s, 2S+s, 4S-1-s, ...`` in the planner's heaviest-first order
(a snake, so every stream gets a similar share of the heavy and the light items).  A program
loads its items' metadata once into registers (``MAX_ITEMS`` per stream at most), and finds
block ``j``'s item from the running block counts, without touching memory.  Nothing is built
on the host, and item lengths are read at launch, so plans advanced on the device
(``kernels.tails``) stream correctly too.

Shapes and strides (as ``kernels.partial_attention``)::

    q            [B, Hq, D]              any strides on B and H, unit stride on D
    k_cache      [num_slots, Hkv, D]     likewise; v_cache the same
    query_order  int32 [B]               sorted position -> query id
    items        int32 [5, capacity]     rows: kv_begin, kv_len, q_begin, q_count, slot_base;
                                         the small items are [first, first + count)
    partial_out  [P, Hq, D], partial_lse fp32 [P, Hq]

Grid: ``S * Hkv`` programs, stream-major with the KV head fastest, so the heads of one stream
read the same tokens side by side.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import SMALL_M, interpreter_active
from .partial_attention import LOG2E, gather_kv_block, gdc_launch_dependents, online_softmax_block

MAX_ITEMS_PER_STREAM = 256  # register vectors of a stream's item metadata stay this small


@triton.jit
def _pick(selected, values):
    """The one element of ``values`` where ``selected`` is set."""
    return tl.sum(tl.where(selected, values, 0), axis=0)


@triton.jit
def _block_streams_kernel(
    q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, items_ptr, items_stride,
    first_item, num_items, num_streams, partial_out_ptr, partial_lse_ptr,
    stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_pp, stride_ph, stride_lp, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_KV_HEADS: tl.constexpr, NUM_STAGES: tl.constexpr,
    MAX_ITEMS: tl.constexpr, DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr,
    PDL_TRIGGER: tl.constexpr,
):
    stream, kv_head = tl.program_id(0) // NUM_KV_HEADS, tl.program_id(0) % NUM_KV_HEADS
    # This stream's items (snake order over the heaviest-first list) and their block counts.
    offs_i = tl.arange(0, MAX_ITEMS)
    rank = offs_i * num_streams + tl.where(offs_i % 2 == 0, stream, num_streams - 1 - stream)
    mine = rank < num_items
    item = first_item + rank
    kv_begin_of = tl.load(items_ptr + item, mask=mine, other=0)
    kv_len_of = tl.load(items_ptr + items_stride + item, mask=mine, other=0)
    q_begin_of = tl.load(items_ptr + 2 * items_stride + item, mask=mine, other=0)
    q_count_of = tl.load(items_ptr + 3 * items_stride + item, mask=mine, other=0)
    slot_base_of = tl.load(items_ptr + 4 * items_stride + item, mask=mine, other=0)
    blocks_of = (kv_len_of + BLOCK_N - 1) // BLOCK_N
    blocks_through = tl.cumsum(blocks_of, axis=0)
    total_blocks = tl.sum(blocks_of, axis=0)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    local_query = offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # One flat loop over the stream's blocks: everything a block loads follows from j and the
    # registers above, so the pipeliner issues the next blocks' loads across item boundaries.
    for j in tl.range(0, total_blocks, num_stages=NUM_STAGES):
        selected = offs_i == tl.sum((blocks_through <= j).to(tl.int32), axis=0)
        item_blocks = _pick(selected, blocks_of)
        block = j - _pick(selected, blocks_through) + item_blocks  # index within the item
        kv_begin = _pick(selected, kv_begin_of) + block * BLOCK_N
        kv_len = _pick(selected, kv_len_of) - block * BLOCK_N
        q_begin = _pick(selected, q_begin_of)
        slot_base = _pick(selected, slot_base_of)
        mask_m = local_query < _pick(selected, q_count_of)
        query = tl.load(query_order_ptr + q_begin + local_query, mask=mask_m, other=0)
        q = tl.load(q_ptr + query[:, None].to(tl.int64) * stride_qb + head[:, None] * stride_qh
                    + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        mask_n = offs_n < kv_len
        k, v = gather_kv_block(k_ptr, v_ptr, kv_indices_ptr + kv_begin, offs_n, mask_n, kv_head,
                               offs_d, mask_d, stride_kn, stride_kh, stride_vn, stride_vh,
                               DOT_FP32)
        starts = block == 0  # a new item: its running state starts afresh
        m_i = tl.where(starts, -float("inf"), m_i)
        l_i = tl.where(starts, 0.0, l_i)
        acc = tl.where(starts, 0.0, acc)
        m_i, l_i, acc = online_softmax_block(q, k, v, mask_n[None, :], m_i, l_i, acc,
                                             qk_scale_log2, IEEE_FP32, False)
        ends = mask_m & (block == item_blocks - 1)  # the item's last block: write its partials
        slot = (slot_base + local_query).to(tl.int64)
        tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
                 + offs_d[None, :], acc / l_i[:, None], mask=ends[:, None] & mask_d[None, :])
        tl.store(partial_lse_ptr + slot * stride_lp + head, m_i + tl.log2(l_i), mask=ends)
    if PDL_TRIGGER:
        gdc_launch_dependents()


def stream_shape(num_items: int, num_kv_heads: int, num_sms: int,
                 programs_per_sm: float) -> tuple[int, int]:
    """(streams, most items per stream as a power of two) for ``num_items`` small items: about
    ``programs_per_sm`` programs per SM over all KV heads, never more streams than items, and
    enough streams that none holds more than ``MAX_ITEMS_PER_STREAM`` items."""
    if num_items < 1:
        return 0, 1
    want = max(1, int(programs_per_sm * num_sms) // num_kv_heads)
    streams = min(num_items, max(want, -(-num_items // MAX_ITEMS_PER_STREAM)))
    return streams, max(2, triton.next_power_of_2(-(-num_items // streams)))


def launch_block_streams(q, k_cache, v_cache, kv_indices, query_order, items, first_item: int,
                         num_items: int, partial_out, partial_lse, sm_scale: float,
                         stream_shape_: tuple[int, int], block_n: int, num_warps: int,
                         num_stages: int, pdl_trigger: bool = False):
    """Phase 1 of the ``num_items`` items from ``first_item`` of ``items`` (int32 [5, capacity],
    each of at most 16 rows), as ``stream_shape_ = (streams, max items per stream)`` block
    streams of ``block_n``-token blocks.  Writes their partials; no host sync.
    ``pdl_trigger``: each program lets a programmatic dependent launch (the merge) be
    scheduled once its partials are written.  Returns the compiled kernel, or None."""
    num_streams, max_items = stream_shape_
    if num_items < 1 or num_streams < 1:
        return None
    num_kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
    interpret = interpreter_active()
    return _block_streams_kernel[(num_streams * num_kv_heads,)](
        q, k_cache, v_cache, kv_indices, query_order, items, items.stride(0),
        first_item, num_items, num_streams, partial_out, partial_lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1),
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        sm_scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        GROUP=q.shape[1] // num_kv_heads, BLOCK_M=SMALL_M, BLOCK_N=block_n,
        NUM_KV_HEADS=num_kv_heads, NUM_STAGES=num_stages, MAX_ITEMS=max_items,
        # (as partial_attention: the interpreter's bf16 dot is wrong; fp32 wants exact products)
        DOT_FP32=interpret and q.dtype != torch.float16,
        IEEE_FP32=q.dtype == torch.float32 or (interpret and q.dtype == torch.bfloat16),
        PDL_TRIGGER=pdl_trigger and not interpret,
        num_warps=num_warps, num_stages=num_stages,
    )
