"""DeFT planning: turn a KV forest into a work list once per decode step, run it once per layer.

Planning (host side: the C core of ``kernels.native``, or numpy without a C compiler; the
same plan either way).  ``kernels.plan_step`` runs steps 0-3 in one C call (``plan_step.c``) that
also writes the kernels' metadata into the plan's pinned upload buffer; ``build_plan`` is the
same plan step by step, which tail slack (``kernels.tails``) and device-resident slot lists use:
0. Short private tails (a leaf holding one query's KV alone, up to 64 tokens) leave the forest
   first (``kernels.short_tails``): the merge attends those of up to 8 tokens, phase 1 packs
   the others, several queries' tails to a tile.
1. KV-guided grouping (``tree.build_layout``): the queries below each node form one contiguous
   range of the sorted query order, so a node's KV is applied to all of them at once.
2. Flattened tree KV splitting: every node's KV is cut into chunks sized by a cost model, so
   that all programs carry similar work whatever the tree's shape.  A chunk's cost grows with
   its tokens and with the number of query rows it serves (``rows = queries * Hq/Hkv``); a chunk
   is never so short that writing its partial results would cost a good part of reading it.
3. A node whose group exceeds ``reread_min_queries`` queries is split into row groups, one work
   item per (chunk, row group), next to each other in the work order so that they read the
   chunk from DRAM about once and share it in L2: more parallelism, fewer partial results.
   ``stats()`` counts the further passes as L2 re-reads.

Running (device side, no host work): phase 1 (``partial_attention``, one launch over all work
items, heaviest first, then the tail packs), then phase 2 (``merge``) per query.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .merge import launch_merge, merge_launch_shape
from .partial_attention import LOG2E, launch_partial_attention
from .short_tails import tails_per_pack
from .tails import TailSlack, tail_spread
from .config import SMALL_M, PlannerConfig, interpreter_active
from .tree import TreeLayout, host_to_device
from .work_list import plan_items

INVARIANT_MERGE_SHAPE = (4, 4)  # (heads, partials) per merge step in batch-invariant mode


def _device_limits(device: torch.device, config: PlannerConfig) -> tuple[int, int]:
    num_sms, l2_bytes = config.num_sms, config.l2_bytes
    if device.type == "cuda" and (num_sms == 0 or l2_bytes == 0):
        props = _cuda_properties(device.index)
        num_sms = num_sms or props.multi_processor_count
        l2_bytes = l2_bytes or getattr(props, "L2_cache_size", 0) or 50 << 20
    return num_sms or 132, l2_bytes or 50 << 20


@functools.lru_cache(maxsize=None)
def _cuda_properties(index):
    return torch.cuda.get_device_properties(index)  # a few µs a call, once per plan otherwise


def _supports_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch: Hopper or later, compiled (not interpreted) kernels."""
    if device.type != "cuda" or interpreter_active():
        return False
    return _hopper_or_later(device.index if device.index is not None
                            else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index) -> bool:
    from .merge import gdc_wait
    return gdc_wait is not None and _cuda_properties(index).major >= 9


