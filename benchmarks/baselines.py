"""Peers run on the same inputs: SGLang's stock Triton decode kernel, FlashInfer batch decode,
FlashInfer multi-level cascade, and the float64 PyTorch reference (sampled queries).

Each ``prepare_*`` returns a :class:`Prepared` (``run()`` is what gets timed; ``output()`` gives
the last result in the caller's query order) or raises; the caller records the error string and
goes on.  Everything is imported lazily, so this module imports without sglang/flashinfer/CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass
class Prepared:
    run: Callable[[], torch.Tensor]
    output: Callable[[], torch.Tensor]
    info: dict = field(default_factory=dict)


def node_paths(parent: np.ndarray) -> list[list[int]]:
    """Root-first list of nodes on the path to every node (parent < child)."""
    paths: list[list[int]] = []
    for n, p in enumerate(parent):
        paths.append((paths[p] if p >= 0 else []) + [n])
    return paths


def flatten_requests(wl) -> tuple[np.ndarray, np.ndarray]:
    """Per-request page table: each query's root-to-node slots concatenated (page size 1)."""
    indptr, indices = wl.node_kv_indptr, wl.node_kv_indices
    paths = node_paths(wl.node_parent)
    cache: dict[int, np.ndarray] = {}
    pieces, lens = [], []
    for node in wl.query_node:
        node = int(node)
        if node not in cache:
            cache[node] = np.concatenate(
                [indices[indptr[n]:indptr[n + 1]] for n in paths[node]]).astype(np.int32)
        pieces.append(cache[node])
        lens.append(len(cache[node]))
    kv_indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return kv_indptr, (np.concatenate(pieces) if pieces else np.zeros(0, np.int32))


# ------------------------------------------------------------------------- SGLang Triton
def _import_sglang_decode():
    try:  # 0.5.17 layout
        from sglang.kernels.ops.attention import decode_attention as mod
    except ImportError:  # older releases
        from sglang.srt.layers.attention.triton_ops import decode_attention as mod
    try:
        from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton
    except ImportError:
        get_num_kv_splits_triton = None
    return mod.decode_attention_fwd, get_num_kv_splits_triton


def prepare_sglang(wl, q, k, v, sm_scale: float, max_kv_splits: int = 8) -> Prepared:
    """SGLang's stock decode path (``TritonAttnBackend``): per-request page table, split-KV
    stage 1 + reduce stage 2, ``num_kv_splits`` from its own heuristic on this GPU's SM count,
    ``max_kv_splits`` = its default ``--triton-attention-num-kv-splits`` (8), PDL on sm90+."""
    decode_attention_fwd, get_splits = _import_sglang_decode()
    dev = q.device
    kv_indptr_np, kv_indices_np = flatten_requests(wl)
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    kv_indptr = torch.from_numpy(kv_indptr_np).to(dev)
    kv_indices = torch.from_numpy(kv_indices_np.astype(np.int64)).to(dev)  # int64 as stock
    seq_lens = (kv_indptr[1:] - kv_indptr[:-1]).to(torch.int32)
    attn_logits = torch.empty(B, Hq, max_kv_splits, D, dtype=torch.float32, device=dev)
    attn_lse = torch.empty(B, Hq, max_kv_splits, dtype=torch.float32, device=dev)
    num_kv_splits = torch.full((B,), max_kv_splits, dtype=torch.int32, device=dev)
    cuda = dev.type == "cuda"  # CPU only under TRITON_INTERPRET=1 (smoke test)
    sm_count = torch.cuda.get_device_properties(dev).multi_processor_count if cuda else 132
    if get_splits is not None:
        get_splits[(1,)](num_kv_splits, seq_lens, B, 1, Hq, Hkv, max_kv_splits, sm_count,
                         MAX_NUM_SEQ=max(256, 1 << (B - 1).bit_length()))
    use_pdl = cuda and torch.cuda.get_device_capability(dev)[0] >= 9
    o = torch.empty(B, Hq, D, dtype=q.dtype, device=dev)

    def run():
        decode_attention_fwd(q, k, v, o, kv_indptr, kv_indices, attn_logits, attn_lse,
                             num_kv_splits, max_kv_splits, sm_scale, 1.0, 1.0,
                             use_pdl=use_pdl)
        return o

    try:
        run()
        if cuda:
            torch.cuda.synchronize(dev)
    except Exception:
        if not use_pdl:
            raise
        use_pdl = False  # fall back to the non-PDL launch, recorded in info
        run()
    splits = num_kv_splits.cpu().numpy()
    return Prepared(run, lambda: o, dict(
        use_pdl=use_pdl, max_kv_splits=max_kv_splits, num_kv_splits_mean=float(splits.mean()),
        loaded_kv_tokens=int(kv_indptr_np[-1])))


