"""Touch point: ``ForwardBatch.init_new`` carries the batch's requests to the DeFT backend.

``ForwardBatch.init_new(batch: ScheduleBatch, model_runner, ...)`` is the last place that sees
the ScheduleBatch (``reqs``, ``tree_cache``) before the attention backend's
``init_forward_metadata`` runs in the same scheduler step. For decode (and speculative
target-verify) batches the wrapper
attaches a :class:`DeftBatchInfo` snapshot as ``forward_batch.deft_batch_info``. It does so only
in processes where a DeFT backend exists (``set_capture(True)``), so SGLang processes that merely
have the plugin installed pay nothing. A ForwardBatch built any other way (split, padded,
copied) simply lacks the attribute, and the backend reads its requests as unshared chains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from deft_sglang._logging import logger

from ._base import is_wrapped, resolve, unwrap, wrap

ATTR = "deft_batch_info"
_TARGET = ("sglang.srt.model_executor.forward_batch_info", "ForwardBatch")
_state = {"capture": False}


@dataclass(frozen=True)
class DeftBatchInfo:
    """What the DeFT backend needs from the ScheduleBatch of a decode (or verify) step.

    Attributes
    ----------
    reqs : tuple of sglang ``Req`` in batch order.
    tree_cache : the scheduler's prefix cache (RadixCache by default).
    req_pool_indices : host copy of the batch's ``req_to_token`` rows, or None.
    seq_lens : host copy of the batch's sequence lengths (incl. the new token), or None.
    """

    reqs: tuple
    tree_cache: Any
    req_pool_indices: Optional[tuple]
    seq_lens: Optional[tuple]


def _host_list(tensor) -> Optional[tuple]:
    if tensor is None or getattr(tensor, "device", None) is None or tensor.device.type != "cpu":
        return None
    return tuple(tensor.tolist())  # an integer tensor lists Python ints


def capture(batch) -> DeftBatchInfo:
    """Snapshot a ScheduleBatch's requests and host-side lengths."""
    return DeftBatchInfo(
        reqs=tuple(batch.reqs),
        tree_cache=getattr(batch, "tree_cache", None),
        req_pool_indices=_host_list(getattr(batch, "req_pool_indices_cpu", None)),
        seq_lens=_host_list(getattr(batch, "seq_lens_cpu", None)),
    )


def set_capture(enabled: bool) -> None:
    """Turn the snapshot on (a DeFT backend exists in this process) or off."""
    _state["capture"] = bool(enabled)


def _make_init_new(original):
    def init_new(cls, batch, model_runner, *args, **kwargs):
        forward_batch = original(cls, batch, model_runner, *args, **kwargs)
        mode = forward_batch.forward_mode
        if _state["capture"] and (mode.is_decode() or mode.is_target_verify()):
            try:
                setattr(forward_batch, ATTR, capture(batch))
            except Exception:  # never break SGLang over an optimisation
                logger.debug("DeFT: could not capture the batch's requests", exc_info=True)
        return forward_batch
    return init_new


def apply() -> None:
    """Wrap ``ForwardBatch.init_new`` (a classmethod); idempotent."""
    wrap(resolve(*_TARGET), "init_new", _make_init_new)


def revert() -> None:
    """Restore the original ``ForwardBatch.init_new``."""
    unwrap(resolve(*_TARGET), "init_new")


def is_applied() -> bool:
    """True while the wrapper is installed."""
    return is_wrapped(resolve(*_TARGET), "init_new")