@dataclass
class TreeAttentionPlan:
    """A decode step's DeFT work list, on the device; ``run`` once per layer.

    Build it with :func:`deft_sglang.kernels.plan_tree_attention`.
    """

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    num_queries: int
    num_partials: int
    device: torch.device
    kv_indices: torch.Tensor           # int32 [total]
    query_order: torch.Tensor          # int32 [B]
    items: torch.Tensor                # int32 [5, num_items], heaviest item first
    block_m: int
    merge_indptr: torch.Tensor         # int32 [B+1]
    merge_slots: torch.Tensor          # int32 [P]
    block_n: int
    merge_shape: tuple
    config: PlannerConfig
    _stats: Any = field(default_factory=dict)  # the dict, or a function computing it once
    tails: TailSlack | None = None     # set when planned with tail slack (see kernels.tails)
    _workspace: dict = field(default_factory=dict)
    num_large_items: int = -1          # split_launches: items [0, n) have over 16 rows; else -1
    merge_pdl: bool = False            # the merge launch is a programmatic dependent of phase 1
    short_tails: Any = None            # (tail_indptr, tail_slots) on the device: kernels.short_tails
    tail_packs: Any = None             # (pack_info, num_packs, pack_m, pack_slots): packed tails
    pack_shape: tuple = ()             # (packed tails, tails per pack, first's partial slot)

    def stats(self) -> dict:
        """IO and shape of the plan (per layer; token counts are per KV head).

        unique_kv_tokens : tokens of the nodes some query needs (each must be read once).
        loaded_kv_tokens : tokens the plan brings in from device memory: each node's KV, once,
            by its first row group.  Every other pass over a chunk (the other row groups of a
            wide node, which the work order runs beside the first, and further row tiles) is
            meant to hit L2 and is counted in ``l2_reread_kv_tokens``.  Whether it does is the
            GPU's business: Nsight Compute measured 77 MB read from DRAM for 67 MB of unique KV
            on the 8k x 64 server batch and 105 MB for 98 MB on few-shot 4000 x b50 (H100,
            ``benchmarks/ncu_dram.py``).
        per_request_kv_tokens : what per-request decode reads (sum of path lengths).
        partial_bytes : bytes of partial results phase 1 writes (phase 2 reads them once).
        """
        if callable(self._stats):
            self._stats = self._stats()
        return dict(self._stats)

    def extend_tails(self, new_slots: torch.Tensor, kv_indices: torch.Tensor | None = None,
                     items: torch.Tensor | None = None) -> None:
        """Advance the plan one decode step: append ``new_slots[b]`` (int [B] on the device, query
        order) to every query's private tail, with device ops only.

        Needs a plan built with ``tail_slack`` (``plan.tails`` not None) and room left
        (``plan.tails.room``); ``kv_indices``/``items`` default to the plan's own buffers (pass
        a workspace's copies to advance those instead).  ``stats()`` keeps describing the plan as
        built.
        """
        if self.tails is None:
            raise ValueError("the plan was built without tail slack (or its queries are not "
                             "private tails); plan the step afresh")
        self.tails.extend(new_slots, self.kv_indices if kv_indices is None else kv_indices,
                          self.items if items is None else items)

    def _partials(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Partial outputs are normalised (|o| <= max |v|), so the input's 16-bit type holds them
        # at the output's own precision; accumulation and LSE stay fp32.
        dtype = torch.float32 if self.config.fp32_partials else dtype
        key = ("partials", dtype)
        if key not in self._workspace:
            rows = max(self.num_partials, 1)
            self._workspace[key] = (
                torch.empty(rows, self.num_qo_heads, self.head_dim, dtype=dtype,
                            device=self.device),
                torch.empty(rows, self.num_qo_heads, dtype=torch.float32, device=self.device))
        return self._workspace[key]

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            sm_scale: float | None = None, out: torch.Tensor | None = None,
            check: bool = True, extra=None) -> torch.Tensor:
        """Tree attention for this plan's tree.

        Parameters
        ----------
        q : [B, Hq, D] fp16/bf16/fp32 on the plan's device (unit stride on D).
        k_cache, v_cache : [num_slots, Hkv, D], same dtype as q.
        sm_scale : softmax scale, default ``1/sqrt(D)``.
        out : optional [B, Hq, D] output buffer (dtype of q).
        check : validate shapes/dtypes (cheap; pass False on the hot path).
        extra : optional ``(extra_out [B, Hq, D], extra_lse fp32 [B, Hq] log2)``, one more
            partial per query merged into its result (``kernels.verify``: the draft tree).

        Returns
        -------
        [B, Hq, D] in q's dtype.
        """
        if check:
            _check_run_inputs(self, q, k_cache, v_cache, out)
        sm_scale = 1.0 / math.sqrt(self.head_dim) if sm_scale is None else float(sm_scale)
        if out is None:
            out = torch.empty_like(q)
        partial_out, partial_lse = self._partials(q.dtype)
        cfg, split = self.config, self.num_large_items
        launches = ([(self.items, self.block_m)] if split < 0 else
                    [(self.items[:, :split], self.block_m), (self.items[:, split:], SMALL_M)])
        pdl, packs = self.merge_pdl, self.tail_packs
        for index, (items, block_m) in enumerate(launches):  # SMALL_M alone: small tile only
            last = index == len(launches) - 1
            launch_partial_attention(q, k_cache, v_cache, self.kv_indices, self.query_order,
                                     items, partial_out, partial_lse, sm_scale, SMALL_M,
                                     cfg.small_block_n, block_m, self.block_n, cfg.num_warps,
                                     cfg.num_stages, max_registers=cfg.max_registers,
                                     interleave_heads=cfg.interleave_heads, pdl_trigger=pdl,
                                     tail_packs=(packs[0], *self.short_tails, *packs[1:3])
                                     if packs is not None and last else None)
        tail = None if self.short_tails is None or packs is not None else \
            (q, k_cache, v_cache, *self.short_tails, sm_scale * LOG2E)
        launch_merge(partial_out, partial_lse, self.merge_indptr, self.merge_slots, out,
                     *self.merge_shape, extra=extra,
                     stages=cfg.merge_stages_for(q.shape[0] * q.shape[1]),
                     num_warps=cfg.merge_warps, pdl=pdl, tail=tail,
                     pack_slots=None if packs is None else packs[3])
        return out


