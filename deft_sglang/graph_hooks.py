"""The CUDA-graph side of :class:`~deft_sglang.backend.DeftAttnBackend` (a mixin).

DeFT's own decode/verify graphs (:mod:`deft_sglang.graph`): the workspace is sized at
``init_cuda_graph_state``; a replayed step is planned in ``deft_prepare_graph_replay`` (called
from the wrapped ``can_run_graph``) and loaded in ``init_forward_metadata_out_graph``.  Every
other graph hook is the inner stock backend's.
"""
from __future__ import annotations

from ._logging import warn_once
from .graph import create_decode_graphs, view_chain_forest


class GraphHooks:
    """CUDA-graph hooks of the DeFT backend (mixed into ``DeftAttnBackend``)."""

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        """Inner graph state (extend graphs, fallbacks), plus DeFT's decode-graph workspace."""
        result = self.inner.init_cuda_graph_state(max_bs, max_num_tokens)
        if self.reason is None and self.config.cuda_graph == "on":
            self.graphs = create_decode_graphs(self, max_bs, max_num_tokens)
        elif self.reason is None:
            warn_once("graphs", "DeFT: decode batches replayed from CUDA graphs use the stock %s "
                      "kernel (DEFT_CUDA_GRAPH=%s).", self.inner_name, self.config.cuda_graph)
        return result

    def deft_prepare_graph_replay(self, forward_batch) -> bool:
        """Plan a decode step SGLang is about to replay from a graph (``graph_runner`` patch,
        with the full batch); False: its plan does not fit, so SGLang runs it eagerly."""
        mode = forward_batch.forward_mode
        if self.graphs is not None and self.graphs.verify is not None \
                and mode.is_target_verify():
            step = self._plan_or_none(forward_batch, graph=True, verify=True)
            return step is not None and self.graphs.offer(forward_batch.out_cache_loc, step)
        if self.graphs is None or not mode.is_decode():
            return True  # the captured graph holds the inner kernel, or this is not decode
        if self.graphs.pending:  # the last offer was never replayed: the workspace lags behind
            self.reuse.forget()
        step = self._plan_or_none(forward_batch, any_size=True, graph=True)
        if step is not None and self.graphs.offer(forward_batch.out_cache_loc, step):
            return True
        self.reuse.forget()  # this step runs eagerly: the workspace will not follow the plan
        return False

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        """Before a graph's capture or replay: DeFT's decode (and verify) graphs load their
        step's plan."""
        graphs = self.graphs
        mode = forward_batch.forward_mode if graphs is not None else None
        decode = graphs is not None and mode.is_decode()
        verify = graphs is not None and graphs.verify is not None and mode.is_target_verify()
        self._step, self._inner_ready = None, True
        self._graph_decode, self._graph_verify = decode and in_capture, verify and in_capture
        if not (decode or verify):
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture=in_capture)
        if verify:  # the draft part's mask rows, from the view's (padded) lengths
            graphs.verify.load(forward_batch)
        if in_capture:  # no tree yet: an empty work list (padding rows read nothing)
            graphs.workspace.load_empty()
            return self.inner.init_forward_metadata_out_graph(forward_batch, in_capture=True)
        self.monitor.timer.start()
        step = graphs.take(forward_batch.out_cache_loc)
        if step is None:  # replay not announced through can_run_graph: read plain chains
            self.reuse.forget()
            step = self._plan_forest(view_chain_forest(forward_batch), forward_batch.batch_size,
                                     draft_len=graphs.verify.draft_len if verify else 0)
        if step.new_slots is not None:  # the same batch one token on: advance the workspace
            ws = graphs.workspace
            if ws.tails is not None:  # the replay does it (init_forward_metadata_in_graph)
                step.plan.tails.advanced_elsewhere()
            else:
                step.plan.extend_tails(step.new_slots, ws.kv_indices, ws.items)
        else:  # raises if the chain plan does not fit
            graphs.workspace.load(step.plan.prefix if step.draft_len else step.plan)
        if self._graph_uses_inner:
            self.inner.init_forward_metadata_out_graph(forward_batch)
        self._step_done(step)
        return None

    def init_forward_metadata_in_graph(self, forward_batch):
        """Recorded at the start of every captured decode forward (SGLang calls it inside the
        capture): with ``DEFT_GRAPH_TAIL_ADVANCE=graph`` the replay itself appends the step's
        ``out_cache_loc`` (the graph's static buffer) to a reused plan's tails."""
        if self._graph_decode and self.graphs.workspace.tails is not None:
            self.graphs.workspace.advance_tails(forward_batch.out_cache_loc)
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

