"""Read a decode batch's KV forest from SGLang's RadixCache (once per decode step).

Each request of a decode batch attends to the KV at positions ``[0, seq_len)`` of its
``req_to_token`` row. Its cached prefix ``[0, depth(last_node))`` is a path of RadixCache nodes
(``req.last_node`` up to the root) that other requests may share; the rest of the row (prompt
tokens not yet inserted, decode tokens, the token being decoded now) is private. This module
turns a batch into the kernel contract: a forest whose nodes are the distinct tree nodes on the
batch's paths plus one private tail per request, with ``query_node[b]`` = request ``b``'s tail.

What is canonical. ``req_to_token`` is what stock SGLang reads, so every node's slots are read
from a ``req_to_token`` row: a tree node at depth ``[s, e)`` takes ``row[s:e]`` of the first
request whose path contains it. RadixCache guarantees that the rows of all requests below a node
hold that node's ``value`` at its depth range (a prefix hit writes ``node.value`` into the row;
an insert that finds cached tokens frees the duplicates and rewrites the row), the node's depth
is fixed by the tree, and nodes on a running request's path are locked against eviction. Later
inserts may *split* a node; splitting keeps values and depths, and this reader walks the tree
afresh every step. The tree state and ``req_to_token`` are read in the same scheduler step that
launches the forward (with or without overlap scheduling), so they describe the same batch.

Never a wrong result. A request whose tree state looks inconsistent (a node detached or
evicted, a prefix deeper than the request, the pool row not the batch's, a finished request,
an unsupported cache type) is read as an unshared chain ``row[0:seq_len]``: exactly what stock
decode reads. ``verify=True`` additionally compares every path node's ``value`` with the
request's own row (a device sync; for debugging and tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .kernels.tree import ranges_on_device

_MAX_DEPTH_NODES = 1 << 20
SUPPORTED_CACHE_TYPES = ("RadixCache", "HiRadixCache")


@dataclass
class DecodeForest:
    """A decode batch as a KV forest whose node slots are ``req_to_token`` row ranges.

    Attributes
    ----------
    node_parent : int32 [N]
        Parent index (-1 for a root); parents precede children.
    node_row, node_start, node_len : int64 [N]
        Node ``n`` holds the slots ``req_to_token[node_row[n], node_start[n]:+node_len[n]]``.
    query_node : int32 [B]
        Request ``b``'s private tail node (its path is the tail and its ancestors).
    num_tree_nodes : int
        Nodes taken from the radix tree (the rest are tails and chains).
    fallbacks : dict
        Reason -> number of requests read as unshared chains for that reason.
    """

    node_parent: np.ndarray
    node_row: np.ndarray
    node_start: np.ndarray
    node_len: np.ndarray
    query_node: np.ndarray
    num_tree_nodes: int = 0
    fallbacks: dict = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.node_parent.shape[0])

    @property
    def node_kv_indptr(self) -> np.ndarray:
        """int32 [N+1] offsets of each node's slots in the flattened index list."""
        indptr = np.zeros(self.num_nodes + 1, dtype=np.int64)
        np.cumsum(self.node_len, out=indptr[1:])
        return indptr.astype(np.int32)

    def gather_kv_indices(self, req_to_token: torch.Tensor) -> torch.Tensor:
        """Node slots from ``req_to_token`` (on its device, no host sync), int32 [total].

        The flat positions are built on the device from per-node rows and starts, so the host
        work is per node, not per KV token."""
        first = self.node_row * req_to_token.stride(0) + self.node_start
        flat = ranges_on_device(first, self.node_len, req_to_token.device)
        return req_to_token.reshape(-1).index_select(0, flat).to(torch.int32)

    def with_tails_at(self, seq_lens) -> "DecodeForest":
        """This forest with every request's private tail running to ``seq_lens[b]`` (int [B],
        batch order): the same batch some decode steps later, every tree position unchanged."""
        node_len = self.node_len.copy()
        tails = self.query_node.astype(np.int64)
        node_len[tails] = np.asarray(seq_lens, dtype=np.int64) - self.node_start[tails]
        if np.any(node_len[tails] < 1):
            raise ValueError("a tail would shrink: the batch is not this forest's, later")
        return DecodeForest(self.node_parent, self.node_row, self.node_start, node_len,
                            self.query_node, self.num_tree_nodes, dict(self.fallbacks))

    def path_positions(self, b: int) -> list[tuple[int, int, int]]:
        """(row, start, length) of each node on query ``b``'s path, root first (for tests)."""
        out, n = [], int(self.query_node[b])
        while n >= 0:
            out.append((int(self.node_row[n]), int(self.node_start[n]), int(self.node_len[n])))
            n = int(self.node_parent[n])
        return out[::-1]


