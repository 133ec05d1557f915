"""Touch point: ``DecodeCudaGraphRunner.can_run_graph`` lets the DeFT backend plan a replay.

A decode CUDA graph replays kernels whose work list lives in fixed device buffers; the DeFT
backend must plan the step and copy the plan into those buffers before the replay. SGLang hands
the backend only a padded *view* of the batch at replay (``init_forward_metadata_out_graph``),
without the requests or the radix tree. ``can_run_graph(forward_batch)`` is the last call that
sees the full ForwardBatch before the replay, and its answer decides graph versus eager. The
wrapper asks the runner's attention backend: one that has ``deft_prepare_graph_replay`` plans
the step there and answers False when the plan does not fit its graph workspace, in which case
SGLang runs that batch eagerly (where DeFT plans without any size bound).
"""
from __future__ import annotations

from deft_sglang._logging import logger

from ._base import is_wrapped, resolve, unwrap, wrap

_TARGET = ("sglang.srt.model_executor.runner.decode_cuda_graph_runner", "DecodeCudaGraphRunner")
HOOK = "deft_prepare_graph_replay"


def backend_accepts(runner, forward_batch) -> bool:
    """Ask ``runner.attn_backend`` to prepare ``forward_batch`` for replay (True: replay it)."""
    prepare = getattr(getattr(runner, "attn_backend", None), HOOK, None)
    if prepare is None:
        return True
    try:
        return bool(prepare(forward_batch))
    except Exception:  # never break SGLang over an optimisation: run the batch eagerly
        logger.debug("DeFT: preparing a graph replay failed", exc_info=True)
        return False


def _make_can_run_graph(original):
    def can_run_graph(self, forward_batch):
        return original(self, forward_batch) and backend_accepts(self, forward_batch)
    return can_run_graph


def apply() -> None:
    """Wrap ``DecodeCudaGraphRunner.can_run_graph``; idempotent."""
    wrap(resolve(*_TARGET), "can_run_graph", _make_can_run_graph)


def revert() -> None:
    """Restore the original ``can_run_graph``."""
    unwrap(resolve(*_TARGET), "can_run_graph")


def is_applied() -> bool:
    """True while the wrapper is installed."""
    return is_wrapped(resolve(*_TARGET), "can_run_graph")
