"""``DeftAttnBackend``: SGLang 0.5.17 attention backend whose decode runs DeFT tree attention.

* Extend / prefill / mixed batches, and every decode batch DeFT does not handle, go to an inner
  stock backend (``DEFT_FALLBACK_BACKEND``; default ``--attention-backend`` when it names a stock
  backend, else ``triton``). With ``--prefill-attention-backend X`` SGLang's hybrid backend sends
  prefill to ``X`` itself.
* Decode: ``init_forward_metadata`` reads the batch's KV forest from the RadixCache
  (:mod:`deft_sglang.tree_reader`, requests carried by the ``forward_batch`` patch) and plans
  once, or, while the batch only grows by a token per request, advances the last plan on the
  device (:mod:`deft_sglang.reuse`); ``forward_decode`` saves the new token's K/V (as the stock
  backends do) and runs the plan on the layer's K/V buffers.
* CUDA graphs (``DEFT_CUDA_GRAPH=on``, the default): decode graphs run DeFT through a fixed
  workspace (:mod:`deft_sglang.graph`); the step is planned in ``can_run_graph`` (the
  ``graph_runner`` patch) and loaded in ``init_forward_metadata_out_graph``. A step whose plan
  does not fit the workspace runs eagerly. ``fallback`` leaves graphs to the inner backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from ._logging import info_once, logger, warn_once
from .config import DeftConfig, get_config
from .graph import DecodeGraphs, create_decode_graphs, pool_geometry, view_chain_forest
from .kernels import plan_tree_attention
from .monitor import Monitor, ShadowCheck, log_plan_stats
from .reuse import BatchSignature, PlanReuse
from .support import layer_unsupported_reason, model_unsupported_reason
from .tree_reader import DecodeForest, chain_forest, decode_batch_view, read_decode_forest


@dataclass
class DeftStep:
    """One decode step's plan (shared by all layers) and the forest it was built from."""

    plan: object
    forest: DecodeForest
    batch_size: int
    new_slots: Optional[torch.Tensor] = None  # graph replay: advance the workspace by these


def _create_inner(model_runner, name: str) -> AttentionBackend:
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    if name == "deft" or name not in ATTENTION_BACKENDS:
        raise ValueError(f"DeFT fallback backend {name!r} is not a registered stock SGLang "
                         "attention backend (set DEFT_FALLBACK_BACKEND)")
    return ATTENTION_BACKENDS[name](model_runner)


