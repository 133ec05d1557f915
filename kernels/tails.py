"""Tail slack: one decode plan serves the next steps of the same batch, updated on the device.

Between two decode steps of an unchanged batch, every request's private tail (its KV past the
shared prefix) grows by exactly one token and nothing else moves.  A plan built with
``tail_slack = S`` leaves ``S`` free index slots after each private tail in its flattened index
list and remembers, per query, where its next token goes and which work item is its tail's last
chunk.  :meth:`TailSlack.extend` then advances the plan by one step with three small device ops
(write the new slots, bump those items' ``kv_len``, bump the positions): no host planning, no
host-to-device copy.  After ``S`` steps (or when the batch changes) the caller plans afresh.

A plan is extendable when every query sits alone on a leaf node that holds KV (its private tail),
which is how SGLang decode batches look; otherwise ``tail_slack`` is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

from .tree import host_to_device, ranges_on_device


@dataclass
class TailSpread:
    """Where each node's KV moves when every private tail gets ``slack`` free slots after it."""

    slack: int
    query_node: np.ndarray    # int64 [B]: each query's tail node
    old_indptr: np.ndarray    # int64 [N+1]
    new_indptr: np.ndarray    # int64 [N+1]

    @property
    def shift(self) -> np.ndarray:
        """int64 [N]: how far each node's first index moves."""
        return self.new_indptr[:-1] - self.old_indptr[:-1]

    def apply(self, kv_indices, device: torch.device):
        """The flattened slot list with the free slots inserted (host array or device tensor,
        like the input; free slots hold 0 until written)."""
        tokens = np.diff(self.old_indptr)
        if isinstance(kv_indices, torch.Tensor):
            out = torch.zeros(int(self.new_indptr[-1]), dtype=torch.int32, device=device)
            where = ranges_on_device(self.new_indptr[:-1], tokens, device)
            return out.index_copy_(0, where, kv_indices.to(device=device, dtype=torch.int32))
        out = np.zeros(int(self.new_indptr[-1]), dtype=np.int64)
        out[ranges_on_device(self.new_indptr[:-1], tokens, "cpu").numpy()] = kv_indices
        return out

    def tails(self, item_node: np.ndarray, item_last: np.ndarray, item_len: np.ndarray,
              device: torch.device) -> "TailSlack":
        """The device state of the plan's tails; ``item_node``/``item_last``/``item_len`` (each
        item's ``kv_len``) in final item order."""
        num_queries = self.query_node.shape[0]
        query_of_node = np.full(self.old_indptr.shape[0] - 1, -1, dtype=np.int64)
        query_of_node[self.query_node] = np.arange(num_queries)
        position = np.nonzero(item_last & (query_of_node[item_node] >= 0))[0]
        open_items = np.empty(num_queries, dtype=np.int64)
        open_items[query_of_node[item_node[position]]] = position
        first_pos = self.new_indptr[self.query_node] + np.diff(self.old_indptr)[self.query_node]
        # Step k (0-based) writes each query's token at first_pos + k and sets its open item's
        # kv_len to len + k + 1: both tables precomputed, so a step is two copies, no updates.
        steps = np.arange(self.slack, dtype=np.int64)[:, None]
        table = np.concatenate([open_items, (first_pos + steps).ravel(),
                                (item_len[open_items] + 1 + steps).ravel()])
        state = host_to_device(table, device)
        count = self.slack * num_queries
        return TailSlack(room=self.slack, open_items=state[:num_queries],
                         positions=state[num_queries:num_queries + count].view(self.slack, -1),
                         lengths=state[num_queries + count:].to(torch.int32)
                         .view(self.slack, -1))


def tail_spread(parent: np.ndarray, kv_indptr: np.ndarray, query_node: np.ndarray,
                node_queries: np.ndarray, slack: int) -> Optional[TailSpread]:
    """The spread for ``slack`` free slots per private tail, or None when some query is not
    alone on a leaf with KV (then the plan is not extendable)."""
    if slack < 1 or query_node.size == 0:
        return None
    tokens = np.diff(kv_indptr)
    children = np.bincount(parent[parent >= 0], minlength=parent.shape[0])
    alone = node_queries[query_node] == 1
    if not (np.all(alone) and np.all(children[query_node] == 0) and np.all(tokens[query_node] > 0)):
        return None
    extra = np.zeros(parent.shape[0], dtype=np.int64)
    extra[query_node] = slack
    new_indptr = np.concatenate([[0], np.cumsum(tokens + extra)])
    return TailSpread(slack, query_node.astype(np.int64), kv_indptr.astype(np.int64), new_indptr)