class _Builder:
    def __init__(self):
        self.parent, self.row, self.start, self.length = [], [], [], []
        self.added: dict[int, tuple[int, int]] = {}  # id(tree node) -> (index, end depth)
        self.num_tree_nodes = 0

    def add(self, parent: int, row: int, start: int, length: int) -> int:
        self.parent.append(parent)
        self.row.append(row)
        self.start.append(start)
        self.length.append(length)
        return len(self.parent) - 1

    def add_path(self, row: int, parent: int, path) -> int:
        """Add the not-yet-seen nodes of ``path`` (below node ``parent``, -1 for the root);
        return the index of its last node (``parent`` for an empty path)."""
        for node, start, end in path:
            hit = self.added.get(id(node))
            if hit is None:
                hit = (self.add(parent, row, start, end - start), end)
                self.added[id(node)] = hit
                self.num_tree_nodes += 1
            parent = hit[0]
        return parent

    def finish(self, query_node, fallbacks) -> DecodeForest:
        return DecodeForest(
            node_parent=np.asarray(self.parent, dtype=np.int32),
            node_row=np.asarray(self.row, dtype=np.int64),
            node_start=np.asarray(self.start, dtype=np.int64),
            node_len=np.asarray(self.length, dtype=np.int64),
            query_node=np.asarray(query_node, dtype=np.int32),
            num_tree_nodes=self.num_tree_nodes,
            fallbacks=fallbacks,
        )


def tree_cache_supported(tree_cache) -> bool:
    """True for the radix caches whose node values/depths this reader understands."""
    if tree_cache is None or getattr(tree_cache, "disable", False):
        return False
    if getattr(tree_cache, "root_node", None) is None:
        return False
    return any(cls.__name__ in SUPPORTED_CACHE_TYPES
               and cls.__module__.startswith("sglang.srt.mem_cache")
               for cls in (type(tree_cache),))


def _radix_path(req, row: int, seq_len: int, root, known: dict, min_tail: int = 1):
    """(anchor, path, reason) for ``req``'s cached prefix, or a fallback reason.

    ``path`` lists the nodes root-first as ``(node, start, end)`` below ``anchor``, the
    ``(index, end depth)`` of the deepest ancestor found in ``known`` (``(-1, 0)``: the root).
    Shared nodes are walked once per batch, not once per request (``known`` holds the nodes
    already read); depths come from the tree, so they are the same for every request.
    """
    if getattr(req, "req_pool_idx", None) != row:
        return None, [], "pool row differs from the batch's"
    finished = getattr(req, "finished", None)
    if callable(finished) and finished():
        return None, [], "finished request"
    node, nodes, anchor = getattr(req, "last_node", None), [], (-1, 0)
    while node is not root:
        hit = known.get(id(node))
        if hit is not None:
            anchor = hit
            break
        if node is None or node.value is None or len(nodes) > _MAX_DEPTH_NODES:
            return None, [], "node detached from the tree or evicted"
        nodes.append(node)
        node = node.parent
    path, depth = [], anchor[1]
    for node in reversed(nodes):
        end = depth + int(node.value.shape[0])
        path.append((node, depth, end))
        depth = end
    if depth > seq_len - min_tail:
        return None, [], ("cached prefix not shorter than the sequence" if min_tail
                          else "cached prefix longer than the sequence")
    prefix = getattr(req, "prefix_indices", None)
    if prefix is not None and depth > prefix.shape[0]:
        return None, [], "tree prefix longer than the request's prefix"
    return anchor, path, None