# ------------------------------------------------------------------------------ FlashInfer
_WORKSPACE: dict = {}


def _workspace(dev, nbytes: int = 256 << 20) -> torch.Tensor:
    key = str(dev)
    if key not in _WORKSPACE:
        _WORKSPACE[key] = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    return _WORKSPACE[key]


def _paged(k, v):
    """[num_slots, Hkv, D] -> NHD paged view [num_pages, page_size=1, Hkv, D] (no copy)."""
    return k.unsqueeze(1), v.unsqueeze(1)


def prepare_flashinfer_decode(wl, q, k, v, sm_scale: float) -> Prepared:
    """``BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)``,
    page size 1, per-request page table; planned once outside the timing."""
    import flashinfer
    dev = q.device
    B, Hq, D = q.shape
    kv_indptr_np, kv_indices_np = flatten_requests(wl)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(dev), "NHD",
                                                            use_tensor_cores=True)
    wrapper.plan(torch.from_numpy(kv_indptr_np).to(dev), torch.from_numpy(kv_indices_np).to(dev),
                 torch.ones(B, dtype=torch.int32, device=dev), Hq, k.shape[1], D, 1,
                 q_data_type=q.dtype, kv_data_type=k.dtype, sm_scale=sm_scale)
    kv = _paged(k, v)
    o = torch.empty_like(q)

    def run():
        return wrapper.run(q, kv, out=o)

    run()
    return Prepared(run, lambda: o, dict(loaded_kv_tokens=int(kv_indptr_np[-1])))


