"""Speculative-decoding token trees in the kernel contract (tree verification).

A draft token tree (Medusa / EAGLE) is verified in one forward: every draft token attends to the
committed prefix and to its ancestors inside the tree, itself included.  In the contract's terms
each draft token is a one-token node whose parent is its tree parent (the prefix for the tree's
root token), and each draft token is a query at its own node; the prefix is one shared node, read
once for all of them.  This module turns Medusa choice paths into that form.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def token_tree_parents(choices: Sequence[Sequence[int]]) -> tuple[list, list]:
    """Parents of a token tree given as Medusa choice paths.

    Token 0 is the tree's root (the token sampled last); every choice path ``c`` is one more
    token, the child ``c[-1]`` of the token at path ``c[:-1]`` (the root for a one-element path).

    Parameters
    ----------
    choices : the ``t - 1`` paths of a ``t``-token tree, e.g. ``[[0], [1], [0, 0]]``.

    Returns
    -------
    (paths, parent): the paths in an order where parents come first (by length, then value),
    with ``[]`` for the root at index 0; ``parent[i]`` is the index of token ``i``'s parent
    (-1 for the root).

    Raises
    ------
    ValueError
        A repeated path, or a path whose parent path is not in ``choices``.
    """
    paths = [()] + sorted((tuple(int(x) for x in c) for c in choices), key=lambda c: (len(c), c))
    index = {}
    for i, path in enumerate(paths):
        if path in index:
            raise ValueError(f"choices repeat the path {list(path)}")
        index[path] = i
    parent = [-1]
    for path in paths[1:]:
        if not path or path[:-1] not in index:
            raise ValueError(f"choices hold {list(path)} but not its parent {list(path[:-1])}")
        parent.append(index[path[:-1]])
    return [list(p) for p in paths], parent


def ancestor_mask(parent: Sequence[int]) -> np.ndarray:
    """The tree mask of a token tree: ``mask[i, j]`` is True when token ``j`` is token ``i`` or
    one of its ancestors.  bool [T, T].

    Parameters
    ----------
    parent : int [T]; ``parent[i] < i`` (or -1 for a root).
    """
    parent = np.asarray(parent, dtype=np.int64).reshape(-1)
    num = parent.shape[0]
    mask = np.zeros((num, num), dtype=bool)
    for i in range(num):
        if parent[i] >= i:
            raise ValueError(f"parent[{i}] = {parent[i]} must be smaller than {i} (or -1)")
        mask[i, i] = True
        if parent[i] >= 0:
            mask[i] |= mask[parent[i]]
    return mask


def draft_tree_as_nodes(node_parent, node_kv_indptr, node_kv_indices, request_node,
                        draft_slots, draft_parent) -> tuple[np.ndarray, ...]:
    """The contract's node form of a verify step: every draft token becomes a one-token node.

    Parameters
    ----------
    node_parent, node_kv_indptr, node_kv_indices : the committed KV forest.
    request_node : int [R]; request r's committed path ends at ``request_node[r]``.
    draft_slots : int [R*T]; KV slot of draft token i of request r at ``r*T + i``.
    draft_parent : int [R, T]; the parent of each draft token within its tree (-1: the root,
        whose parent becomes ``request_node[r]``).

    Returns
    -------
    (node_parent, node_kv_indptr, node_kv_indices, query_node) with query ``r*T + i`` at draft
    token i's node: plain tree attention over it equals verify attention.
    """
    parent = np.asarray(node_parent, dtype=np.int64).reshape(-1)
    indptr = np.asarray(node_kv_indptr, dtype=np.int64).reshape(-1)
    indices = np.asarray(node_kv_indices, dtype=np.int64).reshape(-1)
    request_node = np.asarray(request_node, dtype=np.int64).reshape(-1)
    draft_parent = np.asarray(draft_parent, dtype=np.int64)
    slots = np.asarray(draft_slots, dtype=np.int64).reshape(-1)
    if draft_parent.ndim != 2 or draft_parent.shape[0] != request_node.shape[0]:
        raise ValueError(f"draft_parent must be [R, T] with R = {request_node.shape[0]} "
                         f"requests, got shape {draft_parent.shape}")
    num_requests, draft_len = draft_parent.shape
    if slots.shape[0] != num_requests * draft_len:
        raise ValueError(f"draft_slots must hold R*T = {num_requests * draft_len} slots, "
                         f"got {slots.shape[0]}")
    local = np.arange(draft_len)
    if np.any(draft_parent < -1) or np.any(draft_parent >= local):
        raise ValueError("draft_parent[r, i] must be -1 or a draft token before i")
    if np.any(request_node < 0) or np.any(request_node >= parent.shape[0]):
        raise ValueError(f"request_node entries must be in [0, {parent.shape[0]})")
    base = parent.shape[0]
    local = draft_parent + base + np.arange(num_requests)[:, None] * draft_len
    new_parent = np.where(draft_parent < 0, request_node[:, None], local).reshape(-1)
    out_parent = np.concatenate([parent, new_parent])
    out_indptr = np.concatenate([indptr, indptr[-1] + 1 + np.arange(num_requests * draft_len)])
    out_indices = np.concatenate([indices, slots])
    query_node = base + np.arange(num_requests * draft_len)
    return out_parent, out_indptr, out_indices, query_node
