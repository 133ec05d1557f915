"""Short private tails, attended in the merge instead of phase 1.

A leaf node that holds exactly one query's KV and nothing else (a fork's branch, a speculative
draft token, a sampled continuation) is a work item of its own in phase 1: one program per KV
head for a few tokens, at the occupancy of a kernel sized for long chunks.  A 1024-way fan-out
with 32-token branches spent 121 of its 246 µs on 8192 such programs; a 256-draft star spent 34
of 60 µs on 2048 programs of one token each (H100, ``results/session8-h100/hold5-parts``).

With ``PlannerConfig.merge_tail_tokens = T`` > 0, leaves of at most T tokens with one query
are taken out of the forest before planning (the node stays, emptied) and the merge attends
each query's tail itself, one token per step, after folding the query's partials
(``merge.fold_tail_tokens``): a tail token is a partial of one key, so the result is the same
attention.  Not with tail slack (its in-place advance grows the tails phase 1 reads).  The
CUDA-graph form (``kernels.static``) copies the tails into fixed buffers like the rest.

Shapes::

    tail_indptr  int [B+1]     query b's tail is tail_slots[tail_indptr[b]:tail_indptr[b+1]]
    tail_slots   int [T_total] KV-pool slots (a tensor where node_kv_indices was one)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .tree import ranges_on_device


@dataclass
class ShortTails:
    """A forest with its short private tails taken out, and the tails."""

    kv_indptr: np.ndarray       # int64 [N+1], the tails' nodes emptied
    kv_indices: Any             # the remaining slots: numpy, or a tensor where the input was one
    tail_indptr: np.ndarray     # int64 [B+1], by query id
    tail_slots: Any             # int [total tail tokens], numpy or a tensor

    @property
    def num_tokens(self) -> int:
        return int(self.tail_indptr[-1])


def take_short_tails(parent: np.ndarray, kv_indptr: np.ndarray, kv_indices, query_node:
                     np.ndarray, max_tokens: int) -> ShortTails | None:
    """Split off every leaf of 1..``max_tokens`` tokens that exactly one query sits on.

    Parameters
    ----------
    parent, kv_indptr, query_node : int64 numpy arrays of the (validated) contract.
    kv_indices : int [total] slots, numpy or a tensor (kept where it lies).
    max_tokens : the longest tail to take.

    Returns
    -------
    ShortTails, or None when no leaf qualifies.
    """
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
    on_device = isinstance(kv_indices, torch.Tensor)
    if not on_device:
        kv_indices = np.asarray(kv_indices)
    device = kv_indices.device if on_device else torch.device("cpu")

    def slots(starts, lengths):  # the slots at those ranges of positions, where they lie
        positions = ranges_on_device(starts, lengths, device)
        return kv_indices[positions if on_device else positions.numpy()]

    kept, tails = slots(kv_indptr[:-1], keep_len), slots(tail_start, tail_len)
    return ShortTails(new_indptr, kept, tail_indptr, tails)
