"""Short private tails, taken out of the forest: attended by the merge, or in packs.

A leaf node that holds exactly one query's KV and nothing else (a fork's branch, a speculative
draft token, a sampled continuation) is a work item of its own in phase 1: one program per KV
head for a few tokens, at the occupancy of a kernel sized for long chunks.  A 1024-way fan-out
with 32-token branches spent 121 of its 246 µs on 8192 such programs; a 256-draft star spent 34
of 60 µs on 2048 programs of one token each (H100, ``results/session8-h100/hold5-parts``).

Leaves of at most ``max(PlannerConfig.merge_tail_tokens, pack_tail_tokens)`` tokens with one
query are taken out of the forest before planning (the node stays, emptied).  Then either

* every tail has at most ``merge_tail_tokens``: the merge attends each query's tail itself,
  one token per step, after folding the query's partials (``merge.fold_tail_tokens``): a tail
  token is a partial of one key, so the result is the same attention; or
* phase 1 attends them in packs (``partial_attention._attend_tail_pack``): a pack is the tails
  of up to ``per_pack`` queries, whose keys lie side by side in ``tail_slots``, in one row tile
  of ``tail_pack_rows`` rows where each row sees its own query's keys only.  Packed tail ``j``
  (of query ``pack_queries[j]``) writes the partial slot after the plan's own ones and the
  merge folds it last (``pack_slots[b]``, -1 for a query without).  Packs run after the work
  items in the same launch, so they fill in behind the heavy ones.  Batch-invariant plans
  (``fixed_chunk_tokens``) never pack: a pack's blocks depend on its neighbours' tails.

Not with tail slack (its in-place advance grows the tails phase 1 reads).  The CUDA-graph form
(``kernels.static``) copies the tails into fixed buffers like the rest.

Shapes::

    tail_indptr  int [B+1]     query b's tail is tail_slots[tail_indptr[b]:tail_indptr[b+1]]
    tail_slots   int [T_total] KV-pool slots (a tensor where node_kv_indices was one)
    pack_info    int32 [3 + T] number of packed tails T, tails per pack, the first's partial
                               slot, then pack_queries
    pack_slots   int32 [B]     query b's packed tail's partial slot, or -1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import native as native_core
from .tree import ranges_on_device


@dataclass
class ShortTails:
    """A forest with its short private tails taken out, and the tails."""

    kv_indptr: np.ndarray       # int64 [N+1], the tails' nodes emptied
    kv_indices: Any             # the remaining slots: numpy, or a tensor where the input was one
    tail_indptr: np.ndarray     # int64 [B+1], by query id
    tail_slots: Any             # int [total tail tokens], numpy or a tensor
    queries: np.ndarray         # int64 [T]: the queries with a tail, in id order (and so the
                                # order of their keys)
    longest: int                # tokens of the longest tail

    @property
    def num_tokens(self) -> int:
        return int(self.tail_indptr[-1])

    def metadata(self, pack_shape: tuple, num_queries: int) -> list:
        """What the kernels read, for the plan's one upload: tail_indptr, tail_slots (a tensor
        stays where it lies) and, when packed (``pack_shape`` = (tails, tails per pack, first
        partial slot)), pack_info and pack_slots (the module docstring's shapes)."""
        parts = [self.tail_indptr, self.tail_slots]
        if pack_shape:
            queries = self.queries
            pack_slots = np.full(num_queries, -1, dtype=np.int64)
            pack_slots[queries] = pack_shape[2] + np.arange(queries.shape[0])
            parts += [np.concatenate([pack_shape, queries]), pack_slots]
        return parts


def take_short_tails(parent: np.ndarray, kv_indptr: np.ndarray, kv_indices, query_node:
                     np.ndarray, max_tokens: int, native: bool = True) -> ShortTails | None:
    """Split off every leaf of 1..``max_tokens`` tokens that exactly one query sits on.

    Parameters
    ----------
    parent, kv_indptr, query_node : int64 numpy arrays of the (validated) contract.
    kv_indices : int [total] slots, numpy or a tensor (kept where it lies).
    max_tokens : the longest tail to take.
    native : on host slots, use the C core (``kernels.native``) when it is available: one
        call, where numpy's twenty-odd cost a ToT plan about 0.2 ms on an H100 host.

    Returns
    -------
    ShortTails, or None when no leaf qualifies.
    """
    on_device = isinstance(kv_indices, torch.Tensor)
    if not on_device:
        kv_indices = np.asarray(kv_indices)
        if native and kv_indices.dtype in (np.int32, np.int64) and native_core.library():
            found = native_core.short_tails(parent, kv_indptr,
                                            np.ascontiguousarray(kv_indices), query_node,
                                            max_tokens)
            return None if found is None else ShortTails(*found)
    num_nodes = parent.shape[0]
    tokens = np.diff(kv_indptr)
    has_child = np.zeros(num_nodes, dtype=bool)
    has_child[parent[parent >= 0]] = True
    queries_at = np.bincount(query_node, minlength=num_nodes)
    short = ~has_child & (queries_at == 1) & (tokens > 0) & (tokens <= max_tokens)
    if not short.any():
        return None
    tail_len = np.where(short[query_node], tokens[query_node], 0)
    tail_indptr = np.concatenate([[0], np.cumsum(tail_len)]).astype(np.int64)
    keep_len = np.where(short, 0, tokens)
    new_indptr = np.concatenate([[0], np.cumsum(keep_len)]).astype(np.int64)
    tail_start = kv_indptr[query_node]
    device = kv_indices.device if on_device else torch.device("cpu")

    def slots(starts, lengths):  # the slots at those ranges of positions, where they lie
        positions = ranges_on_device(starts, lengths, device)
        return kv_indices[positions if on_device else positions.numpy()]

    kept, tails = slots(kv_indptr[:-1], keep_len), slots(tail_start, tail_len)
    return ShortTails(new_indptr, kept, tail_indptr, tails, np.flatnonzero(tail_len),
                      int(tail_len.max()))


def tails_per_pack(num_tails: int, num_kv_heads: int, group: int, num_sms: int, waves: float,
                   pack_rows: int) -> int:
    """Tails per pack: as many as the row tile holds, but no fewer packs than the GPU's
    programs (``waves`` per SM) where there are enough tails (few tails keep one each)."""
    most = max(1, pack_rows // group)
    return int(min(most, num_tails, max(1, num_tails * num_kv_heads // int(num_sms * waves))))

