"""Planning's array work: segments, chunk lengths, work items in their final order, and the merge
lists (steps 2 and 3 of ``planner``'s docstring).

``plan_items`` runs it in the C core (``kernels.native``) when that is available and enabled, and
with numpy otherwise; the numpy functions here are the reference the C core is tested against
(``tests/kernels/test_plan_native.py``: the same plan, bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import native as native_core
from .config import SMALL_M, PlannerConfig
from .tree import TreeLayout


def plan_items(layout: TreeLayout, shape: tuple, config: PlannerConfig, spread):
    """(items int64 [5, I] in the final order, item_node [I], item_last [I], merge_indptr [B+1],
    merge_slots [P], partial_counts [B], most partials of a query, most rows of an item, items
    of more than 16 rows).

    ``shape``: (GQA group, block_n, SMs, KV heads, L2 bytes, KV bytes per token); ``spread``:
    the tail slack's ``TailSpread`` or None."""
    if config.native and native_core.library():
        return _plan_items_native(layout, shape, config, spread)
    return _plan_items_numpy(layout, shape, config, spread)


def _expand_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [c0, c1, ...]: owner index and index-within-owner of each expanded element."""
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(owner.shape[0]) - starts[owner]


@dataclass
class _Segments:
    """(node, query range) pairs that phase 1 must cover; one per group or re-read row group."""
    node: np.ndarray
    q_begin: np.ndarray
    q_count: np.ndarray


def _segments(layout: TreeLayout, group: int, config: PlannerConfig, kv_bytes_per_token: int,
              l2_bytes: int) -> _Segments:
    tokens, queries = layout.node_tokens(), layout.node_queries()
    node = np.nonzero((tokens > 0) & (queries > 0))[0]
    fits_l2 = (tokens[node] * kv_bytes_per_token <= l2_bytes // 4
               if config.reread_needs_node_in_l2 else True)
    split = (queries[node] > config.reread_min_queries) & fits_l2
    group_queries = max(1, config.reread_group_rows // group)
    pieces = np.where(split, -(-queries[node] // group_queries), 1)
    owner, index = _expand_ranges(pieces)
    per_piece = np.where(split[owner], group_queries, queries[node][owner])
    q_begin = layout.query_begin[node][owner] + index * per_piece
    q_count = np.minimum(per_piece, layout.query_end[node][owner] - q_begin)
    return _Segments(node[owner], q_begin, q_count)


def _chunk_lengths(tokens: np.ndarray, rows: np.ndarray, num_kv_heads: int, num_sms: int,
                   block_n: int, config: PlannerConfig) -> np.ndarray:
    """Tokens per chunk for each segment, from a cost model in units of one KV token read.

    A token costs 1 to read plus ``rows/64`` for the tensor-core work of its row tiles (rows
    padded to whole tiles); a partial result costs about 2 (written once, read once by the merge).
    """
    if config.fixed_chunk_tokens:
        length = -(-config.fixed_chunk_tokens // block_n) * block_n
        return np.minimum(length, np.maximum(tokens, 1)).astype(np.int64)
    cost_per_token = _cost_per_token(rows, config.block_m)
    total = float(np.sum(tokens * cost_per_token))
    programs_per_head = max(1.0, config.waves * num_sms / num_kv_heads)
    target = max(total / programs_per_head, config.min_chunk_blocks * block_n)
    want = np.ceil(target / cost_per_token)
    floor = np.ceil(config.min_chunk_partial_ratio * 2.0 * rows / cost_per_token)
    if config.max_floor_over_want > 0:
        floor = np.minimum(floor, config.max_floor_over_want * want)
    length = np.minimum(np.maximum(want, floor), tokens)
    num_chunks = np.maximum(1, np.ceil(tokens / np.maximum(length, 1)))
    if num_chunks.sum() * num_kv_heads < num_sms:
        # Never let the partial-write floor starve the GPU: a wide group on few KV heads (MQA)
        # would otherwise be served by fewer programs than there are SMs (H100, few-shot
        # 4000 x b50 with 16/1 heads: 109 programs, 171 us; without the floor 67 us).
        length = np.minimum(want, tokens)
        num_chunks = np.maximum(1, np.ceil(tokens / np.maximum(length, 1)))
    length = np.ceil(tokens / num_chunks / block_n) * block_n  # even chunks, whole blocks
    return np.minimum(length, np.maximum(tokens, 1)).astype(np.int64)


def _work_items(layout: TreeLayout, seg: _Segments, chunk_len: np.ndarray):
    """Expand segments into chunks: (int64 [5, n] kv_begin, kv_len, q_begin, q_count, slot_base;
    each item's node; whether it is its segment's last chunk)."""
    tokens = layout.node_tokens()[seg.node]
    num_chunks = -(-tokens // chunk_len)
    owner, index = _expand_ranges(num_chunks)
    kv_begin = layout.kv_indptr[seg.node][owner] + index * chunk_len[owner]
    kv_len = np.minimum(chunk_len[owner], tokens[owner] - index * chunk_len[owner])
    q_begin, q_count = seg.q_begin[owner], seg.q_count[owner]
    slot_base = np.cumsum(q_count) - q_count
    items = np.stack([kv_begin, kv_len, q_begin, q_count, slot_base])
    return items, seg.node[owner], index == num_chunks[owner] - 1


def _merge_lists(layout: TreeLayout, q_begin, q_count, slot_base):
    """CSR of partial slots per query id, in item order (deterministic merge order)."""
    owner, index = _expand_ranges(q_count)
    query = layout.query_order[q_begin[owner] + index]
    slots = slot_base[owner] + index
    order = np.argsort(query, kind="stable")
    counts = np.bincount(query, minlength=layout.num_queries)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, slots[order], counts


def _padded_rows(rows: np.ndarray, block_m: int) -> np.ndarray:
    """Rows a program computes for an item: the row count padded to its row tiles."""
    return np.where(rows <= SMALL_M, SMALL_M, -(-rows // block_m) * block_m)


def _cost_per_token(rows: np.ndarray, block_m: int) -> np.ndarray:
    """Cost of one KV token of an item, in KV-token reads: 1 to read it plus ``padded_rows/64``
    for the tensor-core work of its row tiles."""
    return 1.0 + _padded_rows(rows, block_m) / 64.0


def _plan_items_numpy(layout: TreeLayout, shape: tuple, config: PlannerConfig, spread):
    """``plan_items`` with numpy."""
    group, block_n, num_sms, num_kv_heads, l2_bytes, kv_bytes_per_token = shape
    seg = _segments(layout, group, config, kv_bytes_per_token, l2_bytes)
    tokens = layout.node_tokens()[seg.node]
    chunk_len = _chunk_lengths(tokens, seg.q_count * group, num_kv_heads, num_sms, block_n, config)
    items, item_node, item_last = _work_items(layout, seg, chunk_len)
    merge_indptr, merge_slots, partial_counts = _merge_lists(layout, items[2], items[3], items[4])
    if spread is not None:
        items[0] += spread.shift[item_node]
    cost = items[1] * _cost_per_token(items[3] * group, config.block_m)
    large = items[3] * group > SMALL_M
    # Heaviest first: fewer stragglers (per launch: large items first when split). Among equal
    # costs, chunk-major (the KV begin, then the queries): the row groups of one chunk then run
    # side by side and share it in L2, where segment-major order put a node's chunks between.
    keys = (items[2], items[0], -cost)
    order = np.lexsort(keys + (~large,) if config.split_launches else keys)
    rows = items[3] * group
    return (items[:, order], item_node[order], item_last[order], merge_indptr, merge_slots,
            partial_counts, int(partial_counts.max(initial=0)), int(rows.max(initial=0)),
            int(large.sum()))


def _plan_items_native(layout: TreeLayout, shape: tuple, config: PlannerConfig, spread):
    """``_plan_items_numpy``'s result from the C core (``kernels.native``), bit for bit."""
    knobs = native_core.knobs_for(config, shape)
    contiguous = np.ascontiguousarray
    return native_core.plan(knobs, contiguous(layout.kv_indptr, dtype=np.int64),
                            contiguous(layout.query_begin), contiguous(layout.query_end),
                            contiguous(layout.query_order),
                            None if spread is None else contiguous(spread.shift))