def _check_run_inputs(plan: TreeAttentionPlan, q, k_cache, v_cache, out) -> None:
    if q.dim() != 3 or q.shape[0] != plan.num_queries or q.shape[1] != plan.num_qo_heads \
            or q.shape[2] != plan.head_dim:
        raise ValueError(f"q must have shape [{plan.num_queries}, {plan.num_qo_heads}, "
                         f"{plan.head_dim}], got {tuple(q.shape)}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q must be fp16, bf16 or fp32, got {q.dtype}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 3 or cache.shape[1] != plan.num_kv_heads or cache.shape[2] != plan.head_dim:
            raise ValueError(f"{name} must have shape [num_slots, {plan.num_kv_heads}, "
                             f"{plan.head_dim}], got {tuple(cache.shape)}")
        if cache.dtype != q.dtype:
            raise ValueError(f"{name} dtype {cache.dtype} differs from q dtype {q.dtype}")
        if cache.stride(2) != 1:
            raise ValueError(f"{name} must have unit stride on head_dim")
        if cache.device != q.device:
            raise ValueError(f"{name} is on {cache.device}, q on {q.device}")
    if k_cache.shape[0] != v_cache.shape[0]:
        raise ValueError("k_cache and v_cache must hold the same number of slots")
    if q.stride(2) != 1:
        raise ValueError("q must have unit stride on head_dim")
    if q.device != plan.device:
        raise ValueError(f"q is on {q.device}, the plan on {plan.device}")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.stride(2) != 1):
        raise ValueError("out must match q's shape and dtype, with unit stride on head_dim")


