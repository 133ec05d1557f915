"""Fixtures for the SGLang-facing tests: real SGLang objects on CPU (Triton interpreter)."""
from __future__ import annotations

import types

import pytest

PARALLEL_ONE = dict(
    world_size=1, world_rank=0, tp_size=1, tp_rank=0, pp_size=1, pp_rank=0, moe_ep_size=1,
    moe_ep_rank=0, moe_dp_size=1, moe_dp_rank=0, moe_tp_size=1, moe_tp_rank=0, attn_tp_size=1,
    attn_tp_rank=0, attn_cp_size=1, attn_cp_rank=0, dcp_size=1, dcp_rank=0, attn_dcp_size=1,
    attn_dcp_rank=0, attn_dp_size=1, attn_dp_rank=0)


@pytest.fixture(scope="session")
def sglang():
    return pytest.importorskip("sglang")


@pytest.fixture(scope="session")
def single_rank(sglang):
    """SGLang's parallel context as a single rank (no torch.distributed on CPU)."""
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(**PARALLEL_ONE):
        yield


@pytest.fixture
def sim_factory(single_rank):
    """``make(page_size=1, **kw)`` -> a fresh :class:`SimScheduler`."""
    from .sim import SimScheduler

    def make(**kwargs):
        return SimScheduler(**kwargs)
    return make


def make_runner(sim, **overrides):
    """A ModelRunner stand-in with the attributes SGLang's backends and ForwardBatch read."""
    runner = types.SimpleNamespace(
        device=sim.device, model_config=sim.model_config, server_args=sim.server_args,
        req_to_token_pool=sim.req_to_token_pool, token_to_kv_pool=sim.kv_pool,
        token_to_kv_pool_allocator=sim.allocator, use_mla_backend=False,
        sliding_window_size=None, dtype=sim.dtype, kv_cache_dtype=sim.dtype,
        page_size=sim.page_size, is_draft_worker=False, gpu_id=0, init_new_workspace=False,
        is_generation=True, ngram_embedding_manager=types.SimpleNamespace(enabled=False),
        lora_manager=None, dcp_size=1, dcp_rank=0)
    for key, value in overrides.items():
        setattr(runner, key, value)
    return runner


@pytest.fixture
def deft_patches(sglang):
    """All DeFT patches applied for the test (owner 'test'), reverted afterwards."""
    from deft_sglang import patches

    patches.apply_all(owner="test")
    yield patches
    patches.revert_all(owner="test")