def _attention_shape(model_runner) -> tuple[int, int, int]:
    """(q heads, kv heads, head_dim) per attention-TP rank, as SGLang's Triton backend sizes them."""
    model_config = model_runner.model_config
    try:
        from sglang.srt.runtime_context import get_parallel
        tp = get_parallel().attn_tp_size
    except Exception:  # parallel state not published (unit tests)
        tp = 1
    q_heads = model_config.get_max_num_attention_heads() // tp
    return q_heads, model_config.get_num_kv_heads(tp), model_config.head_dim


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class DeftAttnBackend(AttentionBackend):
    """DeFT decode with a stock SGLang backend for everything else.

    Parameters
    ----------
    model_runner : sglang ModelRunner.
    inner : AttentionBackend, optional
        The stock backend to delegate to (default: built from the configuration).
    config : DeftConfig, optional
        Default: read from the environment and ``model_runner.server_args``.
    """

    needs_cpu_seq_lens: bool = True

    def __init__(self, model_runner, inner: Optional[AttentionBackend] = None,
                 config: Optional[DeftConfig] = None):
        super().__init__()
        self.config = config or get_config(getattr(model_runner, "server_args", None))
        self.config.apply_log_level()
        self.inner = inner if inner is not None else _create_inner(
            model_runner, self.config.fallback_backend)
        self.inner_name = type(self.inner).__name__
        self.model_runner = model_runner
        self.token_to_kv_pool = model_runner.token_to_kv_pool  # read by SGLang's forward context
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        # The pool's own device (with its index: "cuda:3", not "cuda"), where plans must live.
        self.device = self.req_to_token.device
        self.q_heads, self.kv_heads, self.head_dim = _attention_shape(model_runner)
        self.reason = model_unsupported_reason(model_runner)
        self._step: Optional[DeftStep] = None
        self._inner_ready = False
        self.graphs: Optional[DecodeGraphs] = None  # set by init_cuda_graph_state
        self._graph_decode = False  # this forward is a decode graph's capture (or a test replay)
        self._graph_uses_inner = False  # some layer of the captured graphs runs the inner kernel
        shadow = ShadowCheck(self.device) if self.config.shadow_check else None
        self.monitor = Monitor(self.config.stats_interval, shadow)
        self.reuse = PlanReuse()
        if shadow is not None:  # replays then prepare the inner backend's metadata too
            self._graph_uses_inner = True
        self.steps = 0
        self.last_stats: Optional[dict] = None
        self._announce()

    def _announce(self) -> None:
        if self.reason is not None:
            warn_once("model", "DeFT: %s is not supported; decode uses the stock %s backend.",
                      self.reason, self.inner_name)
            return
        from .patches import forward_batch

        forward_batch.set_capture(True)
        info_once("active", "DeFT tree attention active for decode (heads %d/%d, head_dim %d, "
                  "page_size %s; extend and fallbacks: %s)", self.q_heads, self.kv_heads,
                  self.head_dim, getattr(self.model_runner, "page_size", 1), self.inner_name)

    def __getattr__(self, name):
        # Backend-specific attributes SGLang or models may read (forward_metadata helpers,
        # indexer hooks, ...) come from the inner backend.
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def forward_metadata(self):
        return self.inner.forward_metadata

    @forward_metadata.setter
    def forward_metadata(self, value):
        self.inner.forward_metadata = value

    # ---- per-step metadata -------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch):
        """Plan DeFT for a decode batch; anything else (or a failed plan) goes to the inner."""
        self._step, self._inner_ready, self._graph_decode = None, False, False
        if self.reason is None and forward_batch.forward_mode.is_decode() and not _capturing():
            self._step = self._plan_or_none(forward_batch)
            if self._step is not None:
                self._step_done(self._step)
        if self._step is None:
            self.inner.init_forward_metadata(forward_batch)
            self._inner_ready = True

    def _step_done(self, step: DeftStep) -> None:
        if self.monitor.shadow is not None:
            self.monitor.shadow.set_rows(step.batch_size)
        self.monitor.step_done(lambda: f" ({self.reuse.fresh} fresh plans, {self.reuse.reused} "
                                       "advanced in place)")

    def _plan_or_none(self, forward_batch, any_size: bool = False,
                      graph: bool = False) -> Optional[DeftStep]:
        self.monitor.timer.start()
        try:
            return self._plan(forward_batch, any_size, graph)
        except Exception as exc:  # never fail a server step over DeFT: stock decode is exact
            self.reuse.forget()
            warn_once(f"plan:{type(exc).__name__}", "DeFT: planning a decode step failed (%s: %s); "
                      "such steps decode with the stock %s kernel.", type(exc).__name__, exc,
                      self.inner_name)
            logger.debug("DeFT planning failure", exc_info=True)
            return None
        finally:
            self.monitor.timer.stop()

    def _plan(self, forward_batch, any_size: bool = False,
              graph: bool = False) -> Optional[DeftStep]:
        """This step's plan: the last one advanced by a token per request when the batch only
        grew (:mod:`deft_sglang.reuse`), else read from the RadixCache and planned afresh."""
        if forward_batch.batch_size < self.config.min_batch_size and not any_size:
            return None
        from .patches.forward_batch import ATTR

        view = decode_batch_view(forward_batch, getattr(forward_batch, ATTR, None))
        if view is None:
            return None
        info, rows, seq_lens = view
        signature = (BatchSignature.of(info.reqs, rows, seq_lens, graph)
                     if info is not None and self.config.tail_slack else None)
        if signature is not None:
            step = self.reuse.follow(signature)
            if step is not None:
                new_slots = forward_batch.out_cache_loc[:forward_batch.batch_size]
                if graph:  # advanced in the graph workspace, at replay (graph.py)
                    return DeftStep(step.plan, step.forest, step.batch_size, new_slots)
                step.plan.extend_tails(new_slots)
                return step
        if info is None:
            forest = chain_forest(rows, seq_lens)
        else:
            forest = read_decode_forest(info.reqs, rows, seq_lens, info.tree_cache,
                                        self.req_to_token, verify=self.config.verify_tree)
        step = self._plan_forest(forest, forward_batch.batch_size,
                                 self.config.tail_slack if signature is not None else 0)
        if signature is not None:
            self.reuse.remember(signature, step)
        return step

    def _plan_forest(self, forest: DecodeForest, batch_size: int, tail_slack: int = 0) -> DeftStep:
        num_slots, elem_bytes = pool_geometry(self.token_to_kv_pool)
        plan = plan_tree_attention(
            forest.node_parent, forest.node_kv_indptr, forest.gather_kv_indices(self.req_to_token),
            forest.query_node, num_qo_heads=self.q_heads, num_kv_heads=self.kv_heads,
            head_dim=self.head_dim, device=self.device, validate=self.config.validate_plan,
            num_slots=num_slots, kv_elem_bytes=elem_bytes, tail_slack=tail_slack)
        self.steps += 1
        self.last_stats = log_plan_stats(self.steps, plan, forest, batch_size) or self.last_stats
        return DeftStep(plan, forest, batch_size)

    # ---- forward -----------------------------------------------------------------------------
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        """Decode attention for one layer: DeFT when the step was planned, else the inner."""
        step = self._step
        if step is not None or self._graph_decode:
            reason = layer_unsupported_reason(layer, self.q_heads, self.kv_heads, self.head_dim,
                                              kwargs)
            if reason is None and self._graph_decode:
                # Inside a graph capture: no fallback is possible once recorded, so let errors out.
                out = self._deft_decode(None, q, k, v, layer, forward_batch, save_kv_cache)
                return self._shadow(out, q, k, v, layer, forward_batch, kwargs)
            if reason is None:
                try:
                    out = self._deft_decode(step, q, k, v, layer, forward_batch, save_kv_cache)
                    return self._shadow(out, q, k, v, layer, forward_batch, kwargs)
                except Exception as exc:  # e.g. a kernel that fails to compile: stay up
                    self._step, self.reason = None, f"decode kernel failure ({exc})"
                    warn_once(f"run:{type(exc).__name__}", "DeFT: decode kernel failed (%s: %s); "
                              "decoding continues with the stock %s kernel.",
                              type(exc).__name__, exc, self.inner_name)
                    logger.debug("DeFT run failure", exc_info=True)
            else:
                self._graph_uses_inner |= self._graph_decode
                warn_once(f"layer:{reason}", "DeFT: %s is not supported; such layers decode with "
                          "the stock %s kernel.", reason, self.inner_name)
        return self._inner_decode(q, k, v, layer, forward_batch, save_kv_cache, kwargs)

    def _inner_decode(self, q, k, v, layer, forward_batch, save_kv_cache, kwargs):
        if not self._inner_ready:
            self.inner.init_forward_metadata(forward_batch)
            self._inner_ready = True
        extra = {k_: v_ for k_, v_ in kwargs.items() if v_ is not None}
        return self.inner.forward_decode(q, k, v, layer, forward_batch,
                                         save_kv_cache=save_kv_cache, **extra)

    def _shadow(self, out, q, k, v, layer, forward_batch, kwargs):
        """``DEFT_SHADOW_CHECK``: fold ``|out - stock|`` into the monitor; returns ``out``."""
        if self.monitor.shadow is not None:
            ref = self._inner_decode(q, k, v, layer, forward_batch, False, kwargs)
            self.monitor.shadow.compare(out, ref)
        return out

    @torch.compiler.disable  # like SGLang's Triton backend: keep Triton launches out of dynamo
    def _deft_decode(self, step: Optional[DeftStep], q, k, v, layer, forward_batch,
                     save_kv_cache):
        """One layer of DeFT decode: with ``step``'s plan, or (None) with the graph workspace."""
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc), k, v)
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        out = q3.new_empty((q3.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        k_cache = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_cache = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        if step is None:
            self.graphs.workspace.run(q3, k_cache, v_cache, out, sm_scale=layer.scaling)
        else:
            step.plan.run(q3, k_cache, v_cache, sm_scale=layer.scaling, out=out,
                          check=self.steps <= 1)
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        """Extend / prefill: the inner backend."""
        return self.inner.forward_extend(q, k, v, layer, forward_batch,
                                         save_kv_cache=save_kv_cache, **kwargs)

    def forward_mixed(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True):
        return self.inner.forward_mixed(q, k, v, layer, forward_batch, save_kv_cache)

    # ---- CUDA graphs ----------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        """Inner graph state (extend graphs, fallbacks), plus DeFT's decode-graph workspace."""
        result = self.inner.init_cuda_graph_state(max_bs, max_num_tokens)
        if self.reason is None and self.config.cuda_graph == "on":
            self.graphs = create_decode_graphs(self, max_bs)
        elif self.reason is None:
            warn_once("graphs", "DeFT: decode batches replayed from CUDA graphs use the stock %s "
                      "kernel (DEFT_CUDA_GRAPH=%s).", self.inner_name, self.config.cuda_graph)
        return result

    def deft_prepare_graph_replay(self, forward_batch) -> bool:
        """Plan a decode step SGLang is about to replay from a graph (``graph_runner`` patch,
        with the full batch); False: its plan does not fit, so SGLang runs it eagerly."""
        if self.graphs is None or not forward_batch.forward_mode.is_decode():
            return True  # the captured graph holds the inner kernel, or this is not decode
        if self.graphs.pending:  # the last offer was never replayed: the workspace lags behind
            self.reuse.forget()
        step = self._plan_or_none(forward_batch, any_size=True, graph=True)
        if step is not None and self.graphs.offer(forward_batch.out_cache_loc, step):
            return True
        self.reuse.forget()  # this step runs eagerly: the workspace will not follow the plan
        return False

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        """Before a graph's capture or replay: DeFT's decode graphs load their step's plan."""
        decode = self.graphs is not None and forward_batch.forward_mode.is_decode()
        self._step, self._inner_ready, self._graph_decode = None, True, decode and in_capture
        if not decode:
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture=in_capture)
        if in_capture:  # no tree yet: an empty work list (padding rows read nothing)
            self.graphs.workspace.load_empty()
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture=True)
        self.monitor.timer.start()
        step = self.graphs.take(forward_batch.out_cache_loc)
        if step is None:  # replay not announced through can_run_graph: read plain chains
            self.reuse.forget()
            step = self._plan_forest(view_chain_forest(forward_batch), forward_batch.batch_size)
        if step.new_slots is not None:  # the same batch one token on: advance the workspace
            ws = self.graphs.workspace
            step.plan.extend_tails(step.new_slots, ws.kv_indices, ws.items)
        else:
            self.graphs.workspace.load(step.plan)  # raises if the chain plan does not fit
        if self._graph_uses_inner:
            self.inner.init_forward_metadata_out_graph(forward_batch)
        self._step_done(step)
        return None

    def init_forward_metadata_in_graph(self, forward_batch):
        return self.inner.init_forward_metadata_in_graph(forward_batch)

    def get_cuda_graph_seq_len_fill_value(self):
        return self.inner.get_cuda_graph_seq_len_fill_value()

    def on_after_cuda_graph_warmup(self):
        return self.inner.on_after_cuda_graph_warmup()

    def draft_extend_metadata_captured_in_graph(self) -> bool:
        return self.inner.draft_extend_metadata_captured_in_graph()

    @property
    def use_captured_forward_metadata_for_breakable_cuda_graph(self) -> bool:
        return self.inner.use_captured_forward_metadata_for_breakable_cuda_graph

    @property
    def supports_full_cuda_graph_chunked_prefix(self) -> bool:
        return self.inner.supports_full_cuda_graph_chunked_prefix

    @property
    def supports_ragged_verify_graph(self) -> bool:
        return self.inner.supports_ragged_verify_graph

    def prepare_full_cuda_graph_chunked_prefix(self, forward_batch, *, in_capture: bool) -> None:
        return self.inner.prepare_full_cuda_graph_chunked_prefix(forward_batch,
                                                                 in_capture=in_capture)

    def init_forward_metadata_for_breakable_cuda_graph_capture(self, forward_batch):
        self._step, self._inner_ready = None, True
        return self.inner.init_forward_metadata_for_breakable_cuda_graph_capture(forward_batch)

    def prepare_forward_metadata_for_breakable_cuda_graph_replay(
            self, capture_metadata, forward_batch, *, static_forward_batch=None) -> None:
        self._step, self._inner_ready = None, True
        return self.inner.prepare_forward_metadata_for_breakable_cuda_graph_replay(
            capture_metadata, forward_batch, static_forward_batch=static_forward_batch)

    @property
    def verify_mask(self):
        return self.inner.verify_mask

    def update_verify_buffers_to_fill_after_draft(self, spec_info, cuda_graph_bs):
        return self.inner.update_verify_buffers_to_fill_after_draft(spec_info, cuda_graph_bs)

    def support_triton(self):
        return self.inner.support_triton()

    def get_indexer_metadata(self, layer_id: int, forward_batch):
        return self.inner.get_indexer_metadata(layer_id, forward_batch)
