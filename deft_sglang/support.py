"""Which SGLang configurations DeFT decodes, and which fall back to the stock backend.

Model-level checks run once when the backend is built (:func:`model_unsupported_reason`);
layer-level checks run per layer call (:func:`layer_unsupported_reason`, a few attribute reads).
Anything unsupported decodes with the stock backend, announced by one warning line per process.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

SUPPORTED_POOLS = ("MHATokenToKVPool",)
# Speculative algorithms whose target-verify forwards carry an EagleVerifyInput (tree mask).
VERIFY_ALGORITHMS = ("EAGLE", "EAGLE3", "STANDALONE")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _device_reason(model_runner) -> Optional[str]:
    device = str(getattr(model_runner, "device", "cuda"))
    if device.startswith("cuda"):
        return None
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None  # tests: Triton's interpreter
    return f"device {device!r} (DeFT's kernels need CUDA)"


def _attention_reason(model_runner) -> Optional[str]:
    model_config = getattr(model_runner, "model_config", None)
    if getattr(model_runner, "use_mla_backend", False):
        return "MLA attention"
    if getattr(model_config, "is_encoder_decoder", False):
        return "encoder-decoder (cross) attention"
    if getattr(model_runner, "sliding_window_size", None) is not None:
        return "sliding-window attention"
    head_dim = getattr(model_config, "head_dim", None)
    if head_dim is not None and (head_dim % 16 or not 16 <= head_dim <= 256):
        return f"head_dim {head_dim} (DeFT needs a multiple of 16 in [16, 256])"
    return None


def speculative_reason(server_args, is_draft_worker: bool = False) -> Optional[str]:
    """Why DeFT cannot serve this speculative-decoding setup (None: not speculative, or an
    algorithm whose target-verify forwards DeFT serves)."""
    spec = getattr(server_args, "speculative_algorithm", None)
    if spec in (None, "", "NONE"):
        return None
    spec = str(getattr(spec, "name", spec)).upper()
    if is_draft_worker:
        return f"the draft model of speculative decoding ({spec})"
    if spec not in VERIFY_ALGORITHMS:
        return f"speculative decoding ({spec}; DeFT verifies {', '.join(VERIFY_ALGORITHMS)})"
    from .config import get_config
    if not get_config().spec_verify:
        return f"speculative decoding ({spec}) with DEFT_SPEC_VERIFY=0"
    return None


def _serving_reason(model_runner) -> Optional[str]:
    server_args = getattr(model_runner, "server_args", None)
    reason = speculative_reason(server_args, bool(getattr(model_runner, "is_draft_worker", False)))
    if reason:
        return reason
    # Both split a decode batch into micro-batches (or attention streams) whose metadata SGLang
    # prepares apart from the batch DeFT planned; untested with DeFT's graph hand-off.
    if getattr(server_args, "enable_two_batch_overlap", False):
        return "two-batch overlap (--enable-two-batch-overlap)"
    if getattr(server_args, "enable_pdmux", False):
        return "PD multiplexing (--enable-pdmux)"
    try:
        from sglang.srt.runtime_context import get_parallel
        if get_parallel().attn_dcp_size > 1:
            return "decode context parallelism"
    except Exception:  # parallel state not published (unit tests)
        pass
    return None


def _pool_reason(model_runner) -> Optional[str]:
    pool = getattr(model_runner, "token_to_kv_pool", None)
    name = type(pool).__name__
    if name not in SUPPORTED_POOLS:
        return f"KV pool {name}"
    allocator = getattr(model_runner, "token_to_kv_pool_allocator", None)
    if getattr(allocator, "translate_kv_loc", None) is not None \
            or getattr(allocator, "translate_kv_loc_dense", None) is not None:
        return "unified (virtual) KV memory pool"
    dtype = getattr(model_runner, "dtype", None)
    kv_dtype = getattr(pool, "dtype", None)
    if dtype is not None and kv_dtype is not None and kv_dtype != dtype:
        return f"KV cache dtype {kv_dtype} differs from model dtype {dtype}"
    if getattr(pool, "is_quantized_kv_cache", False):
        return "quantized KV cache"
    if kv_dtype is not None and kv_dtype not in SUPPORTED_DTYPES:
        return f"KV cache dtype {kv_dtype}"
    return None


def model_unsupported_reason(model_runner) -> Optional[str]:
    """Why DeFT cannot decode for this model runner, or None when it can.

    Parameters
    ----------
    model_runner : sglang ModelRunner (or an object with the same attributes).

    Returns
    -------
    str or None
        A short human-readable reason.
    """
    for check in (_device_reason, _attention_reason, _serving_reason, _pool_reason):
        reason = check(model_runner)
        if reason:
            return reason
    return None


def layer_unsupported_reason(layer, q_heads: int, kv_heads: int, head_dim: int,
                             kwargs: dict) -> Optional[str]:
    """Why one attention layer call cannot use the step's DeFT plan, or None.

    Parameters
    ----------
    layer : sglang RadixAttention.
    q_heads, kv_heads, head_dim : the shape the step was planned for.
    kwargs : extra keyword arguments SGLang passed to ``forward_decode``.
    """
    if layer.tp_q_head_num != q_heads or layer.tp_k_head_num != kv_heads:
        return f"layer heads {layer.tp_q_head_num}/{layer.tp_k_head_num}"
    if layer.qk_head_dim != head_dim or layer.v_head_dim != head_dim:
        return f"layer head dims {layer.qk_head_dim}/{layer.v_head_dim}"
    if (getattr(layer, "logit_cap", 0) or 0) > 0:
        return "logit soft-capping"
    if (getattr(layer, "sliding_window_size", -1) or -1) > -1:
        return "sliding-window layer"
    if getattr(layer, "is_cross_attention", False):
        return "cross attention"
    if getattr(layer, "k_scale", None) is not None or getattr(layer, "v_scale", None) is not None:
        return "scaled (quantized) KV"
    if (getattr(layer, "xai_temperature_len", -1) or -1) > 0:
        return "attention temperature scaling"
    for name in ("sinks", "score_mod", "aux_tensors"):
        if kwargs.get(name) is not None:
            return f"forward_decode({name}=...)"
    return None