def _plan_stats(planned, group: int, block_m: int, block_n: int, merge_shape,
                num_partials: int, partial_bytes: int, packed: bool) -> dict:
    """``plan.stats()``'s dict, computed on first use (a server plans every few steps and
    reads the stats far less often: about 10% of a plan's host time).  ``planned``: (layout,
    items int64 [5, I], item_node [I], partial_counts [B], the ShortTails or None).  Short
    tails taken out of the forest count as read once; a packed one is one more partial of
    its query."""
    layout, items, item_node, partial_counts, short_tails = planned
    taken = short_tails.num_tokens if short_tails is not None else 0
    counts = partial_counts
    if packed:
        counts = partial_counts.copy()
        counts[short_tails.queries] += 1
    rows = items[3] * group
    node_tokens, node_queries = layout.node_tokens(), layout.node_queries()
    needed = node_queries > 0
    tiles_per_item = np.where(rows <= SMALL_M, 1, -(-rows // block_m))
    # A node's first row group brings its KV in; the other row groups (which run beside
    # it, chunk-major) and further row tiles read it again.
    first_group = items[2] == layout.query_begin[item_node]
    loaded = int(np.sum(items[1][first_group]))
    return dict(
        num_nodes=layout.num_nodes,
        num_queries=layout.num_queries,
        num_groups=int(np.sum(needed & (node_tokens > 0))),
        num_work_items=int(items.shape[1]),
        num_partials=num_partials,
        max_partials_per_query=int(counts.max()) if counts.size else 0,
        merge_shape=merge_shape,
        unique_kv_tokens=int(np.sum(node_tokens[needed])) + taken,
        loaded_kv_tokens=loaded + taken,
        l2_reread_kv_tokens=int(np.sum(items[1] * tiles_per_item)) - loaded,
        per_request_kv_tokens=int(np.sum(node_tokens
                                         * (layout.query_end - layout.query_begin))) + taken,
        partial_bytes=partial_bytes,
        merge_tail_tokens=0 if packed else taken,
        packed_tail_tokens=taken if packed else 0,
        block_n=block_n,
        row_tiles=int(np.sum(tiles_per_item)),
    )


def _upload(parts: list, device) -> list:
    """One host-to-device copy for all metadata: a view per part.  Parts that are tensors
    (slot indices already on the device) stay there: planning never reads them, so the host
    need not wait for the GPU that produced them."""
    on_host = [part for part in parts if not isinstance(part, torch.Tensor)]
    blob = host_to_device(np.concatenate(on_host, dtype=np.int32, casting="same_kind"), device)
    views = iter(blob.split_with_sizes([part.size for part in on_host]))
    return [part.to(device=device, dtype=torch.int32).contiguous()
            if isinstance(part, torch.Tensor) else next(views) for part in parts]


def pack_rows(config: PlannerConfig, group: int) -> int:
    """Row tile of the tail packs: ``tail_pack_rows``, or one query's rows where more."""
    return max(config.tail_pack_rows, 1 << (group - 1).bit_length())


def resolve_block_n(config: PlannerConfig, head_dim: int) -> int:
    """KV tokens per block of the large-tile branch (``config.block_n``, or by head_dim)."""
    return config.block_n or (64 if head_dim <= 128 else 32)


def plan_shape(num_qo_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
               config: PlannerConfig, kv_elem_bytes: int) -> tuple:
    """(GQA group, block_n, SMs, KV heads, L2 bytes, KV bytes per token): what the chunking
    reads of the attention shape and the GPU."""
    num_sms, l2_bytes = _device_limits(device, config)
    return (num_qo_heads // num_kv_heads, resolve_block_n(config, head_dim), num_sms,
            num_kv_heads, l2_bytes, 2 * num_kv_heads * head_dim * kv_elem_bytes)


def build_plan(layout: TreeLayout, *, num_qo_heads: int, num_kv_heads: int, head_dim: int,
               device: torch.device, config: PlannerConfig, kv_elem_bytes: int = 2,
               tail_slack: int = 0, short_tails=None, pack_tails: bool = False
               ) -> TreeAttentionPlan:
    """Plan one decode step over ``layout``; see the module docstring (and ``kernels.tails``
    for ``tail_slack``).  ``short_tails``: the ``ShortTails`` taken out of the forest before
    ``layout`` was built, attended in phase 1's packs (``pack_tails``) or by the merge."""
    shape = plan_shape(num_qo_heads, num_kv_heads, head_dim, device, config, kv_elem_bytes)
    group, _, num_sms = shape[:3]
    spread = tail_spread(layout.parent, layout.kv_indptr, layout.query_node,
                         layout.node_queries(), tail_slack) if tail_slack else None
    (items, item_node, item_last, merge_indptr, merge_slots, partial_counts, most_partials,
     most_rows, num_large) = plan_items(layout, shape, config, spread)
    num_listed, pack_shape, tail_parts = int(merge_slots.shape[0]), (), []
    if short_tails is not None:
        if pack_tails:  # their partials after the plan's own
            num_tails = short_tails.queries.shape[0]
            pack_shape = (num_tails, tails_per_pack(num_tails, num_kv_heads, group, num_sms,
                                                    config.waves, config.tail_pack_rows),
                          num_listed)
        tail_parts = short_tails.metadata(pack_shape, layout.num_queries)
    kv_source = layout.kv_indices if spread is None else spread.apply(layout.kv_indices, device)
    views = _upload([kv_source, layout.query_order, merge_indptr, merge_slots,
                     items.reshape(-1)] + tail_parts, device)
    tails = spread.tails(item_node, item_last, items[1], device) if spread else None
    planned = (layout, items, item_node, partial_counts, short_tails)
    return assemble_plan(shape, (num_qo_heads, head_dim, layout.num_queries), device, config,
                         kv_elem_bytes, (most_partials, most_rows, num_large, num_listed), views,
                         lambda: planned, pack_shape, tails)


def assemble_plan(shape: tuple, heads: tuple, device: torch.device, config: PlannerConfig,
                  kv_elem_bytes: int, counts, views: list, planned, pack_shape: tuple,
                  tails) -> TreeAttentionPlan:
    """The plan object from the planned arrays.  ``heads``: (Hq, head_dim, queries);
    ``counts``: (most partials of a query, most rows of an item, items of more than 16 rows,
    merge slots listed); ``views``: the uploaded parts in ``build_plan``'s order;
    ``planned()``: what ``_plan_stats`` reads (called only when stats are asked for)."""
    most_partials, most_rows, num_large, num_listed = counts
    group, block_n, num_sms = shape[:3]
    num_qo_heads, head_dim, num_queries = heads
    kv_indices, query_order, d_indptr, d_slots, d_items, *tail_views = views
    short, packs = None, None
    if tail_views:  # (tail_indptr, tail_slots[, pack_info, pack_slots]): kernels.short_tails
        short = tuple(tail_views[:2])
        if pack_shape:
            packs = (tail_views[2], -(-pack_shape[0] // pack_shape[1]), pack_rows(config, group),
                     tail_views[3])
    num_partials = num_listed + (pack_shape[0] if pack_shape else 0)
    merge_shape = merge_launch_shape(num_queries, num_qo_heads, head_dim,
                                     max(most_partials, 1), num_sms, config.merge_block_h)
    if config.fixed_chunk_tokens:  # the same tiles, so the same summation order, in any batch
        merge_shape = INVARIANT_MERGE_SHAPE
    partial_bytes = num_partials * num_qo_heads * (
        head_dim * (4 if config.fp32_partials else kv_elem_bytes) + 4)
    stats = lambda: _plan_stats(planned(), group, config.block_m, block_n,  # noqa: E731
                                merge_shape, num_partials, partial_bytes, bool(pack_shape))
    # Without large items the large-tile branch is compiled out (fewer registers); batch-invariant
    # plans keep one kernel variant whatever the batch holds.
    needs_large = config.fixed_chunk_tokens or most_rows > SMALL_M
    return TreeAttentionPlan(num_qo_heads, shape[3], head_dim, num_queries,
                             num_partials, device, kv_indices, query_order, d_items.view(5, -1),
                             config.block_m if needs_large else SMALL_M, d_indptr, d_slots,
                             block_n, merge_shape, config, stats, tails=tails,
                             num_large_items=num_large if config.split_launches else -1,
                             merge_pdl=config.merge_pdl and _supports_pdl(device),
                             short_tails=short, tail_packs=packs, pack_shape=pack_shape)