def _path_matches_row(path, row: int, req_to_token: torch.Tensor) -> bool:
    for node, start, end in path:
        slots = req_to_token[row, start:end].to(torch.int64)
        value = node.value.to(device=slots.device, dtype=torch.int64)
        if not torch.equal(slots, value):
            return False
    return True


def read_decode_forest(reqs: Sequence, req_pool_indices: Sequence[int], seq_lens: Sequence[int],
                       tree_cache=None, req_to_token: Optional[torch.Tensor] = None,
                       verify: bool = False, min_tail: int = 1) -> DecodeForest:
    """Build the batch's KV forest from the requests' RadixCache paths.

    Parameters
    ----------
    reqs : sequence of sglang ``Req``, in batch order (or None entries: read as chains).
    req_pool_indices : int per request, the ``req_to_token`` row the batch reads.
    seq_lens : int per request, KV length including the token decoded now.
    tree_cache : the scheduler's prefix cache; unsupported types read every request as a chain.
    req_to_token : needed only with ``verify``.
    verify : compare every path node's value with the request's own row.
    min_tail : tokens each request must hold past its cached prefix: 1 for decode (the token
        decoded now), 0 for a verify forward (``seq_lens`` are committed lengths, and the
        draft tokens are not in the forest).

    Returns
    -------
    DecodeForest
    """
    rows, lens = host_ints(req_pool_indices), host_ints(seq_lens)
    if not (len(reqs) == len(rows) == len(lens)):
        raise ValueError(f"batch sizes differ: {len(reqs)} reqs, {len(rows)} rows, {len(lens)} lens")
    root = tree_cache.root_node if tree_cache_supported(tree_cache) else None
    builder, query_node, fallbacks = _Builder(), [], {}
    for req, row, seq_len in zip(reqs, rows, lens):
        anchor, path, reason = (-1, 0), [], None
        if root is not None and req is not None:
            # verify checks every node against this request's row: walk whole paths then
            anchor, path, reason = _radix_path(req, row, seq_len, root,
                                               {} if verify else builder.added, min_tail)
            if reason is None and verify and path and req_to_token is not None \
                    and not _path_matches_row(path, row, req_to_token):
                reason = "node value differs from req_to_token"
        if reason is not None:
            fallbacks[reason] = fallbacks.get(reason, 0) + 1
            anchor, path = (-1, 0), []
        parent = builder.add_path(row, anchor[0], path)
        depth = path[-1][2] if path else anchor[1]
        query_node.append(builder.add(parent, row, depth, seq_len - depth))
    return builder.finish(query_node, fallbacks)


def chain_forest(req_pool_indices: Sequence[int], seq_lens: Sequence[int]) -> DecodeForest:
    """Every request as an unshared chain ``row[0:seq_len]`` (what stock decode reads)."""
    return read_decode_forest([None] * len(seq_lens), req_pool_indices, seq_lens)


def host_ints(values) -> list[int]:
    """Python ints from a host integer tensor, array or sequence."""
    if hasattr(values, "tolist"):
        return values.tolist()  # an integer tensor or array lists Python ints
    return [int(x) for x in values]


def decode_batch_view(forward_batch, info) -> Optional[tuple]:
    """(``info``, pool rows, sequence lengths) of a decode ForwardBatch on the host, or None for
    a padded or split batch (``info``: its ``DeftBatchInfo`` or None; rows a list of ints,
    lengths an integer numpy array)."""
    batch_size = forward_batch.batch_size
    if info is not None and len(info.reqs) != batch_size:
        return None
    seq_lens_cpu = forward_batch.seq_lens_cpu
    if seq_lens_cpu is not None and seq_lens_cpu.device.type == "cpu":
        seq_lens = seq_lens_cpu[:batch_size].numpy()  # a view: copy before keeping it
    elif info is not None and info.seq_lens is not None:
        seq_lens = np.asarray(info.seq_lens, dtype=np.int64)
    else:
        seq_lens = forward_batch.seq_lens[:batch_size].cpu().numpy()
    if info is not None and info.req_pool_indices is not None:
        rows = list(info.req_pool_indices)
    else:
        rows = host_ints(forward_batch.req_pool_indices[:batch_size].cpu())
    return info, rows, seq_lens