@dataclass
class TailSlack:
    """Device state to advance an extendable plan one decode step at a time.

    Attributes
    ----------
    room : steps the plan can still be advanced.
    open_items : int64 [B] the work item (in the plan's order) holding each tail's last chunk.
    positions : int64 [S, B] flattened index position of each query's token at step k.
    lengths : int32 [S, B] its open item's ``kv_len`` after step k. Written whole
        (``index_copy_``) rather than added to the buffer: no atomics and no deterministic-mode
        sort path, and any buffer it is written into ends up right.
    """

    room: int
    open_items: torch.Tensor
    positions: torch.Tensor
    lengths: torch.Tensor

    def extend(self, new_slots: torch.Tensor, kv_indices: torch.Tensor,
               items: torch.Tensor) -> None:
        """Append ``new_slots[b]`` (int [B], query order) to every query's tail in ``kv_indices``
        / ``items`` (the plan's own buffers or a workspace's copy of them): three device ops,
        the fewest host launches a server step pays."""
        if self.room < 1:
            raise ValueError("the plan's tail slack is used up; plan the step afresh")
        if new_slots.shape != self.open_items.shape:
            raise ValueError(f"new_slots must have shape {tuple(self.open_items.shape)}, "
                             f"got {tuple(new_slots.shape)}")
        step = self.positions.shape[0] - self.room
        kv_indices.index_copy_(0, self.positions[step], new_slots.to(torch.int32))
        items[1].index_copy_(0, self.open_items, self.lengths[step])
        self.room -= 1

    def advanced_elsewhere(self) -> None:
        """Count a step that a graph workspace advanced on the device (:class:`DeviceTails`):
        the plan's own buffers stay as built, only the room left shrinks."""
        if self.room < 1:
            raise ValueError("the plan's tail slack is used up; plan the step afresh")
        self.room -= 1


# ------------------------------------------------------------------ tail advance inside a graph
#
#   state        int32 [3]        next table row to apply (-1: none this run), queries, rows
#                                 loaded (a run past them applies nothing)
#   positions    int64 [S, Bmax]  as TailSlack.positions, rows past the plan's unused
#   lengths      int32 [S, Bmax]  as TailSlack.lengths
#   open_items   int64 [Bmax]     as TailSlack.open_items
#   new_slots    int   [>= B]     this step's out_cache_loc (a graph's static buffer)
#   kv_indices   int32 [capacity] / items int32 [5, capacity]: the workspace's work list
#
# Pure-PyTorch reference: TailSlack.extend (the same writes, from host-chosen rows).

@triton.jit
def _advance_tails_kernel(state_ptr, positions_ptr, lengths_ptr, open_items_ptr, new_slots_ptr,
                          kv_indices_ptr, items_ptr, items_stride, table_stride,
                          BLOCK: tl.constexpr):
    row = tl.load(state_ptr)
    count = tl.load(state_ptr + 1)
    num_rows = tl.load(state_ptr + 2)
    if (row >= 0) & (row < num_rows):
        for start in range(0, count, BLOCK):
            query = start + tl.arange(0, BLOCK)
            mask = query < count
            position = tl.load(positions_ptr + row * table_stride + query, mask=mask, other=0)
            slot = tl.load(new_slots_ptr + query, mask=mask, other=0)
            tl.store(kv_indices_ptr + position, slot.to(tl.int32), mask=mask)
            item = tl.load(open_items_ptr + query, mask=mask, other=0)
            length = tl.load(lengths_ptr + row * table_stride + query, mask=mask, other=0)
            tl.store(items_ptr + items_stride + item, length, mask=mask)
    tl.store(state_ptr, row + 1)  # the next run applies the next row


class DeviceTails:
    """Tail-slack tables in fixed buffers, so that a CUDA graph advances the loaded plan itself.

    ``load`` (outside the graph, with the plan) arms the tables and marks the coming run as the
    plan's own step; every later run of :meth:`advance` (captured in the graph, before the first
    layer) applies the next row with the step's new slots, so a replayed step whose batch only
    grew costs the host no launch at all. The host keeps counting the room left
    (:meth:`TailSlack.advanced_elsewhere`) and loads a fresh plan before it runs out.
    """

    def __init__(self, max_steps: int, max_queries: int, device):
        if max_steps < 1 or max_queries < 1:
            raise ValueError("DeviceTails needs max_steps >= 1 and max_queries >= 1")
        self.positions = torch.zeros(max_steps, max_queries, dtype=torch.int64, device=device)
        self.lengths = torch.zeros(max_steps, max_queries, dtype=torch.int32, device=device)
        self.open_items = torch.zeros(max_queries, dtype=torch.int64, device=device)
        self.state = torch.tensor([-1, 0, 0], dtype=torch.int32, device=device)

    def fits(self, tails: Optional[TailSlack], num_queries: int) -> bool:
        return (tails is not None and tails.room <= self.positions.shape[0]
                and num_queries <= self.positions.shape[1])

    def load(self, tails: Optional[TailSlack], num_queries: int) -> None:
        """Arm the tables with ``tails`` (None or too large: runs advance nothing)."""
        self.state[0].fill_(-1)
        if not self.fits(tails, num_queries):
            self.state[1:].fill_(0)
            return
        used = tails.positions.shape[0] - tails.room
        self.positions[:tails.room, :num_queries].copy_(tails.positions[used:])
        self.lengths[:tails.room, :num_queries].copy_(tails.lengths[used:])
        self.open_items[:num_queries].copy_(tails.open_items)
        self.state[1].fill_(num_queries)
        self.state[2].fill_(tails.room)

    def advance(self, new_slots: torch.Tensor, kv_indices: torch.Tensor,
                items: torch.Tensor) -> None:
        """One launch, no host value: safe to capture. ``new_slots``: int [>= queries]."""
        max_queries = self.positions.shape[1]
        _advance_tails_kernel[(1,)](
            self.state, self.positions, self.lengths, self.open_items, new_slots, kv_indices,
            items, items.stride(0), self.positions.stride(0),
            BLOCK=min(1024, triton.next_power_of_2(max_queries)))
