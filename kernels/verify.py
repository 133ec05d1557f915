"""Tree verification (speculative decoding): DeFT over a committed prefix plus a draft tree.

A verify step scores ``T`` draft tokens per request in one forward.  Draft token ``i`` of request
``r`` attends to the request's committed KV (a path of a KV forest, shared with other requests
where the radix tree shares it) and to the draft tokens its tree mask allows (its ancestors and
itself).  The contract's node form expresses this exactly (each draft token a one-token node,
:func:`kernels.spec.draft_tree_as_nodes`), but an engine knows the draft tree's shape only on the
device, after the draft model ran.  This module therefore splits the attention in two parts that
are merged per query by log-sum-exp:

* the **prefix part**: an ordinary DeFT plan whose ``T`` queries per request sit at the request's
  prefix node (:func:`plan_tree_verify`): the host knows it before the draft exists, and every
  shared KV byte is read once for all draft tokens of all requests below it;
* the **draft part**: one small masked attention per request and KV head over its ``T`` draft
  tokens (:func:`launch_draft_attention`), reading the mask from device memory.  Its output is
  the extra partial the merge folds into each query (``launch_merge(..., extra=...)``).

Shapes and strides (draft part)::

    q            [R*T, Hq, D]       query r*T + i is draft token i of request r; unit stride on D
    k_cache      [num_slots, Hkv, D] likewise v_cache
    draft_slots  int [R*T]          KV slot of each draft token (written before the call)
    draft_mask   bool/uint8, flat   entry (r, i, j) at mask_offsets[r] + i*mask_strides[r] + j:
                                    may draft token i of request r attend to draft token j?
    mask_offsets, mask_strides  int64 [R]
    extra_out    [R*T, Hq, D]       normalised draft-part output (q's dtype, fp32 for fp32 q)
    extra_lse    fp32 [R*T, Hq]     its log2-sum-exp of scaled scores (-inf: nothing allowed)

SGLang's FULL_MASK layout (rows of ``seq_len + T`` per request, requests back to back) is
``mask_offsets[r] = sum_{r'<r} T*(seq_len[r'] + T) + seq_len[r]`` and ``mask_strides[r] =
seq_len[r] + T``; a dense ``[R, T, T]`` mask is ``offsets = r*T*T``, ``strides = T``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl

from .api import plan_tree_attention
from .partial_attention import LOG2E, interpreter_active, online_softmax_block
from .planner import TreeAttentionPlan


@triton.jit
def _draft_attention_kernel(
    q_ptr, k_ptr, v_ptr, draft_slots_ptr, mask_ptr, mask_offsets_ptr, mask_strides_ptr,
    out_ptr, lse_ptr, draft_len,
    stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_ob, stride_oh,
    stride_lb, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr,
):
    request = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    # Rows pack the GROUP query heads of this KV head for every draft token (as in phase 1).
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < draft_len * GROUP
    token = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    query = request * draft_len + token
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(q_ptr + query[:, None] * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    mask_base = tl.load(mask_offsets_ptr + request).to(tl.int64)
    mask_stride = tl.load(mask_strides_ptr + request).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for kv_start in range(0, draft_len, BLOCK_N):
        cols = kv_start + offs_n
        mask_n = cols < draft_len
        slots = tl.load(draft_slots_ptr + request * draft_len + cols, mask=mask_n,
                        other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + slots[:, None] * stride_kn + kv_head * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + slots[:, None] * stride_vn + kv_head * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        allowed = tl.load(mask_ptr + mask_base + token[:, None] * mask_stride + cols[None, :],
                          mask=mask_m[:, None] & mask_n[None, :], other=0) != 0
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        # a tree-mask row may allow nothing in a block (or at all): MAY_BE_EMPTY
        m_i, l_i, acc = online_softmax_block(q, k, v, allowed, m_i, l_i, acc, qk_scale_log2,
                                             IEEE_FP32, True)
    l_safe = tl.where(l_i > 0, l_i, 1.0)  # a row with nothing allowed: zeros, LSE -inf
    out = acc / l_safe[:, None]
    lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), -float("inf"))
    tl.store(out_ptr + query[:, None] * stride_ob + head[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(lse_ptr + query * stride_lb + head, lse, mask=mask_m)


def _draft_tiles(rows: int, head_dim: int) -> tuple[int, int]:
    block_m = 16 if rows <= 16 else (32 if rows <= 32 else 64)
    return block_m, (64 if head_dim <= 128 else 32)


def launch_draft_attention(q, k_cache, v_cache, draft_slots, draft_mask, mask_offsets,
                           mask_strides, draft_len: int, extra_out, extra_lse, sm_scale: float):
    """The draft part (see the module docstring) into ``extra_out``/``extra_lse``; no host sync,
    grid fixed by shapes (CUDA-graph safe).  ``draft_mask`` may be bool (viewed as uint8)."""
    num_queries, num_qo_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if num_queries == 0:
        return
    num_requests = num_queries // draft_len
    group = num_qo_heads // num_kv_heads
    mask = draft_mask.view(torch.uint8) if draft_mask.dtype == torch.bool else draft_mask
    block_m, block_n = _draft_tiles(draft_len * group, head_dim)
    interpret = interpreter_active()
    grid = (num_requests, num_kv_heads, triton.cdiv(draft_len * group, block_m))
    _draft_attention_kernel[grid](
        q, k_cache, v_cache, draft_slots, mask, mask_offsets, mask_strides, extra_out, extra_lse,
        draft_len, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), extra_out.stride(0), extra_out.stride(1),
        extra_lse.stride(0), sm_scale * LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), GROUP=group,
        BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_FP32=interpret and q.dtype != torch.float16,
        IEEE_FP32=q.dtype == torch.float32 or (interpret and q.dtype == torch.bfloat16),
        num_warps=4,
    )


def dense_mask_layout(num_requests: int, draft_len: int, device) -> tuple[torch.Tensor, ...]:
    """``(mask_offsets, mask_strides)`` of a dense ``[R, T, T]`` draft mask."""
    offsets = torch.arange(num_requests, dtype=torch.int64, device=device) * draft_len * draft_len
    return offsets, torch.full((num_requests,), draft_len, dtype=torch.int64, device=device)


def full_mask_layout(seq_lens: torch.Tensor, draft_len: int) -> tuple[torch.Tensor, ...]:
    """``(mask_offsets, mask_strides)`` of SGLang's FULL_MASK verify mask (device ops only).

    seq_lens : int [R], the committed lengths (without the draft tokens).
    """
    strides = seq_lens.to(torch.int64) + draft_len
    rows = strides * draft_len
    offsets = torch.cumsum(rows, 0) - rows + seq_lens.to(torch.int64)
    return offsets, strides


@dataclass
class TreeVerifyPlan:
    """A verify step's plan: the prefix part's DeFT plan and the draft geometry.

    Build it with :func:`plan_tree_verify`; ``run`` once per layer.
    """

    prefix: TreeAttentionPlan
    num_requests: int
    draft_len: int
    _buffers: dict = field(default_factory=dict)

    def stats(self) -> dict:
        """The prefix plan's ``stats()`` (KV token counts cover the committed forest only; the
        draft part reads ``draft_len`` more tokens per request) plus ``draft_len``."""
        return dict(self.prefix.stats(), draft_len=self.draft_len)

    def _extra(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (q.dtype, q.shape)
        if key not in self._buffers:
            dtype = torch.float32 if self.prefix.config.fp32_partials else q.dtype
            self._buffers[key] = (torch.empty(q.shape, dtype=dtype, device=q.device),
                                  torch.empty(q.shape[:2], dtype=torch.float32, device=q.device))
        return self._buffers[key]

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            draft_slots: torch.Tensor, draft_mask: torch.Tensor,
            mask_offsets: torch.Tensor | None = None, mask_strides: torch.Tensor | None = None,
            sm_scale: float | None = None, out: torch.Tensor | None = None,
            check: bool = True) -> torch.Tensor:
        """Verify attention of every draft token; see :func:`tree_verify_attention`.

        ``mask_offsets``/``mask_strides`` (int64 [R], on q's device) locate each request's rows
        in a flat ``draft_mask`` (default: dense ``[R, T, T]``); they are not range-checked
        (that would need a device sync), so they must stay inside ``draft_mask``.
        """
        if check:
            _check_draft(self, q, draft_slots, draft_mask, mask_offsets, mask_strides)
        sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
        if mask_offsets is None:  # a dense [R, T, T] mask: its layout, made once per plan
            key = ("dense", q.device)
            if key not in self._buffers:
                self._buffers[key] = dense_mask_layout(self.num_requests, self.draft_len,
                                                       q.device)
            mask_offsets, mask_strides = self._buffers[key]
        extra = self._extra(q)
        launch_draft_attention(q, k_cache, v_cache, draft_slots, draft_mask, mask_offsets,
                               mask_strides, self.draft_len, *extra, sm_scale)
        return self.prefix.run(q, k_cache, v_cache, sm_scale, out, check, extra=extra)


def _check_draft(plan: TreeVerifyPlan, q, draft_slots, draft_mask, mask_offsets, mask_strides):
    queries = plan.num_requests * plan.draft_len
    if q.dim() != 3 or q.shape[0] != queries:
        raise ValueError(f"q must have shape [{queries}, Hq, D] (R*T rows), got {tuple(q.shape)}")
    if draft_slots.dim() != 1 or draft_slots.shape[0] != queries or draft_slots.is_floating_point():
        raise ValueError(f"draft_slots must be an integer tensor of shape [{queries}]")
    if draft_mask.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int32):
        raise ValueError(f"draft_mask must be bool or an integer type, got {draft_mask.dtype}")
    if (mask_offsets is None) != (mask_strides is None):
        raise ValueError("mask_offsets and mask_strides go together (or both None)")
    if mask_offsets is None and draft_mask.numel() != plan.num_requests * plan.draft_len ** 2:
        raise ValueError(f"a dense draft_mask must hold R*T*T = "
                         f"{plan.num_requests * plan.draft_len ** 2} entries, got "
                         f"{draft_mask.numel()}")
    for name, tensor in (("draft_slots", draft_slots), ("draft_mask", draft_mask),
                         ("mask_offsets", mask_offsets), ("mask_strides", mask_strides)):
        if tensor is not None and tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device}, q on {q.device}")


def plan_tree_verify(node_parent, node_kv_indptr, node_kv_indices, request_node, *,
                     draft_len: int, **plan_kwargs) -> TreeVerifyPlan:
    """Plan a verify step: ``R`` requests of ``draft_len`` draft tokens each.

    Parameters
    ----------
    node_parent, node_kv_indptr, node_kv_indices : the committed KV forest (as for
        :func:`plan_tree_attention`); draft tokens are not part of it.
    request_node : int [R]; request r's committed KV is ``request_node[r]`` and its ancestors.
    draft_len : T >= 1, draft tokens per request (queries ``r*T .. r*T+T-1``).
    plan_kwargs : ``num_qo_heads``, ``num_kv_heads``, ``head_dim`` and the other keyword
        arguments of :func:`plan_tree_attention` (no ``tail_slack``).

    Returns
    -------
    TreeVerifyPlan; ``stats()`` counts the prefix part (each shared KV token once per KV head).
    """
    if int(draft_len) != draft_len or draft_len < 1:
        raise ValueError(f"draft_len must be a positive integer, got {draft_len!r}")
    if plan_kwargs.get("tail_slack"):
        raise ValueError("tail_slack does not apply to verify plans")
    request_node = np.asarray(request_node.detach().cpu() if isinstance(request_node, torch.Tensor)
                              else request_node, dtype=np.int64).reshape(-1)
    query_node = np.repeat(request_node, int(draft_len))
    prefix = plan_tree_attention(node_parent, node_kv_indptr, node_kv_indices, query_node,
                                 **plan_kwargs)
    return TreeVerifyPlan(prefix, int(request_node.shape[0]), int(draft_len))


def tree_verify_attention(q, k_cache, v_cache, node_parent, node_kv_indptr, node_kv_indices,
                          request_node, draft_slots, draft_mask, sm_scale=None) -> torch.Tensor:
    """Verify attention in one call (plans and runs; engines plan once per step instead).

    Parameters
    ----------
    q : [R*T, Hq, D] fp16/bf16/fp32; query r*T + i is draft token i of request r.
    k_cache, v_cache : [num_slots, Hkv, D]; the draft tokens' K/V already at ``draft_slots``.
    node_parent, node_kv_indptr, node_kv_indices, request_node : see :func:`plan_tree_verify`.
    draft_slots : int [R*T] on q's device.
    draft_mask : bool [R, T, T]; ``draft_mask[r, i, j]``: token i may attend to token j (its
        ancestors and itself, in a token tree).
    sm_scale : softmax scale, default ``1/sqrt(D)``.

    Returns
    -------
    [R*T, Hq, D] in q's dtype: for each draft token, softmax attention over its request's
    committed KV followed by the draft tokens its mask row allows.
    """
    if draft_mask.dim() != 3 or draft_mask.shape[1] != draft_mask.shape[2]:
        raise ValueError(f"draft_mask must be [R, T, T], got {tuple(draft_mask.shape)}")
    num_requests, draft_len = draft_mask.shape[0], draft_mask.shape[1]
    plan = plan_tree_verify(node_parent, node_kv_indptr, node_kv_indices, request_node,
                            draft_len=draft_len, num_qo_heads=q.shape[1],
                            num_kv_heads=k_cache.shape[1], head_dim=q.shape[2], device=q.device)
    if plan.num_requests != num_requests:
        raise ValueError(f"request_node has {plan.num_requests} requests, draft_mask "
                         f"{num_requests}")
    return plan.run(q, k_cache, v_cache, draft_slots, draft_mask.contiguous(), sm_scale=sm_scale)
