"""A CPU stand-in for SGLang's scheduler loop, built from SGLang's real objects.

``SimScheduler`` drives the real ``RadixCache``, ``ReqToTokenPool``, ``MHATokenToKVPool``, token
allocators, ``Req`` and ``ScheduleBatch`` (``prepare_for_extend`` / ``prepare_for_decode`` /
``merge_batch`` / ``filter_batch``) through the same calls the scheduler makes, without running
a model: new KV slots are filled with random K/V, sampled tokens are drawn from a seeded RNG.

Prefill results can be processed late (``process=False``), as overlap scheduling does: the next
decode batch is then built and read before ``cache_unfinished_req`` runs.
"""
from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass, field
from typing import Optional

import torch

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
    "torch_dtype": "bfloat16",
}
_model_dir: list = []


def tiny_model_dir() -> str:
    """A directory holding only a tiny Llama ``config.json`` (enough for ServerArgs/ModelConfig)."""
    import json
    import tempfile

    if not _model_dir:
        path = tempfile.mkdtemp(prefix="deft-tiny-llama-")
        with open(f"{path}/config.json", "w") as f:
            json.dump(TINY_LLAMA, f)
        _model_dir.append(path)
    return _model_dir[0]


_published = {}


def sim_device() -> str:
    """CUDA when present (real kernels), else CPU (Triton interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def publish_server_args(page_size: int = 1):
    """Construct ServerArgs for the tiny model and publish them (SGLang reads them)."""
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    if page_size not in _published:
        _published[page_size] = ServerArgs(
            model_path=tiny_model_dir(), load_format="dummy", device=sim_device(),
            attention_backend="triton", page_size=page_size)
    publish(_published[page_size], role="scheduler")
    return _published[page_size]


@dataclass
class Pending:
    """A prefill batch whose results have not been processed yet."""
    batch: object
    reqs: list


@dataclass
class SimScheduler:
    """Real SGLang cache objects on CPU, driven like the scheduler drives them."""

    page_size: int = 1
    num_tokens: int = 8192
    max_reqs: int = 64
    max_context: int = 1024
    dtype: torch.dtype = torch.float16
    num_layers: int = 2
    tp_size: int = 1  # attention heads of one tensor-parallel rank (as SGLang splits them)
    seed: int = 0
    running: Optional[object] = None
    _rid: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self):
        self.device = sim_device()
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache

        self.server_args = publish_server_args(self.page_size)
        self.model_config = ModelConfig.from_server_args(self.server_args)
        self.kv_heads = self.model_config.get_num_kv_heads(self.tp_size)
        self.q_heads = self.model_config.get_max_num_attention_heads() // self.tp_size
        self.head_dim = self.model_config.head_dim
        self.gen = torch.Generator().manual_seed(self.seed)
        self.req_to_token_pool = ReqToTokenPool(size=self.max_reqs, max_context_len=self.max_context,
                                                device=self.device, enable_memory_saver=False)
        self.kv_pool = MHATokenToKVPool(
            size=self.num_tokens, page_size=self.page_size, dtype=self.dtype,
            head_num=self.kv_heads, head_dim=self.head_dim, layer_num=self.num_layers,
            device=self.device, enable_memory_saver=False)
        if self.page_size == 1:
            self.allocator = TokenToKVPoolAllocator(self.num_tokens, self.dtype, self.device,
                                                    self.kv_pool, False)
        else:
            self.allocator = PagedTokenToKVPoolAllocator(self.num_tokens, self.page_size,
                                                         self.dtype, self.device, self.kv_pool, False)
        self.tree_cache = RadixCache(CacheInitParams(
            disable=False, req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool_allocator=self.allocator, page_size=self.page_size))

    # ---- helpers -----------------------------------------------------------------------------
    @property
    def req_to_token(self) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token

    def _fill_kv(self, loc: torch.Tensor) -> None:
        """Write random K/V for the slots ``loc`` in every layer (what a forward would write)."""
        n = loc.numel()
        for layer in range(self.num_layers):
            shape = (n, self.kv_heads, self.head_dim)
            k = torch.randn(shape, generator=self.gen).to(self.device, self.dtype)
            v = torch.randn(shape, generator=self.gen).to(self.device, self.dtype)
            self.kv_pool.k_buffer[layer][loc] = k
            self.kv_pool.v_buffer[layer][loc] = v

    def _token(self) -> int:
        return int(torch.randint(3, 1000, (1,), generator=self.gen))

    def _make_req(self, ids, max_new_tokens: int):
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        params = SamplingParams(max_new_tokens=max_new_tokens)
        params.normalize(None)
        return Req(f"r{next(self._rid)}", "", array("q", ids), params)

    # ---- scheduler steps ---------------------------------------------------------------------
    def submit(self, prompts, max_new_tokens: int = 64, process: bool = True):
        """Prefill ``prompts`` (lists of token ids) as one batch and merge it into the running batch.

        With ``process=False`` the prefill results (first sampled token, ``cache_unfinished_req``)
        are left pending; call :meth:`process` later (overlap scheduling order).
        """
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        reqs = [self._make_req(p, max_new_tokens) for p in prompts]
        for req in reqs:
            req.init_next_round_input(self.tree_cache)
            self.tree_cache.inc_lock_ref(req.last_node)
            req.set_extend_range(len(req.prefix_indices), len(req.full_untruncated_fill_ids))
        batch = ScheduleBatch.init_new(reqs, self.req_to_token_pool, self.allocator,
                                       self.tree_cache, self.model_config, False,
                                       SpeculativeAlgorithm.NONE)
        batch.prepare_for_extend()
        self._fill_kv(batch.out_cache_loc)
        pending = Pending(batch, reqs)
        self._merge(batch)
        if process:
            self.process(pending)
        return pending if not process else reqs

    def process(self, pending: Pending) -> list:
        """Process prefill results: sample the first token and cache the prompt in the tree."""
        from sglang.srt.mem_cache.common import maybe_cache_unfinished_req

        for req in pending.reqs:
            req.output_ids.append(self._token())
            maybe_cache_unfinished_req(req, self.tree_cache)
        return pending.reqs

    def _merge(self, batch) -> None:
        batch.input_ids = torch.zeros(len(batch.reqs), dtype=torch.int64, device=self.device)
        if self.running is None or self.running.is_empty():
            self.running = batch
        else:
            self.running.merge_batch(batch)

    def decode(self):
        """Prepare one decode batch (allocates and writes the new token's slot); returns it.

        Call :meth:`sample` after reading the batch to append the sampled tokens.
        """
        self.running.input_ids = torch.zeros(len(self.running.reqs), dtype=torch.int64,
                                             device=self.device)
        self.running.prepare_for_decode()
        self._fill_kv(self.running.out_cache_loc)
        return self.running

    def sample(self) -> None:
        """Append one sampled token to every running request (decode result processing)."""
        for req in self.running.reqs:
            req.output_ids.append(self._token())

    def finish(self, reqs) -> None:
        """Finish ``reqs``: cache their tokens in the tree, free their rows, drop them."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH
        from sglang.srt.mem_cache.common import release_kv_cache

        for req in reqs:
            req.finished_reason = FINISH_LENGTH(len(req.output_ids))
            release_kv_cache(req, self.tree_cache)
        self.running.filter_batch()

    def batch_rows(self, batch=None) -> tuple[list[int], list[int]]:
        """(req_pool_indices, seq_lens) of a batch as host lists."""
        batch = batch or self.running
        return batch.req_pool_indices_cpu.tolist(), batch.seq_lens_cpu.tolist()
