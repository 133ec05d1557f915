"""Host-side view of a KV forest: validation and the query order that makes subtrees contiguous.

The kernel contract (see ``README.md``)::

    node_parent      int32 [N]     parent node, -1 for a root, parent < child
    node_kv_indptr   int32 [N+1]   node n owns node_kv_indices[indptr[n]:indptr[n+1]]
    node_kv_indices  int32 [total] KV-pool slots, in position order within a node
    query_node       int32 [B]     query b attends to query_node[b] and all its ancestors

Sorting queries by their root-to-node path puts the queries below any node ``n``
into one contiguous range ``[query_begin[n], query_end[n])`` of the sorted order.  That range is
the node's *query group* (DeFT's KV-guided grouping): every query in it reads node ``n``'s KV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import native as native_core


def as_int_array(name: str, value, keep_int32: bool = False) -> np.ndarray:
    """``value`` as a contiguous 1-D int64 numpy array (``keep_int32``: int32 input stays
    int32)."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be an int32 tensor, got {value.dtype}")
        if value.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
        return value.detach().to("cpu", torch.int64).numpy()
    array = np.asarray(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D integer array")
    if keep_int32 and array.dtype == np.int32:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(array, dtype=np.int64)


@dataclass(frozen=True)
class TreeLayout:
    """The forest plus the derived grouping, all host-side int64 numpy arrays.

    Attributes
    ----------
    parent, kv_indptr, kv_indices, query_node : the contract arrays.
    query_order : [B] query ids sorted by their root-first path (subtrees contiguous).
    query_begin, query_end : [N] each node's query group, as a range of ``query_order``.
    """

    parent: np.ndarray
    kv_indptr: np.ndarray
    kv_indices: "np.ndarray | torch.Tensor"  # a device tensor when planning skipped validation
    query_node: np.ndarray
    query_order: np.ndarray
    query_begin: np.ndarray
    query_end: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.parent.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.query_node.shape[0])

    def node_tokens(self) -> np.ndarray:
        return np.diff(self.kv_indptr)

    def node_queries(self) -> np.ndarray:
        return self.query_end - self.query_begin


def validate_tree(parent, kv_indptr, kv_indices, query_node, num_slots: int | None = None,
                  native: bool = False):
    """Check the contract arrays and return them as int64 numpy arrays (``native``: with the C
    core when it is available, see ``kernels.native``; an int32 ``kv_indices`` then stays
    int32, since it is only checked and uploaded).

    Raises
    ------
    ValueError
        Naming the offending argument: wrong rank/dtype, a parent index that is not smaller than
        its child's, an indptr that does not start at 0, decreases or disagrees with the indices,
        a query node out of range, or (when ``num_slots`` is given) a slot index out of range.
    """
    parent = as_int_array("node_parent", parent)
    kv_indptr = as_int_array("node_kv_indptr", kv_indptr)
    native = native and native_core.library() is not None
    kv_indices = as_int_array("node_kv_indices", kv_indices, keep_int32=native)
    query_node = as_int_array("query_node", query_node)
    if native and kv_indptr.shape[0] == parent.shape[0] + 1:
        if native_core.validate(parent, kv_indptr, kv_indices, query_node, num_slots) == 0:
            return parent, kv_indptr, kv_indices, query_node
        kv_indices = kv_indices.astype(np.int64)  # invalid: numpy names the fault below
    num_nodes = parent.shape[0]
    if kv_indptr.shape[0] != num_nodes + 1:
        raise ValueError(
            f"node_kv_indptr must have len(node_parent)+1 = {num_nodes + 1} entries, "
            f"got {kv_indptr.shape[0]}")
    if num_nodes:
        ids = np.arange(num_nodes)
        if np.any(parent >= ids) or np.any(parent < -1):
            bad = int(np.nonzero((parent >= ids) | (parent < -1))[0][0])
            raise ValueError(
                f"node_parent[{bad}] = {int(parent[bad])}: a parent index must be -1 or smaller "
                "than its child's")
    if kv_indptr[0] != 0 or np.any(np.diff(kv_indptr) < 0):
        raise ValueError("node_kv_indptr must start at 0 and never decrease")
    if kv_indptr[-1] != kv_indices.shape[0]:
        raise ValueError(
            f"node_kv_indptr[-1] = {int(kv_indptr[-1])} must equal len(node_kv_indices) = "
            f"{kv_indices.shape[0]}")
    if query_node.size and (query_node.min() < 0 or query_node.max() >= num_nodes):
        raise ValueError(f"query_node values must lie in [0, {num_nodes})")
    if num_slots is not None and kv_indices.size and (
            kv_indices.min() < 0 or kv_indices.max() >= num_slots):
        raise ValueError(f"node_kv_indices values must lie in [0, {num_slots}) (the KV pool size)")
    return parent, kv_indptr, kv_indices, query_node


