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
* Speculative decoding (EAGLE trees): target-verify forwards run DeFT tree verification
  (:mod:`deft_sglang.verify`), eagerly or in SGLang's verify graphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from ._logging import info_once, logger, warn_once
from .config import DeftConfig, get_config
from .graph import DecodeGraphs, pool_geometry
from .graph_hooks import GraphHooks
from .kernels import PlannerConfig, plan_tree_attention, plan_tree_verify
from .kernels import native as native_planner
from .monitor import Monitor, ShadowCheck, log_plan_stats
from .reuse import BatchSignature, PlanReuse
from .support import layer_unsupported_reason, model_unsupported_reason
from .tree_reader import DecodeForest, chain_forest, decode_batch_view, read_decode_forest
from .verify import DraftMask, draft_mask, mask_mode, verify_input


@dataclass
class DeftStep:
    """One decode step's plan (shared by all layers) and the forest it was built from."""

    plan: object
    forest: DecodeForest
    batch_size: int
    new_slots: Optional[torch.Tensor] = None  # graph replay: advance the workspace by these
    draft: Optional[DraftMask] = None  # an eager verify step: where the draft-tree mask is
    draft_len: int = 0  # a verify step: draft tokens per request (its plan is a verify plan)


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


class DeftAttnBackend(GraphHooks, AttentionBackend):
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
        self.planner_config = self.config.planner_config()  # None: the planner's defaults
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
        self._graph_verify = False  # likewise for a target-verify graph
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
        if (self.planner_config or PlannerConfig()).native:
            native_planner.library()  # build the C planner core now, not in the first decode
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
        self._step, self._inner_ready = None, False
        self._graph_decode = self._graph_verify = False
        mode = forward_batch.forward_mode
        if self.reason is None and not _capturing() and (mode.is_decode()
                                                          or mode.is_target_verify()):
            self._step = self._plan_or_none(forward_batch, verify=mode.is_target_verify())
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

    def _plan_or_none(self, forward_batch, any_size: bool = False, graph: bool = False,
                      verify: bool = False) -> Optional[DeftStep]:
        self.monitor.timer.start()
        try:
            if verify:
                return self._plan_verify(forward_batch, graph)
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
        reusable = info is not None and self.config.tail_slack > 0
        stale = None
        if reusable:
            step, stale = self.reuse.follow(info.reqs, rows, seq_lens, graph)
            if step is not None:
                new_slots = forward_batch.out_cache_loc[:forward_batch.batch_size]
                if graph:  # advanced in the graph workspace, at replay (graph.py)
                    return DeftStep(step.plan, step.forest, step.batch_size, new_slots)
                step.plan.extend_tails(new_slots)
                return step
        if stale is not None:  # the same batch, slack used up: its forest, tails grown
            forest = stale.forest.with_tails_at(seq_lens)
        elif info is None:
            forest = chain_forest(rows, seq_lens)
        else:
            forest = read_decode_forest(info.reqs, rows, seq_lens, info.tree_cache,
                                        self.req_to_token, verify=self.config.verify_tree)
        step = self._plan_forest(forest, forward_batch.batch_size,
                                 self.config.tail_slack if reusable else 0)
        if reusable:
            self.reuse.remember(BatchSignature.of(info.reqs, rows, seq_lens, graph), step)
        return step

    def _plan_verify(self, forward_batch, graph: bool = False) -> Optional[DeftStep]:
        """A target-verify step: the committed forest with ``T`` queries per request; the draft
        part reads SGLang's tree mask on the device (:mod:`deft_sglang.verify`)."""
        found = verify_input(forward_batch)
        if found is None or mask_mode(self.inner) is None:
            return None
        draft_len = found[1]
        if graph and self.graphs.verify.draft_len != draft_len:
            return None
        self.reuse.forget()  # verify steps grow by the accepted tokens: never advanced in place
        from .patches.forward_batch import ATTR

        view = decode_batch_view(forward_batch, getattr(forward_batch, ATTR, None))
        if view is None:
            return None
        info, rows, seq_lens = view
        forest = chain_forest(rows, seq_lens) if info is None else read_decode_forest(
            info.reqs, rows, seq_lens, info.tree_cache, self.req_to_token,
            verify=self.config.verify_tree, min_tail=0)
        step = self._plan_forest(forest, forward_batch.batch_size, draft_len=draft_len)
        if not graph:  # graphs read the mask from the inner's fixed buffer
            step.draft = draft_mask(forward_batch, self.inner)
        info_once("verify", "DeFT verifies speculative draft trees (%d draft tokens per request).",
                  draft_len)
        return step

    def _plan_forest(self, forest: DecodeForest, batch_size: int, tail_slack: int = 0,
                     draft_len: int = 0) -> DeftStep:
        num_slots, elem_bytes = pool_geometry(self.token_to_kv_pool)
        kwargs = dict(num_qo_heads=self.q_heads, num_kv_heads=self.kv_heads,
                      head_dim=self.head_dim, device=self.device,
                      validate=self.config.validate_plan, num_slots=num_slots,
                      kv_elem_bytes=elem_bytes, config=self.planner_config)
        arrays = (forest.node_parent, forest.node_kv_indptr,
                  forest.gather_kv_indices(self.req_to_token), forest.query_node)
        if draft_len:
            plan = plan_tree_verify(*arrays, draft_len=draft_len, **kwargs)
        else:
            plan = plan_tree_attention(*arrays, tail_slack=tail_slack, **kwargs)
        self.steps += 1
        self.last_stats = log_plan_stats(self.steps, plan, forest, batch_size) or self.last_stats
        if self.monitor.interval:
            self.monitor.plans.add(plan, forest)
        return DeftStep(plan, forest, batch_size, draft_len=draft_len)

    # ---- forward -----------------------------------------------------------------------------
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        """Decode attention for one layer: DeFT when the step was planned, else the inner."""
        if self._step is not None or self._graph_decode:
            out = self._try_deft("decode", self._graph_decode, layer, kwargs, lambda step: (
                self._shadow(self._deft_decode(step, q, k, v, layer, forward_batch,
                                               save_kv_cache), q, k, v, layer, forward_batch,
                             kwargs)))
            if out is not None:
                return out
        return self._inner_decode(q, k, v, layer, forward_batch, save_kv_cache, kwargs)

    def _try_deft(self, kind: str, in_capture: bool, layer, kwargs, run):
        """``run(step)`` for one layer (``step`` None inside a graph capture), or None when the
        inner backend must take the layer: a layer DeFT does not handle, or a kernel that fails
        outside a capture (then DeFT stays off for this backend). One warning each."""
        reason = layer_unsupported_reason(layer, self.q_heads, self.kv_heads, self.head_dim,
                                          kwargs)
        if reason is not None:
            self._graph_uses_inner |= in_capture
            warn_once(f"layer:{reason}", "DeFT: %s is not supported; such layers %s with the "
                      "stock %s kernel.", reason, kind, self.inner_name)
            return None
        if in_capture:  # no fallback is possible once recorded, so let errors out
            return run(None)
        try:
            return run(self._step)
        except Exception as exc:  # e.g. a kernel that fails to compile: stay up
            self._step, self.reason = None, f"{kind} kernel failure ({exc})"
            warn_once(f"{kind}:{type(exc).__name__}", "DeFT: %s kernel failed (%s: %s); %s "
                      "continues with the stock %s kernel.", kind, type(exc).__name__, exc,
                      "decoding" if kind == "decode" else "verification", self.inner_name)
            logger.debug("DeFT %s failure", kind, exc_info=True)
            return None

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

    def _layer_io(self, q, k, v, layer, forward_batch, save_kv_cache):
        """Store this forward's K/V at ``out_cache_loc`` (as the stock backends do), then
        ``(q [N, Hq, D], out, k_cache, v_cache)`` of the layer."""
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc), k, v)
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        out = q3.new_empty((q3.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        return (q3, out, self.token_to_kv_pool.get_key_buffer(layer.layer_id),
                self.token_to_kv_pool.get_value_buffer(layer.layer_id))

    @torch.compiler.disable  # like SGLang's Triton backend: keep Triton launches out of dynamo
    def _deft_decode(self, step: Optional[DeftStep], q, k, v, layer, forward_batch,
                     save_kv_cache):
        """One layer of DeFT decode: with ``step``'s plan, or (None) with the graph workspace."""
        q3, out, k_cache, v_cache = self._layer_io(q, k, v, layer, forward_batch, save_kv_cache)
        if step is None:
            self.graphs.workspace.run(q3, k_cache, v_cache, out, sm_scale=layer.scaling)
        else:
            step.plan.run(q3, k_cache, v_cache, sm_scale=layer.scaling, out=out,
                          check=self.steps <= 1)
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        """Extend / prefill: the inner backend; a planned target-verify step: DeFT."""
        step = self._step
        if (step is not None and step.draft_len) or self._graph_verify:
            out = self._try_deft("verify", self._graph_verify, layer, kwargs, lambda step_: (
                self._deft_verify(step_, q, k, v, layer, forward_batch, save_kv_cache)))
            if out is not None:
                return out
            if not self._inner_ready:
                self.inner.init_forward_metadata(forward_batch)
                self._inner_ready = True
        return self.inner.forward_extend(q, k, v, layer, forward_batch,
                                         save_kv_cache=save_kv_cache, **kwargs)

    @torch.compiler.disable
    def _deft_verify(self, step: Optional[DeftStep], q, k, v, layer, forward_batch,
                     save_kv_cache):
        """One layer of DeFT tree verification: with ``step``'s plan and mask, or (None) with the
        graph workspace, the fixed draft buffers and the inner's fixed mask buffer."""
        q3, out, k_cache, v_cache = self._layer_io(q, k, v, layer, forward_batch, save_kv_cache)
        slots = forward_batch.out_cache_loc
        if step is None:
            extra = self.graphs.verify.run_draft(q3, k_cache, v_cache, slots,
                                                 self.inner.verify_mask.buffer, layer.scaling)
            self.graphs.workspace.run(q3, k_cache, v_cache, out, sm_scale=layer.scaling,
                                      extra=extra)
        else:
            mask = step.draft
            step.plan.run(q3, k_cache, v_cache, slots, mask.mask, mask.offsets, mask.strides,
                          sm_scale=layer.scaling, out=out, check=self.steps <= 1)
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_mixed(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True):
        return self.inner.forward_mixed(q, k, v, layer, forward_batch, save_kv_cache)
