"""DeFT decode with buffers and grids fixed at construction, for CUDA-graph capture.

A graph records kernel launches with their grids and pointers; on replay nothing about the tree
may reach a launch from the host.  ``StaticTreeAttention`` therefore owns every buffer the kernels
read or write, sized for the largest plan it accepts, and launches a fixed grid: phase 1 is a
persistent kernel whose work-list bounds are read from device memory; its programs consume the
list through per-KV-head atomic counters, heaviest item first, so load balance matches the
one-program-per-item grid of the eager path.  ``run`` zeroes the counters before each phase-1
launch (a memset, captured in the graph with the launch).  The merge runs one program per batch
row (and attends the query's short private tail, if the plan took any and did not pack them:
``kernels.short_tails``; packs of tails run in the launch whose kernel has their row tile), and
rows past the plan's queries own no partial and come out as zeros.  It is a plain
launch whatever ``PlannerConfig.merge_pdl`` says: a graph already leaves little gap between
kernels, and as a programmatic dependent inside the graph the merge took 1.009x the time per
layer (geomean of 14 shapes, none faster; H100, ``results/session8-h100/hold4``).

Phase 1 is two persistent launches over two ranges of the work list. A plan built with
``PlannerConfig(split_launches=True)`` lists its items of over 16 rows first: they go to the
kernel with both row tiles, the rest to the 16-row-tile kernel. Otherwise ``load`` gives each
step's whole work list to one of them: a plan with an item over 16 rows (a shared node) goes to the kernel with both row tiles;
a plan without one (plain decode, small groups) to the kernel compiled with the 16-row tile
only, which is what the eager path runs for such plans.  Fewer registers keep more programs
resident, and those items are memory-bound: on an H200, 256 unshared requests of 1100 tokens
took 182 us per layer in that kernel against 256 us in the one with both tiles.  The other
launch finds an empty range and its programs exit at once.

Per decode step (outside the graph): ``plan = plan_tree_attention(...)``; ``static.load(plan)``
(device-to-device copies only).  Per layer (inside or outside the graph): ``static.run(...)``.
A plan that does not fit (``fits(plan)`` is False) must run eagerly with ``plan.run``.
``load_empty()`` loads a plan with no work (every output row zero), for capturing a graph
before any tree exists.  Plans must be built with the workspace's ``PlannerConfig`` (the
kernel's tiles are fixed at construction); ``fits`` checks it.
"""
from __future__ import annotations

import math

import torch

from .merge import launch_merge, merge_launch_shape
from .partial_attention import LOG2E, launch_partial_attention
from .planner import SMALL_M, PlannerConfig, TreeAttentionPlan, pack_rows, resolve_block_n
from .tails import DeviceTails