def _query_paths(parent: np.ndarray, query_node: np.ndarray) -> np.ndarray:
    """[B, depth] matrix of each query's path, root first, padded with -1 after its node.

    One vectorised step per tree level (radix trees are shallow), no per-node Python loop.
    """
    leaf_first = [query_node]
    while True:
        above = leaf_first[-1]
        above = np.where(above >= 0, parent[np.maximum(above, 0)], -1)
        if not np.any(above >= 0):
            break
        leaf_first.append(above)
    steps = np.stack(leaf_first, axis=1)                       # [B, D], query's node first
    depth = np.sum(steps >= 0, axis=1)                         # path length per query
    cols = np.arange(steps.shape[1])
    take = depth[:, None] - 1 - cols[None, :]                  # root-first column index
    paths = np.take_along_axis(steps, np.maximum(take, 0), axis=1)
    return np.where(take >= 0, paths, -1)


def build_layout(parent, kv_indptr, kv_indices, query_node, native: bool = False) -> TreeLayout:
    """Group the queries by the nodes they share (KV-guided grouping); see the module docstring.

    Sorting queries lexicographically by their root-first path puts every subtree's queries in one
    run; a node's run is found from the count and the sum of the sorted positions it occupies.
    ``native``: the C core's preorder walk, which gives the same order (``kernels.native``).
    """
    num_nodes, num_queries = parent.shape[0], query_node.shape[0]
    if num_queries == 0:
        empty = np.zeros(num_nodes, dtype=np.int64)
        return TreeLayout(parent, kv_indptr, kv_indices, query_node,
                          np.zeros(0, dtype=np.int64), empty, empty.copy())
    if native and native_core.library():
        parent, query_node = np.ascontiguousarray(parent), np.ascontiguousarray(query_node)
        return TreeLayout(parent, kv_indptr, kv_indices, query_node,
                          *native_core.layout(parent, query_node))
    paths = _query_paths(parent, query_node)
    query_order = np.lexsort(paths.T[::-1])                    # first column is the primary key
    sorted_paths = paths[query_order]
    position = np.broadcast_to(np.arange(num_queries)[:, None], sorted_paths.shape)
    on_path = sorted_paths >= 0
    nodes, where = sorted_paths[on_path], position[on_path]
    count = np.bincount(nodes, minlength=num_nodes)
    position_sum = np.bincount(nodes, weights=where, minlength=num_nodes)
    safe = np.maximum(count, 1)
    query_begin = np.rint((position_sum - count * (count - 1) / 2) / safe).astype(np.int64)
    query_begin[count == 0] = 0
    return TreeLayout(parent, kv_indptr, kv_indices, query_node, query_order.astype(np.int64),
                      query_begin, query_begin + count)


def host_to_device(array: np.ndarray, device) -> torch.Tensor:
    """Copy a host array to ``device`` without waiting for the device.

    A copy from pageable memory makes CUDA wait for all work queued on the stream first (the
    previous decode step's forward, under SGLang's overlap scheduling); a pinned staging copy
    does not.  (A ring of reused pinned buffers guarded by CUDA events took 28 µs per upload
    on the H100 host against 15 for ``pin_memory()``: the event and stream calls cost more
    than the allocator they avoid.)"""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def ranges_on_device(starts: np.ndarray, lengths: np.ndarray, device,
                     _force_device_path: bool = False) -> torch.Tensor:
    """``starts[n], starts[n]+1, ..., starts[n]+lengths[n]-1`` for every n in turn, as int64
    [sum(lengths)] on ``device``: built there from O(nodes) host data, so that a step's host
    work does not grow with its KV length (and without waiting for the device)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths  # where each range begins in the output
    if torch.device(device).type == "cpu" and not _force_device_path:
        # the host is the device: numpy is the fast way
        return torch.from_numpy(np.repeat(starts - first, lengths) + np.arange(total))
    per_range = host_to_device(starts - first, device)
    counts = host_to_device(lengths, device)
    return (torch.repeat_interleave(per_range, counts, output_size=total)
            + torch.arange(total, dtype=torch.int64, device=device))
