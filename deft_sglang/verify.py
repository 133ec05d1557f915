"""DeFT for SGLang's speculative target-verify forwards (EAGLE / EAGLE3 / STANDALONE trees).

A target-verify forward scores ``T = draft_token_num`` draft tokens per request: each attends to
its request's committed KV (``req_to_token[row, :seq_len]``, shared through the RadixCache like a
decode batch's) and to its ancestors in the draft tree, given by the verify input's
``custom_mask``. SGLang's Triton path reads every request's prefix once per query tile and q
head; DeFT reads each shared prefix byte once per KV head (``kernels.verify``):

* per step (host): the batch's forest as for decode, with ``min_tail=0`` (committed lengths),
  planned with ``T`` queries per request (:func:`~deft_sglang.kernels.plan_tree_verify`). The
  draft tree's shape is never needed on the host: SGLang fills the mask on the device after the
  draft model ran (possibly after this plan was made, on its plan stream);
* per layer (device): the draft part reads the mask where SGLang wrote it (FULL_MASK rows of
  ``seq_len + T`` or QLEN_ONLY rows of ``T``) and is merged into the prefix part by LSE.

CUDA graphs: the graph runner captures verify graphs like decode graphs; :class:`VerifyBuffers`
holds the fixed draft-part buffers, and the mask is the inner backend's preallocated
``verify_mask`` buffer (which SGLang's draft step writes in place).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .kernels.verify import dense_mask_layout, full_mask_layout, launch_draft_attention

FULL_MASK, QLEN_ONLY = 0, 1  # sglang.srt.speculative.eagle_utils.TreeMaskMode values


@dataclass
class DraftMask:
    """Where a verify step's draft-tree mask lives (see ``kernels.verify``)."""

    mask: torch.Tensor          # bool, flat
    offsets: torch.Tensor       # int64 [R]
    strides: torch.Tensor       # int64 [R]
    draft_len: int


def mask_mode(inner) -> Optional[int]:
    """The tree-mask layout SGLang builds for ``inner`` (FULL_MASK unless its preallocated
    verify mask says otherwise); None for a layout DeFT does not read (bit-packed)."""
    verify_mask = getattr(inner, "verify_mask", None)
    mode = FULL_MASK if verify_mask is None else int(verify_mask.mode)
    return mode if mode in (FULL_MASK, QLEN_ONLY) else None


def verify_input(forward_batch):
    """``(spec_info, draft_len)`` of a target-verify batch DeFT can serve, else None."""
    spec = getattr(forward_batch, "spec_info", None)
    if type(spec).__name__ != "EagleVerifyInput" or getattr(spec, "custom_mask", None) is None:
        return None
    draft_len = getattr(spec, "draft_token_num", None)
    if not draft_len or forward_batch.input_ids is None:
        return None
    if forward_batch.input_ids.shape[0] != forward_batch.batch_size * int(draft_len):
        return None  # ragged verify: requests with different draft counts
    return spec, int(draft_len)


def layout(mode: int, seq_lens: torch.Tensor, draft_len: int, out_offsets=None,
           out_strides=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets, strides) of request rows in the mask (device ops; written into the fixed
    ``out_*`` buffers when given, for CUDA graphs)."""
    if mode == FULL_MASK:
        offsets, strides = full_mask_layout(seq_lens, draft_len)
    else:
        offsets, strides = dense_mask_layout(seq_lens.shape[0], draft_len, seq_lens.device)
    if out_offsets is None:
        return offsets, strides
    out_offsets[:offsets.shape[0]].copy_(offsets)
    out_strides[:strides.shape[0]].copy_(strides)
    return out_offsets, out_strides


def draft_mask(forward_batch, inner) -> Optional[DraftMask]:
    """The eager step's :class:`DraftMask`, or None when DeFT cannot read this batch's mask."""
    found, mode = verify_input(forward_batch), mask_mode(inner)
    if found is None or mode is None:
        return None
    spec, draft_len = found
    bs = forward_batch.batch_size
    offsets, strides = layout(mode, forward_batch.seq_lens[:bs], draft_len)
    return DraftMask(spec.custom_mask, offsets, strides, draft_len)


class VerifyBuffers:
    """Fixed draft-part buffers of the verify CUDA graphs (sized at ``init_cuda_graph_state``).

    Parameters
    ----------
    max_bs : largest captured batch (requests); max_tokens : its draft tokens (``max_bs * T``).
    """

    def __init__(self, *, max_bs: int, max_tokens: int, q_heads: int, head_dim: int,
                 dtype: torch.dtype, device, mask_mode_: int):
        if max_bs < 1 or max_tokens % max_bs:
            raise ValueError(f"verify graphs need max_tokens ({max_tokens}) = max_bs ({max_bs}) "
                             "x draft tokens")
        self.draft_len = max_tokens // max_bs
        self.mode = mask_mode_
        self.extra_out = torch.zeros(max_tokens, q_heads, head_dim, dtype=dtype, device=device)
        self.extra_lse = torch.zeros(max_tokens, q_heads, dtype=torch.float32, device=device)
        self.offsets = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.strides = torch.zeros(max_bs, dtype=torch.int64, device=device)

    def load(self, view) -> None:
        """Before a capture or replay: the mask rows of the (padded) view's requests."""
        bs = view.seq_lens.shape[0]
        layout(self.mode, view.seq_lens, self.draft_len, self.offsets[:bs], self.strides[:bs])

    def run_draft(self, q3, k_cache, v_cache, draft_slots, mask, sm_scale):
        """The draft part of a graph-replayed layer; returns the extra partial for the merge."""
        rows = q3.shape[0]
        extra = (self.extra_out[:rows], self.extra_lse[:rows])
        bs = rows // self.draft_len
        launch_draft_attention(q3, k_cache, v_cache, draft_slots, mask, self.offsets[:bs],
                               self.strides[:bs], self.draft_len, *extra, sm_scale)
        return extra


def create_verify_buffers(backend, max_bs: int, max_tokens: int) -> Optional[VerifyBuffers]:
    """Verify-graph buffers when ``backend`` serves target verify in graphs, else None."""
    inner_mask, mode = getattr(backend.inner, "verify_mask", None), mask_mode(backend.inner)
    if max_tokens <= max_bs or inner_mask is None or mode is None:
        return None  # decode graphs, or no fixed mask buffer to read inside a graph
    dtype = getattr(backend.model_runner, "dtype", None) or backend.token_to_kv_pool.dtype
    return VerifyBuffers(max_bs=max_bs, max_tokens=max_tokens, q_heads=backend.q_heads,
                         head_dim=backend.head_dim, dtype=dtype, device=backend.device,
                         mask_mode_=mode)