class StaticTreeAttention:
    """Fixed-size DeFT workspace; see the module docstring.

    Parameters
    ----------
    max_queries, max_items, max_kv_tokens, max_partials : capacities of the work list.
    num_qo_heads, num_kv_heads, head_dim : the attention shape.
    dtype : q/k/v dtype (fp16, bf16 or fp32).
    device : a CUDA device (or CPU under ``TRITON_INTERPRET=1``).
    num_programs : phase-1 programs per KV head (default: one per SM, or 4 on CPU).  Programs
        claim items dynamically, so no count is tuned to the tree.
    config : the ``PlannerConfig`` plans for this workspace are built with (its tiles).
    merge_block_p : partials per merge step (at most; fewer where the step's tile would spill).
    tail_steps : > 0: keep the loaded plan's tail-slack tables (up to this many steps) so that
        :meth:`advance_tails`, captured in a graph, advances the plan on the device.
    """

    def __init__(self, *, max_queries: int, max_items: int, max_kv_tokens: int, max_partials: int,
                 num_qo_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device, num_programs: int = 0, config: PlannerConfig | None = None,
                 merge_block_p: int = 8, tail_steps: int = 0):
        for name, value in (("max_queries", max_queries), ("max_items", max_items),
                            ("max_kv_tokens", max_kv_tokens), ("max_partials", max_partials)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count if on_cuda else 1
        if num_programs < 1:
            # One program per SM and KV head. On an H200 that matched eager with 8 KV heads; with
            # 1 KV head, 8 per SM ran 29% slower (185 vs 143 us) as the first claimers shared SMs
            # while others idled. The interpreter runs programs one by one: a few will do.
            num_programs = sms if on_cuda else 4
        self.shape = (num_qo_heads, num_kv_heads, head_dim)
        self.capacity = dict(queries=max_queries, items=max_items, kv_tokens=max_kv_tokens,
                             partials=max_partials)
        config = config or PlannerConfig()
        self.config = config
        self.block_n = resolve_block_n(config, head_dim)
        self.tiles = (config.block_m, self.block_n, config.small_block_n, config.num_warps,
                      config.num_stages, config.max_registers)
        self.num_programs = num_programs
        int32 = dict(dtype=torch.int32, device=self.device)
        self.items = torch.zeros(5, max_items, **int32)
        # [launch, (first, end)]: launch 0 has both row tiles, launch 1 the 16-row tile only
        self.item_bounds = torch.zeros(2, 2, **int32)
        self.work_counters = torch.zeros(2, num_kv_heads, **int32)  # queue heads, per run
        self.kv_indices = torch.zeros(max_kv_tokens, **int32)
        self.query_order = torch.zeros(max_queries, **int32)
        self.merge_indptr = torch.zeros(max_queries + 1, **int32)
        self.merge_slots = torch.zeros(max_partials, **int32)
        # short private tails the merge attends (kernels.short_tails); none: all rows empty
        self.tail_indptr = torch.zeros(max_queries + 1, **int32)
        self.tail_slots = torch.zeros(max_kv_tokens, **int32)
        # ... or that phase 1 attends in packs (key ranges in pack_indptr, slots in tail_slots),
        # in the launch whose kernel has the packs' row tile; pack_info[0] = 0: no packs
        self.pack_m = pack_rows(config, num_qo_heads // num_kv_heads) if config.packs_tails else 0
        self.pack_info = torch.zeros(3 + max_queries, **int32)
        self.pack_info[1] = 1
        self.pack_indptr = torch.zeros(max_queries + 1, **int32)
        self.pack_slots = torch.full((max_queries,), -1, **int32)  # -1: no packed tail
        partial_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        self.partial_out = torch.empty(max_partials, num_qo_heads, head_dim, dtype=partial_dtype,
                                       device=self.device)
        self.partial_lse = torch.empty(max_partials, num_qo_heads, dtype=torch.float32,
                                       device=self.device)
        # merge_launch_shape caps the partials per step so that a step's tile fits in registers:
        # with many heads per program an uncapped block_p spills, and the merge then costs as
        # much as phase 1 (H200, 1024 queries, 32 heads of 128: 239 us against 23 us).
        self.merge_shape = merge_launch_shape(max_queries, num_qo_heads, head_dim, merge_block_p,
                                              sms, config.merge_block_h)
        self.tails = DeviceTails(tail_steps, max_queries, self.device) if tail_steps > 0 else None

    def _clear_tails(self) -> None:
        """No short tail for any row: none attended by the merge, no pack."""
        self.tail_indptr.zero_()
        self.pack_info[0] = 0
        self.pack_slots.fill_(-1)

    def fits(self, plan: TreeAttentionPlan) -> bool:
        """Whether ``plan`` fits the buffers (and has this workspace's attention shape)."""
        cap = self.capacity
        return ((plan.num_qo_heads, plan.num_kv_heads, plan.head_dim) == self.shape
                and plan.block_n == self.block_n
                and plan.config.small_block_n == self.config.small_block_n
                and plan.num_queries <= cap["queries"] and plan.items.shape[1] <= cap["items"]
                and plan.kv_indices.shape[0] <= cap["kv_tokens"]
                and plan.num_partials <= cap["partials"]
                and (plan.short_tails is None
                     or plan.short_tails[1].shape[0] <= cap["kv_tokens"])
                and (plan.tail_packs is None or plan.tail_packs[2] == self.pack_m))

    def load(self, plan: TreeAttentionPlan) -> None:
        """Copy ``plan``'s work list into the fixed buffers (device copies, no host sync)."""
        if not self.fits(plan):
            raise ValueError("plan exceeds the StaticTreeAttention capacities; run it eagerly")
        num_items, num_queries = plan.items.shape[1], plan.num_queries
        self.items[:, :num_items].copy_(plan.items)
        if plan.num_large_items >= 0:  # split_launches: large items first, then the rest
            split = plan.num_large_items
        else:  # the whole list to one launch: the small-tile one when no item is large
            split = 0 if plan.block_m == SMALL_M else num_items
        self.item_bounds[0, 1].fill_(split)
        self.item_bounds[1, 0].fill_(split)
        self.item_bounds[1, 1].fill_(num_items)
        self.kv_indices[:plan.kv_indices.shape[0]].copy_(plan.kv_indices)
        self.query_order[:num_queries].copy_(plan.query_order)
        self.merge_indptr[:num_queries + 1].copy_(plan.merge_indptr)
        listed = plan.merge_slots.shape[0]  # (packed tails' partials are not listed)
        self.merge_indptr[num_queries + 1:].fill_(listed)  # padded rows: no partial
        self.merge_slots[:listed].copy_(plan.merge_slots)
        self._clear_tails()
        if plan.short_tails is not None:
            indptr, slots = plan.short_tails
            target = self.tail_indptr if plan.tail_packs is None else self.pack_indptr
            target[:num_queries + 1].copy_(indptr)
            target[num_queries + 1:].copy_(indptr[-1])  # padded rows: no tail
            self.tail_slots[:slots.shape[0]].copy_(slots)
            if plan.tail_packs is not None:
                pack_info, pack_slots = plan.tail_packs[0], plan.tail_packs[3]
                self.pack_info[:pack_info.shape[0]].copy_(pack_info)
                self.pack_slots[:num_queries].copy_(pack_slots)
        if self.tails is not None:
            self.tails.load(plan.tails, num_queries)

    def load_empty(self) -> None:
        """Load a plan with no work items: every output row comes out as zeros."""
        self.item_bounds.zero_()
        self.merge_indptr.zero_()
        self._clear_tails()
        if self.tails is not None:
            self.tails.load(None, 0)

    def advance_tails(self, new_slots: torch.Tensor) -> None:
        """Advance the loaded plan by one token per query (``new_slots``: int [>= queries] on the
        device), when it was loaded with tail slack and this is not its own step; no host value,
        so a graph may capture it (see :class:`~deft_sglang.kernels.tails.DeviceTails`)."""
        if self.tails is None:
            raise ValueError("the workspace was built without tail_steps")
        self.tails.advance(new_slots, self.kv_indices, self.items)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            out: torch.Tensor, sm_scale: float | None = None, extra=None) -> torch.Tensor:
        """Tree attention for the loaded plan into ``out`` ([B, Hq, D], B <= max_queries).

        Rows of ``q``/``out`` past the plan's queries are padding: ``out`` gets zeros there
        (or their ``extra`` partial).  ``extra`` as in ``TreeAttentionPlan.run``.
        The launches depend only on shapes, so this may be captured in a CUDA graph.
        """
        if q.shape[0] > self.capacity["queries"] or out.shape != q.shape:
            raise ValueError("q/out must be [B, Hq, D] with B <= max_queries")
        head_dim = self.shape[2]
        sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
        block_m, block_n, small_n, warps, stages, max_registers = self.tiles
        self.work_counters.zero_()  # the last run left them past the end of its list
        packs = (self.pack_info, self.pack_indptr, self.tail_slots, 0, self.pack_m)
        pack_launch = 0 if self.pack_m > SMALL_M else 1  # the kernel with the packs' tile
        for launch, tile_m in enumerate((block_m, SMALL_M)):  # SMALL_M alone: small tile only
            launch_partial_attention(q, k_cache, v_cache, self.kv_indices, self.query_order,
                                     self.items, self.partial_out, self.partial_lse, sm_scale,
                                     SMALL_M, small_n, tile_m, block_n, warps, stages,
                                     item_bounds=self.item_bounds[launch],
                                     num_programs=self.num_programs,
                                     work_counters=self.work_counters[launch],
                                     max_registers=max_registers,
                                     interleave_heads=self.config.interleave_heads,
                                     tail_packs=packs if self.pack_m and launch == pack_launch
                                     else None)
        launch_merge(self.partial_out, self.partial_lse, self.merge_indptr, self.merge_slots,
                     out, *self.merge_shape, extra=extra,
                     stages=self.config.merge_stages_for(q.shape[0] * q.shape[1]),
                     num_warps=self.config.merge_warps,
                     tail=(q, k_cache, v_cache, self.tail_indptr, self.tail_slots,
                           sm_scale * LOG2E),
                     pack_slots=self.pack_slots if self.pack_m else None)
        return out
