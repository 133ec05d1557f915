"""DeFT decode inside SGLang's decode CUDA graphs: the fixed workspace and the replay hand-off.

SGLang captures one decode graph per batch size; a replay re-runs its kernels with the same
pointers and grids. DeFT therefore decodes in graphs through a
:class:`~deft_sglang.kernels.StaticTreeAttention` sized once, at ``init_cuda_graph_state``, for
the largest captured batch (phase 1 is a persistent kernel over a work list in device memory,
so the grid never depends on the tree).

Per replayed step:

1. ``DecodeCudaGraphRunner.can_run_graph(forward_batch)`` (wrapped by
   ``patches.graph_runner``) still sees the full ForwardBatch with its requests. The backend
   reads the tree and plans there, then :meth:`DecodeGraphs.offer` keeps the plan if it fits the
   workspace. A plan that does not fit answers False: SGLang runs that batch eagerly, where DeFT
   plans with no size bound. Nothing is lost but the graph for one step.
2. ``init_forward_metadata_out_graph(view)`` gets a padded view of the batch that carries the
   batch's own ``out_cache_loc`` tensor; :meth:`DecodeGraphs.take` returns the plan offered for
   that very tensor, and the backend copies it into the workspace (device copies only).
3. The replay runs the captured kernels: rows past the real batch (padding) come out as zeros.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ._logging import info_once, logger, warn_once
from .kernels import PlannerConfig, StaticTreeAttention
from .tree_reader import DecodeForest, chain_forest, host_ints

MAX_WORK_ITEMS = 1 << 16  # int32 [5] each: 1.3 MB; plans use ~4 work items per SM and KV head


@dataclass
class GraphCapacity:
    """Sizes of the graph workspace (see :func:`graph_capacity`)."""

    max_queries: int
    max_items: int
    max_kv_tokens: int
    max_partials: int

    def as_kwargs(self) -> dict:
        return dict(max_queries=self.max_queries, max_items=self.max_items,
                    max_kv_tokens=self.max_kv_tokens, max_partials=self.max_partials)


def graph_capacity(max_bs: int, num_slots: Optional[int], q_heads: int, head_dim: int,
                   partial_elem_bytes: int, workspace_mb: int, tail_slack: int = 0,
                   max_queries: int = 0) -> GraphCapacity:
    """Workspace sizes for decode graphs of up to ``max_bs`` requests (``max_queries`` query
    tokens: ``max_bs`` for decode, ``max_bs * T`` for verify graphs; 0: ``max_bs``).

    Slot indices: every node of a forest holds distinct KV-pool slots, except requests read as
    unshared chains (a fallback), which may repeat shared ones; twice the pool covers both, plus
    ``tail_slack`` free slots per request (plan reuse).
    Partial results get ``workspace_mb`` MiB (each costs ``q_heads * (head_dim * elem + 4)``
    bytes); the planner writes a partial per chunk and query, a few per query in practice.
    """
    if max_bs < 1:
        raise ValueError(f"max_bs must be >= 1, got {max_bs}")
    max_queries = max(max_queries, max_bs)
    per_partial = q_heads * (head_dim * partial_elem_bytes + 4)
    max_partials = max((workspace_mb << 20) // per_partial, 8 * max_queries)
    max_kv_tokens = (2 * num_slots if num_slots else max_bs * 32768) + max_bs * tail_slack
    return GraphCapacity(max_queries=max_queries, max_items=MAX_WORK_ITEMS,
                         max_kv_tokens=max_kv_tokens, max_partials=int(max_partials))


class DecodeGraphs:
    """The graph workspace of one backend and the plan waiting for the next replay.

    Parameters
    ----------
    workspace : the fixed buffers and kernels every captured decode graph runs.
    """

    def __init__(self, workspace: StaticTreeAttention):
        self.workspace = workspace
        self.verify = None  # deft_sglang.verify.VerifyBuffers when verify graphs run DeFT
        self._pending: Optional[tuple[Any, Any]] = None
        self.replays = 0
        self.refused = 0

    @classmethod
    def create(cls, *, max_bs: int, num_slots: Optional[int], q_heads: int, kv_heads: int,
               head_dim: int, dtype: torch.dtype, device, workspace_mb: int,
               config: Optional[PlannerConfig] = None, tail_slack: int = 0,
               max_queries: int = 0, tail_in_graph: bool = False) -> "DecodeGraphs":
        """Allocate the workspace for graphs of up to ``max_bs`` requests (``max_queries``
        query tokens, see :func:`graph_capacity`); ``tail_in_graph``: with tail-slack tables,
        so that the captured graphs advance reused plans themselves."""
        elem = 4 if dtype == torch.float32 else 2
        capacity = graph_capacity(max_bs, num_slots, q_heads, head_dim, elem, workspace_mb,
                                  tail_slack, max_queries)
        workspace = StaticTreeAttention(**capacity.as_kwargs(), num_qo_heads=q_heads,
                                        num_kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                                        device=device, config=config,
                                        tail_steps=tail_slack if tail_in_graph else 0)
        return cls(workspace)

    def warm_up(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Compile the kernels with an empty work list (k/v: one layer's KV buffers)."""
        num_qo_heads, _, head_dim = self.workspace.shape
        q = torch.zeros(1, num_qo_heads, head_dim, dtype=k_cache.dtype, device=k_cache.device)
        self.workspace.load_empty()
        if self.workspace.tails is not None:  # armed by no plan: writes nothing
            self.workspace.advance_tails(torch.zeros(1, dtype=torch.int64, device=q.device))
        self.workspace.run(q, k_cache, v_cache, torch.empty_like(q))

    def offer(self, key: Any, step: Any) -> bool:
        """Keep ``step`` (with ``.plan``) for the replay of the batch whose ``out_cache_loc`` is
        ``key``; False (and nothing kept) when its plan does not fit the workspace."""
        if not self.workspace.fits(step.plan.prefix if step.draft_len else step.plan):
            self._pending = None
            self.refused += 1
            return False
        self._pending = (key, step)
        return True

    @property
    def pending(self) -> bool:
        """A plan was offered and no replay has taken it yet."""
        return self._pending is not None

    def take(self, key: Any) -> Optional[Any]:
        """The step offered for ``key`` (matched by identity), once; None when there is none."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not key:
            return None
        self.replays += 1
        return pending[1]


def pool_geometry(pool) -> tuple[Optional[int], int]:
    """(slots per layer buffer, bytes per element) without touching a layer (no layer waits)."""
    buffers = getattr(pool, "k_buffer", None)
    if buffers:
        return int(buffers[0].shape[0]), int(buffers[0].element_size())
    return None, 2


def view_chain_forest(view) -> DecodeForest:
    """The real (unpadded) requests of a graph-replay view as unshared chains."""
    raw_bs = view.batch_size - int(getattr(view, "num_padding", 0) or 0)
    seq_lens = (view.seq_lens_cpu if view.seq_lens_cpu is not None else view.seq_lens.cpu())
    return chain_forest(host_ints(view.req_pool_indices[:raw_bs].cpu()),
                        host_ints(seq_lens[:raw_bs]))


def create_decode_graphs(backend, max_bs: int, max_tokens: int = 0) -> Optional[DecodeGraphs]:
    """The decode-graph workspace of ``backend``, compiled once; None (graphs then replay the
    inner kernel, with one warning) when the graph patch is missing or the kernels fail.
    ``max_tokens`` > ``max_bs``: the graphs are target-verify graphs of ``max_tokens // max_bs``
    draft tokens per request (:mod:`deft_sglang.verify`)."""
    from .verify import create_verify_buffers
    from .patches import graph_runner

    try:
        if not graph_runner.is_applied():
            raise RuntimeError("the graph_runner patch is not applied")
        pool = backend.token_to_kv_pool
        num_slots, _ = pool_geometry(pool)
        dtype = getattr(backend.model_runner, "dtype", None) or pool.dtype
        graphs = DecodeGraphs.create(
            max_bs=max_bs, num_slots=num_slots, q_heads=backend.q_heads,
            kv_heads=backend.kv_heads, head_dim=backend.head_dim, dtype=dtype,
            device=backend.device, workspace_mb=backend.config.graph_workspace_mb,
            config=backend.planner_config,
            tail_slack=backend.config.tail_slack, max_queries=max_tokens,
            tail_in_graph=backend.config.graph_tail_advance == "graph")
        graphs.verify = create_verify_buffers(backend, max_bs, max_tokens)
        if getattr(pool, "k_buffer", None):  # compile now: a failure shows before any capture
            graphs.warm_up(pool.k_buffer[0], pool.v_buffer[0])
    except Exception as exc:
        warn_once("graphs:create", "DeFT: no DeFT decode graphs (%s: %s); decode batches "
                  "replayed from CUDA graphs use the stock %s kernel.", type(exc).__name__, exc,
                  backend.inner_name)
        logger.debug("DeFT graph workspace failure", exc_info=True)
        return None
    info_once("graphs", "DeFT decodes inside CUDA graphs (batch sizes up to %d, %d partial "
              "slots).", max_bs, graphs.workspace.capacity["partials"])
    return graphs