def cascade_levels(wl) -> tuple[np.ndarray, list[dict]]:
    """Levels for ``MultiLevelCascadeAttentionWrapper`` from the tree.

    Queries are sorted by the pre-order rank of their node, so the queries below any node are
    contiguous.  Every query needs exactly L segments (L = the most non-empty nodes on any
    query's path), so nodes are cut into consecutive pieces, top-down: a node shared by the
    queries below it gets ``need - (deepest path below it)`` pieces (at least one), and the
    queries at a node take that node in as many pieces as levels remain.  Level i then groups the
    queries whose i-th segment is the same piece of the same node (read once per group, as the
    cascade intends).  A piece is empty only when a node has fewer tokens than pieces to fill
    (counted as ``empty``).  Returns (query order, per-level dicts of qo_indptr / kv_indptr /
    kv_indices / last_page_len as numpy int32).
    """
    parent, indptr, indices = wl.node_parent, wl.node_kv_indptr, wl.node_kv_indices
    tokens = np.diff(indptr)
    n = len(parent)
    children = [[] for _ in range(n)]
    for c in range(n):
        if parent[c] >= 0:
            children[parent[c]].append(c)
    rank, counter = np.zeros(n, np.int64), 0
    stack = [r for r in range(n - 1, -1, -1) if parent[r] < 0]
    while stack:
        node = stack.pop()
        rank[node] = counter
        counter += 1
        stack.extend(reversed(children[node]))
    eff = (tokens > 0).astype(np.int64)
    has_q = np.zeros(n, bool)
    has_q[wl.query_node] = True
    below = np.zeros(n, np.int64)  # most non-empty nodes strictly below n on a query's path
    for c in range(n - 1, -1, -1):
        if parent[c] >= 0 and has_q[c]:
            has_q[parent[c]] = True
            below[parent[c]] = max(below[parent[c]], eff[c] + below[c])
    num_levels = int(max(max(((eff[r] + below[r]) for r in range(n) if parent[r] < 0 and has_q[r]),
                             default=1), 1))
    need = np.zeros(n, np.int64)
    pieces = np.zeros(n, np.int64)
    for m in range(n):
        need[m] = num_levels if parent[m] < 0 else need[parent[m]] - pieces[parent[m]]
        pieces[m] = min(max(need[m] - below[m], 1), tokens[m]) if eff[m] else 0

    def cut(m, k, count):
        lo, hi = indptr[m], indptr[m + 1]
        return indices[lo + (hi - lo) * k // count: lo + (hi - lo) * (k + 1) // count]

    order = np.argsort(rank[wl.query_node], kind="stable")
    paths = node_paths(parent)
    levels = [dict(keys=[], qo=[0], kv=[0], idx=[], empty=0) for _ in range(num_levels)]
    for qi in order:
        node = int(wl.query_node[qi])
        segs = [((m, "shared", k), cut(m, k, pieces[m]))
                for m in paths[node][:-1] for k in range(pieces[m])]
        segs += [((node, "own", k), cut(node, k, need[node])) for k in range(need[node])]
        assert len(segs) == num_levels, (len(segs), num_levels)
        for lvl, (key, seg) in enumerate(segs):
            L = levels[lvl]
            if L["keys"] and L["keys"][-1] == key:
                L["qo"][-1] += 1
                continue
            L["keys"].append(key)
            L["qo"].append(L["qo"][-1] + 1)
            L["idx"].append(seg)
            L["kv"].append(L["kv"][-1] + len(seg))
            L["empty"] += int(len(seg) == 0)
    out = []
    for L in levels:
        kv_len = np.diff(L["kv"])
        out.append(dict(qo_indptr=np.asarray(L["qo"], np.int32),
                        kv_indptr=np.asarray(L["kv"], np.int32),
                        kv_indices=(np.concatenate(L["idx"]) if L["idx"] else
                                    np.zeros(0, np.int32)).astype(np.int32),
                        last_page_len=(kv_len > 0).astype(np.int32), empty=L["empty"]))
    return order, out


def prepare_flashinfer_cascade(wl, q, k, v, sm_scale: float) -> Prepared:
    """``MultiLevelCascadeAttentionWrapper(L, workspace, "NHD")`` with levels from the tree
    (see :func:`cascade_levels`).  Queries are permuted into the level order outside the timing;
    ``output()`` permutes back."""
    import flashinfer
    dev = q.device
    B, Hq, D = q.shape
    order, levels = cascade_levels(wl)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(len(levels), _workspace(dev), "NHD")
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    wrapper.plan([t(L["qo_indptr"]) for L in levels], [t(L["kv_indptr"]) for L in levels],
                 [t(L["kv_indices"]) for L in levels], [t(L["last_page_len"]) for L in levels],
                 Hq, k.shape[1], D, 1, sm_scale=sm_scale, q_data_type=q.dtype,
                 kv_data_type=k.dtype)
    order_t = torch.from_numpy(order).to(dev)
    q_sorted = q[order_t].contiguous()
    kv = _paged(k, v)
    result = {}

    def run():
        result["o"] = wrapper.run(q_sorted, kv)
        return result["o"]

    def output():
        o = torch.empty_like(result["o"])
        o[order_t] = result["o"]
        return o

    run()
    return Prepared(run, output, dict(
        levels=len(levels), groups=[len(L["qo_indptr"]) - 1 for L in levels],
        empty_segments=sum(L["empty"] for L in levels),
        loaded_kv_tokens=int(sum(L["kv_indptr"][-1] for L in levels))))


# ------------------------------------------------------------------------------- reference
def reference_sample(wl, q, k, v, sm_scale: float, max_queries: int = 48,
                     seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Float64 reference for up to ``max_queries`` sampled queries (all when fewer)."""
    from harness import import_deft
    attention_with_lse = import_deft().attention_with_lse
    B = q.shape[0]
    rng = np.random.default_rng(seed)
    sample = np.arange(B) if B <= max_queries else np.sort(
        rng.choice(B, max_queries, replace=False))
    paths = node_paths(wl.node_parent)
    indptr, indices = wl.node_kv_indptr, wl.node_kv_indices
    outs = []
    for b in sample:
        slots = np.concatenate([indices[indptr[m]:indptr[m + 1]]
                                for m in paths[int(wl.query_node[b])]])
        slots = torch.from_numpy(slots.astype(np.int64)).to(q.device)
        o, _ = attention_with_lse(q[b], k[slots], v[slots], sm_scale)
        outs.append(o)
    return sample, torch.stack(outs)


def prepare_reference_full(wl, q, k, v, sm_scale: float) -> Prepared:
    """The package's ``tree_attention_reference`` over every query (small cases only)."""
    from harness import import_deft
    tree_attention_reference = import_deft().tree_attention_reference
    args = [torch.from_numpy(a) for a in (wl.node_parent, wl.node_kv_indptr,
                                          wl.node_kv_indices, wl.query_node)]
    result = {}

    def run():
        result["o"] = tree_attention_reference(q, k, v, *args, sm_scale=sm_scale)
        return result["o"]

    run()
    return Prepared(run, lambda: result["o"])


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.double() - ref.double()).abs()
    if not torch.isfinite(diff).all():
        return math.inf
    return float(diff.max()) if diff.numel() else 0.0


def sm_scale_for(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
