"""Public entry points: ``plan_tree_attention`` (plan once per step) and ``tree_attention``."""
from __future__ import annotations

import numpy as np
import torch

from . import native as native_core
from .plan_step import plan_step_native
from .planner import PlannerConfig, TreeAttentionPlan, build_plan
from .short_tails import take_short_tails
from .tree import as_int_array, build_layout, validate_tree

DEFAULT_CONFIG = PlannerConfig()


def plan_tree_attention(node_parent, node_kv_indptr, node_kv_indices, query_node, *,
                        num_qo_heads: int, num_kv_heads: int, head_dim: int,
                        device=None, validate: bool = True, num_slots: int | None = None,
                        kv_elem_bytes: int = 2, config: PlannerConfig | None = None,
                        tail_slack: int = 0) -> TreeAttentionPlan:
    """Plan DeFT decode attention over a KV forest (once per decode step).

    Parameters
    ----------
    node_parent : int32 [N]; -1 for a root, a parent's index smaller than its child's.
    node_kv_indptr : int32 [N+1]; node n owns ``node_kv_indices[indptr[n]:indptr[n+1]]``.
    node_kv_indices : int32 [total]; KV-pool slots, in position order within each node.
    query_node : int32 [B]; query b attends to ``query_node[b]`` and all its ancestors.
        The four may be tensors (any device), numpy arrays or lists; planning runs on the host.
    num_qo_heads, num_kv_heads, head_dim : the attention shape (``Hq % Hkv == 0``).
    device : where the plan's metadata lives and ``run`` executes (default: the device of
        ``node_kv_indices`` if it is a tensor, else CUDA when available, else CPU).
    validate : check the tree (cheap; pass False on a hot path whose trees are known good).
        Without validation a ``node_kv_indices`` tensor is used where it lies (no host copy);
        host arrays planned by the C core still get its shape check (parents, indptr, query
        nodes), only the slots' range check is skipped.
    num_slots : KV-pool size; when given, slot indices are range-checked.
    kv_elem_bytes : bytes per KV element, for the cost model (2 for fp16/bf16).
    config : planner tuning, :class:`PlannerConfig`.
    tail_slack : when > 0 and every query sits alone on a leaf with KV (a decode batch's private
        tails), leave this many free index slots after each tail so that ``plan.extend_tails``
        can advance the plan to the next decode steps on the device (``plan.tails`` is None
        when the tree does not qualify).

    Returns
    -------
    TreeAttentionPlan with ``run(q, k_cache, v_cache, sm_scale=None)`` and ``stats()``.
    """
    _check_heads(num_qo_heads, num_kv_heads, head_dim)
    if int(tail_slack) != tail_slack or tail_slack < 0:
        raise ValueError(f"tail_slack must be a non-negative integer, got {tail_slack!r}")
    if device is None:
        device = (node_kv_indices.device if isinstance(node_kv_indices, torch.Tensor)
                  else torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    config = config or DEFAULT_CONFIG  # building one costs ~3 µs, a few % of a plan
    heads = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                 device=device, config=config, kv_elem_bytes=kv_elem_bytes)
    if (config.native and not tail_slack and native_core.library() is not None
            and (validate or not isinstance(node_kv_indices, torch.Tensor))):
        plan = _plan_in_one_call(node_parent, node_kv_indptr, node_kv_indices, query_node,
                                 num_slots, validate, heads)
        if plan is not None:
            return plan
    if validate:
        arrays = validate_tree(node_parent, node_kv_indptr, node_kv_indices, query_node, num_slots,
                               native=config.native)
    else:
        arrays = [np.asarray(a.detach().cpu()) if isinstance(a, torch.Tensor) else np.asarray(a)
                  for a in (node_parent, node_kv_indptr, query_node)]
        # Unvalidated device indices are used in place: no device-to-host copy, no sync.
        kv_indices = (node_kv_indices if isinstance(node_kv_indices, torch.Tensor)
                      else np.asarray(node_kv_indices))
        arrays = [arrays[0].astype(np.int64), arrays[1].astype(np.int64), kv_indices,
                  arrays[2].astype(np.int64)]
    tails = (take_short_tails(*arrays, config.short_tail_bound, native=config.native)
             if config.short_tail_bound and not tail_slack else None)
    if tails is not None:  # the merge or packs attend them (kernels.short_tails)
        arrays = [arrays[0], tails.kv_indptr, tails.kv_indices, arrays[3]]
    # (tails longer than the merge's bound are taken only when the config packs them)
    packed = tails is not None and tails.longest > config.merge_tail_tokens
    layout = build_layout(*arrays, native=config.native)
    return build_plan(layout, **heads, tail_slack=int(tail_slack), short_tails=tails,
                      pack_tails=packed)


def _plan_in_one_call(node_parent, node_kv_indptr, node_kv_indices, query_node, num_slots,
                      validate: bool, heads: dict):
    """The plan from the C core's one call (``plan_step.plan_step_native``), or None where the
    step-by-step path must plan (the arrays' lengths disagree: it names the fault)."""
    parent = as_int_array("node_parent", node_parent)
    kv_indptr = as_int_array("node_kv_indptr", node_kv_indptr)
    if kv_indptr.shape[0] != parent.shape[0] + 1:
        return None
    kv_indices = as_int_array("node_kv_indices", node_kv_indices, keep_int32=True)
    query_node = as_int_array("query_node", query_node)
    plan = plan_step_native(parent, kv_indptr, kv_indices, query_node, num_slots=num_slots,
                            validate=validate, **heads)
    if isinstance(plan, int):  # a failed contract check: numpy names the offending value
        validate_tree(parent, kv_indptr, kv_indices, query_node, num_slots if validate else None)
        raise ValueError(f"the KV forest fails the kernel contract (check {plan})")
    return plan


def _check_heads(num_qo_heads: int, num_kv_heads: int, head_dim: int) -> None:
    if num_kv_heads < 1 or num_qo_heads < 1 or num_qo_heads % num_kv_heads:
        raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of "
                         f"num_kv_heads ({num_kv_heads})")
    if head_dim % 16 or not 16 <= head_dim <= 256:
        raise ValueError(f"head_dim must be a multiple of 16 in [16, 256], got {head_dim}")


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, node_parent,
                   node_kv_indptr, node_kv_indices, query_node, sm_scale=None) -> torch.Tensor:
    """DeFT decode attention of each query over its root-to-node KV (plan + one run).

    Parameters
    ----------
    q : [B, Hq, D] fp16 / bf16 / fp32.
    k_cache, v_cache : [num_slots, Hkv, D], q's dtype and device.
    node_parent, node_kv_indptr, node_kv_indices, query_node : the tree, as in
        :func:`plan_tree_attention`.
    sm_scale : softmax scale, default ``1/sqrt(D)``.

    Returns
    -------
    [B, Hq, D] in q's dtype: softmax attention over each query's path KV (zeros for an empty path).
    """
    if q.dim() != 3 or k_cache.dim() != 3:
        raise ValueError("q must be [B, Hq, D] and k_cache/v_cache [num_slots, Hkv, D]")
    if len(query_node) != q.shape[0]:
        raise ValueError(f"query_node has {len(query_node)} entries but q has {q.shape[0]} rows")
    plan = plan_tree_attention(node_parent, node_kv_indptr, node_kv_indices, query_node,
                               num_qo_heads=q.shape[1], num_kv_heads=k_cache.shape[1],
                               head_dim=q.shape[2], device=q.device, num_slots=k_cache.shape[0],
                               kv_elem_bytes=k_cache.element_size())
    return plan.run(q, k_cache, v_cache, sm_scale)
