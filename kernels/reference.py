"""Pure-PyTorch references for the DeFT kernels.  Slow and simple on purpose: tests and
benchmarks import these as the oracle, nothing re-defines them."""
from __future__ import annotations

import math

import numpy as np
import torch

from .tree import validate_tree


def path_kv_slots(node_parent, node_kv_indptr, node_kv_indices, node: int) -> torch.Tensor:
    """KV slots of ``node`` and its ancestors, root first, in position order.  int64 [L]."""
    parent, indptr, indices, _ = validate_tree(node_parent, node_kv_indptr, node_kv_indices, [])
    return _path_slots(parent, indptr, indices, node)


def _path_slots(parent: np.ndarray, indptr: np.ndarray, indices: np.ndarray, node: int):
    chain = []
    while node >= 0:
        chain.append(node)
        node = int(parent[node])
    pieces = [indices[indptr[n]:indptr[n + 1]] for n in reversed(chain)]
    return torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, np.int64))


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float):
    """Softmax attention of one query over L keys, computed in float64.

    Parameters
    ----------
    q : [Hq, D]; k, v : [L, Hkv, D] with Hq % Hkv == 0.

    Returns
    -------
    out : float64 [Hq, D] (zeros when L == 0); lse : float64 [Hq], natural log (-inf when L == 0).
    """
    num_qo_heads, head_dim = q.shape
    if k.shape[0] == 0:
        return (torch.zeros(num_qo_heads, head_dim, dtype=torch.float64, device=q.device),
                torch.full((num_qo_heads,), -math.inf, dtype=torch.float64, device=q.device))
    group = num_qo_heads // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)  # [L, Hq, D]
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("hd,lhd->hl", q.double(), k) * sm_scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("hl,lhd->hd", torch.exp(scores - lse[:, None]), v)
    return out, lse


def tree_attention_reference(q, k_cache, v_cache, node_parent, node_kv_indptr, node_kv_indices,
                             query_node, sm_scale=None) -> torch.Tensor:
    """Plain attention of each query over the concatenation of its root-to-node KV.

    Same signature and result contract as :func:`deft_sglang.kernels.tree_attention`; computed
    per query in float64 and returned in ``q.dtype``.  A query whose path holds no token gets zeros.
    """
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    parent, indptr, indices, qnode = validate_tree(
        node_parent, node_kv_indptr, node_kv_indices, query_node)
    out = torch.empty_like(q)
    for node in np.unique(qnode):
        slots = _path_slots(parent, indptr, indices, int(node)).to(k_cache.device)
        k, v = k_cache[slots], v_cache[slots]
        for b in np.nonzero(qnode == node)[0]:
            o, _ = attention_with_lse(q[b], k, v, sm_scale)
            out[b] = o.to(q.dtype)
    return out


def merge_states_reference(o_a, lse_a, o_b, lse_b):
    """Merge two attention partials by log-sum-exp (natural log), in float64.

    o_* : [..., D], lse_* : [...].  Returns (o, lse) of attention over the union of both key sets.
    """
    lse = torch.logaddexp(lse_a.double(), lse_b.double())
    w_a = torch.exp(lse_a.double() - lse).nan_to_num(0.0)
    w_b = torch.exp(lse_b.double() - lse).nan_to_num(0.0)
    return o_a.double() * w_a[..., None] + o_b.double() * w_b[..., None], lse


def tree_verify_reference(q, k_cache, v_cache, node_parent, node_kv_indptr, node_kv_indices,
                          request_node, draft_slots, draft_mask, sm_scale=None) -> torch.Tensor:
    """Verify attention, per query in float64: draft token i of request r (row ``r*T + i``)
    attends to the KV of ``request_node[r]``'s path, then to draft tokens j with
    ``draft_mask[r, i, j]`` (bool [R, T, T]).  Same contract as
    :func:`deft_sglang.kernels.verify.tree_verify_attention`."""
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    parent, indptr, indices, nodes = validate_tree(
        node_parent, node_kv_indptr, node_kv_indices, request_node)
    num_requests, draft_len = draft_mask.shape[0], draft_mask.shape[1]
    slots = torch.as_tensor(draft_slots).reshape(num_requests, draft_len).to(k_cache.device)
    out = torch.empty_like(q)
    for r in range(num_requests):
        prefix = _path_slots(parent, indptr, indices, int(nodes[r])).to(k_cache.device)
        for i in range(draft_len):
            keys = torch.cat([prefix, slots[r][draft_mask[r, i].to(k_cache.device)]])
            o, _ = attention_with_lse(q[r * draft_len + i], k_cache[keys], v_cache[keys],
                                      sm_scale)
            out[r * draft_len + i] = o.to(q.dtype)
    return out
