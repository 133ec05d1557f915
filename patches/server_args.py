"""Touch point: ``ServerArgs.__post_init__`` (selecting DeFT and the CUDA-graph policy).

* With ``DEFT_ENABLE=1`` (what ``deft_sglang.enable()`` sets), a ServerArgs built in this
  process gets DeFT as its decode backend *before* SGLang resolves its defaults: no backend
  named -> ``attention_backend = "deft"`` (stock Triton prefill inside DeFT); a backend named ->
  ``decode_attention_backend = "deft"`` (that backend keeps prefill).
* Whenever DeFT decodes (``--attention-backend deft``, ``--decode-attention-backend deft`` or
  enabled), ``DEFT_CUDA_GRAPH`` sets the decode CUDA-graph policy: ``on`` (default, DeFT runs
  inside the graphs), ``fallback`` (graphs replay the stock kernel) or ``disable`` (graphs off).

SGLang pickles the resulting ServerArgs into its scheduler processes, so the choice reaches them.
"""
from __future__ import annotations

import copy
import logging

from deft_sglang._logging import logger, warn_once
from deft_sglang.config import get_config

from ._base import resolve, unwrap, wrap

BACKEND_NAME = "deft"
_TARGET = ("sglang.srt.server_args", "ServerArgs")


def _set(server_args, **fields) -> None:
    """Assign fields; after resolution through ``ServerArgs.override`` (SGLang's only sanctioned
    post-resolution mutation: resolved ServerArgs are read-only and re-published as they are)."""
    if getattr(server_args, "_declarations_materialized", False):
        server_args.override("deft-sglang", **fields)
    else:
        for name, value in fields.items():
            setattr(server_args, name, value)


def select_deft(server_args) -> bool:
    """Make DeFT the decode backend of ``server_args``; True when something changed."""
    if deft_decodes(server_args):
        return False
    if server_args.attention_backend is None and server_args.prefill_attention_backend is None \
            and server_args.decode_attention_backend is None:
        _set(server_args, attention_backend=BACKEND_NAME)
    else:
        if server_args.decode_attention_backend is not None:
            logger.info("DeFT: enable() replaces --decode-attention-backend %s by deft",
                        server_args.decode_attention_backend)
        _set(server_args, decode_attention_backend=BACKEND_NAME)
    return True


def deft_decodes(server_args) -> bool:
    """True when ``server_args`` resolves decode attention to DeFT."""
    decode = server_args.decode_attention_backend or server_args.attention_backend
    return decode == BACKEND_NAME


def apply_graph_policy(server_args) -> bool:
    """Apply ``DEFT_CUDA_GRAPH`` to decode CUDA graphs; True when the server args changed.

    ``on`` (default): graphs stay, DeFT decodes inside them. ``fallback``: graphs stay and
    replay the stock kernel. ``disable``: decode graphs are turned off, DeFT runs eagerly.
    """
    config = getattr(server_args, "cuda_graph_config", None)
    phase = getattr(config, "decode", None)
    if phase is None or phase.backend == "disabled":
        return False
    mode = get_config().cuda_graph
    if mode == "fallback":
        warn_once("graph:fallback", "DeFT: decode CUDA graphs stay on (DEFT_CUDA_GRAPH=fallback); "
                  "batches replayed from a graph decode with the stock kernel.")
    if mode != "disable":
        return False
    config = copy.deepcopy(config)
    config.decode.backend = "disabled"
    _set(server_args, cuda_graph_config=config)
    warn_once("graph:disabled", "DeFT: decode CUDA graphs turned off (DEFT_CUDA_GRAPH=disable); "
              "DeFT decode runs eagerly.")
    return True


def select_draft_backend(server_args) -> bool:
    """Speculative decoding with DeFT: the draft model gets the stock fallback backend (DeFT
    serves the target's verify forwards; SGLang's draft workers accept stock backends only).
    True when something changed."""
    spec = getattr(server_args, "speculative_algorithm", None)
    if spec in (None, "", "NONE") or not hasattr(server_args, "speculative_draft_attention_backend"):
        return False
    if server_args.speculative_draft_attention_backend not in (None, BACKEND_NAME):
        return False
    draft = get_config(server_args).fallback_backend
    _set(server_args, speculative_draft_attention_backend=draft)
    logger.info("DeFT: the speculative draft model uses the %s backend; DeFT verifies.", draft)
    return True


def adjust(server_args) -> None:
    """Post-resolution adjustment: enabled -> select DeFT; DeFT decodes -> graph policy (and the
    draft model's backend under speculative decoding)."""
    if get_config().enable:
        select_deft(server_args)
    if deft_decodes(server_args):
        apply_graph_policy(server_args)
        select_draft_backend(server_args)


def _make_post_init(original):
    def __post_init__(self, *args, **kwargs):
        if get_config().enable and getattr(self, "model_path", "").lower() not in ("none", "dummy"):
            select_deft(self)
        result = original(self, *args, **kwargs)
        if deft_decodes(self):
            apply_graph_policy(self)
            select_draft_backend(self)
            logger.log(logging.DEBUG, "DeFT: server args prefill/decode = %s",
                       self.get_attention_backends())
        return result
    return __post_init__


def apply() -> None:
    """Wrap ``ServerArgs.__post_init__``; idempotent."""
    wrap(resolve(*_TARGET), "__post_init__", _make_post_init)


def revert() -> None:
    """Restore the original ``ServerArgs.__post_init__``."""
    unwrap(resolve(*_TARGET), "__post_init__")


def is_applied() -> bool:
    """True while the wrapper is installed."""
    from ._base import is_wrapped
    return is_wrapped(resolve(*_TARGET), "__post_init__")
