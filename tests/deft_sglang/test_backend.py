"""DeftAttnBackend on real ForwardBatches (Triton interpreter on CPU) vs SGLang's own backends."""
import dataclasses
import logging

import pytest
import torch

pytest.importorskip("sglang")

from deft_sglang import _logging  # noqa: E402
from deft_sglang.config import DeftConfig  # noqa: E402

from .conftest import make_runner  # noqa: E402

PROMPT = list(range(10, 58))


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _logging.forget()
    yield
    _logging.forget()


def forward_batch(sim, runner, batch=None):
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    return ForwardBatch.init_new(batch or sim.running, runner,
                                 return_hidden_states_before_norm=False)


def layer(sim, layer_id=0, **kwargs):
    from sglang.srt.layers.radix_attention import RadixAttention

    return RadixAttention(num_heads=sim.q_heads, head_dim=sim.head_dim,
                          scaling=sim.head_dim ** -0.5, num_kv_heads=sim.kv_heads,
                          layer_id=layer_id, **kwargs)


def qkv(sim, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch_size, sim.q_heads * sim.head_dim, generator=g).to(sim.device, sim.dtype)
    k = torch.randn(batch_size, sim.kv_heads, sim.head_dim, generator=g).to(sim.device, sim.dtype)
    v = torch.randn(batch_size, sim.kv_heads, sim.head_dim, generator=g).to(sim.device, sim.dtype)
    return q, k, v


def backends(sim, config=None, **runner_overrides):
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from deft_sglang.backend import DeftAttnBackend

    runner = make_runner(sim, **runner_overrides)
    deft = DeftAttnBackend(runner, inner=TritonAttnBackend(runner), config=config)
    return runner, deft, TorchNativeAttnBackend(runner), TritonAttnBackend(runner)


def run(backend, fb, layer_, q, k, v, **kwargs):
    backend.init_forward_metadata(fb)
    return backend.forward_decode(q, k, v, layer_, fb, **kwargs).float()


def fork(sim, suffixes):
    parent = sim.submit([PROMPT], max_new_tokens=2)
    sim.decode()
    sim.sample()
    sim.finish(parent)
    return sim.submit([PROMPT + s for s in suffixes])


@pytest.mark.parametrize("page_size, dtype", [(1, torch.float16), (16, torch.float16),
                                              (1, torch.float32)])
def test_decode_matches_stock(sim_factory, deft_patches, page_size, dtype):
    sim = sim_factory(page_size=page_size, dtype=dtype)
    fork(sim, [[1000 + i, 5] for i in range(4)])
    runner, deft, native, triton = backends(sim)
    atol = 2e-3 if dtype == torch.float16 else 1e-4
    # SGLang's Triton kernel multiplies fp32 in TF32 on a GPU (10-bit mantissa): DeFT is held
    # to torch-native's exact fp32 and to Triton's at TF32 rounding.
    triton_atol = 5e-3 if sim.device == "cuda" and dtype == torch.float32 else atol
    for step in range(3):
        sim.decode()
        fb = forward_batch(sim, runner)
        assert getattr(fb, "deft_batch_info", None) is not None
        for layer_id in range(sim.num_layers):
            lay = layer(sim, layer_id)
            q, k, v = qkv(sim, fb.batch_size, seed=10 * step + layer_id)
            out = run(deft, fb, lay, q, k, v)
            assert deft._step is not None and deft._step.forest.num_tree_nodes >= 1
            saved = sim.kv_pool.k_buffer[layer_id][fb.out_cache_loc]
            assert torch.equal(saved, k)  # the new token's K was stored before attending
            torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=atol, rtol=0)
            torch.testing.assert_close(out, run(triton, fb, lay, q, k, v), atol=triton_atol,
                                       rtol=0)
        sim.sample()
    stats = deft._step.plan.stats()
    assert stats["unique_kv_tokens"] < stats["per_request_kv_tokens"]


def test_batch_without_requests_reads_chains(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1], [2], [3]])
    runner, deft, native, _ = backends(sim)
    sim.decode()
    fb = forward_batch(sim, runner)
    delattr(fb, "deft_batch_info")
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=3)
    out = run(deft, fb, lay, q, k, v)
    assert deft._step is not None and deft._step.forest.num_tree_nodes == 0
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)


def test_padded_batch_and_small_batch_use_stock(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, native, _ = backends(sim, config=DeftConfig(min_batch_size=3))
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=4)
    out = run(deft, fb, lay, q, k, v)  # 2 < min_batch_size
    assert deft._step is None
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)
    deft.config = DeftConfig()
    fb.deft_batch_info = dataclasses.replace(fb.deft_batch_info, reqs=fb.deft_batch_info.reqs[:1])
    out = run(deft, fb, lay, q, k, v)  # request list does not match the batch: stock
    assert deft._step is None
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)


def test_unsupported_layer_uses_stock_with_one_warning(sim_factory, deft_patches, caplog):
    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, _, triton = backends(sim)
    sim.decode()
    fb = forward_batch(sim, runner)
    capped = layer(sim, logit_cap=5.0)
    q, k, v = qkv(sim, fb.batch_size, seed=5)
    with caplog.at_level(logging.WARNING, logger="deft_sglang"):
        out = run(deft, fb, capped, q, k, v)
        run(deft, fb, capped, q, k, v)
    assert deft._step is not None
    lines = [r for r in caplog.records if "logit soft-capping" in r.getMessage()]
    assert len(lines) == 1
    torch.testing.assert_close(out, run(triton, fb, capped, q, k, v), atol=1e-3, rtol=0)


def test_unsupported_model_uses_stock_with_one_warning(sim_factory, deft_patches, caplog):
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    from deft_sglang.backend import DeftAttnBackend

    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner = make_runner(sim, use_mla_backend=True)  # as SGLang flags an MLA model
    with caplog.at_level(logging.WARNING, logger="deft_sglang"):
        deft = DeftAttnBackend(runner, inner=TorchNativeAttnBackend(runner))
        DeftAttnBackend(runner, inner=TorchNativeAttnBackend(runner))
    assert "MLA" in deft.reason
    assert len([r for r in caplog.records if "not supported" in r.getMessage()]) == 1
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=6)
    out = run(deft, fb, lay, q, k, v)
    assert deft._step is None
    torch.testing.assert_close(out, run(TorchNativeAttnBackend(runner), fb, lay, q, k, v))


def test_planning_failure_falls_back(sim_factory, deft_patches, monkeypatch, caplog):
    import deft_sglang.backend as backend_module

    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, native, _ = backends(sim)

    def broken(*args, **kwargs):
        raise RuntimeError("planner exploded")
    monkeypatch.setattr(backend_module, "plan_tree_attention", broken)
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=7)
    with caplog.at_level(logging.WARNING, logger="deft_sglang"):
        out = run(deft, fb, lay, q, k, v)
    assert deft._step is None and "planner exploded" in caplog.text
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)


def test_debug_stats_are_logged(sim_factory, deft_patches, caplog):
    sim = sim_factory()
    fork(sim, [[1], [2], [3]])
    runner, deft, _, _ = backends(sim)
    sim.decode()
    with caplog.at_level(logging.DEBUG, logger="deft_sglang"):
        deft.init_forward_metadata(forward_batch(sim, runner))
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DeFT step")]
    assert line and "unique_kv=" in line[0] and "per_request_kv=" in line[0]
    assert deft.last_stats["num_groups"] >= 1


def test_extend_and_graph_hooks_go_to_the_inner_backend(sim_factory, deft_patches):
    sim = sim_factory()
    runner = make_runner(sim)
    calls = []

    class Inner:
        forward_metadata = "inner-meta"
        custom_attribute = 42

        def __getattr__(self, name):
            def record(*args, **kwargs):
                calls.append(name)
                return name
            return record

    from deft_sglang.backend import DeftAttnBackend

    deft = DeftAttnBackend(runner, inner=Inner(), config=DeftConfig(cuda_graph="fallback"))
    assert deft.custom_attribute == 42 and deft.forward_metadata == "inner-meta"
    deft.forward_metadata = None
    assert deft.inner.forward_metadata is None
    assert deft.forward_extend(None, None, None, None, None) == "forward_extend"
    assert deft.init_cuda_graph_state(8, 8) == "init_cuda_graph_state"
    assert deft.init_forward_metadata_out_graph(None, in_capture=True) == \
        "init_forward_metadata_out_graph"
    assert deft._step is None
    assert deft.get_cuda_graph_seq_len_fill_value() == "get_cuda_graph_seq_len_fill_value"
    assert deft.init_forward_metadata_in_graph(None) == "init_forward_metadata_in_graph"
    assert calls == ["forward_extend", "init_cuda_graph_state", "init_forward_metadata_out_graph",
                     "get_cuda_graph_seq_len_fill_value", "init_forward_metadata_in_graph"]


def test_prefill_extend_matches_triton(sim_factory, deft_patches):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from deft_sglang.backend import DeftAttnBackend

    sim = sim_factory()
    parent = sim.submit([PROMPT], max_new_tokens=2)
    sim.finish(parent)
    runner = make_runner(sim)
    pending = sim.submit([PROMPT + [1, 2, 3], PROMPT + [4, 5]], process=False)
    fb = forward_batch(sim, runner, batch=pending.batch)
    assert fb.forward_mode.is_extend() and not hasattr(fb, "deft_batch_info")
    deft = DeftAttnBackend(runner, inner=TritonAttnBackend(runner))
    triton = TritonAttnBackend(runner)
    lay = layer(sim)
    n = int(fb.extend_seq_lens.sum())
    q, k, v = qkv(sim, n, seed=8)
    outs = []
    for backend in (deft, triton):
        backend.init_forward_metadata(fb)
        outs.append(backend.forward_extend(q, k, v, lay, fb).float())
    torch.testing.assert_close(outs[0], outs[1])


def test_registry_factory_inside_sglang_hybrid_backend(sim_factory, deft_patches):
    """``--decode-attention-backend deft``: SGLang's HybridAttnBackend(prefill=triton, decode=deft)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.layers.attention.hybrid_attn_backend import HybridAttnBackend
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from deft_sglang.backend import DeftAttnBackend

    sim = sim_factory()
    fork(sim, [[1, 2], [3, 4], [5, 6]])
    runner = make_runner(sim)
    deft = ATTENTION_BACKENDS["deft"](runner)
    assert isinstance(deft, DeftAttnBackend) and isinstance(deft.inner, TritonAttnBackend)
    hybrid = HybridAttnBackend(runner, prefill_backend=TritonAttnBackend(runner),
                               decode_backend=deft)
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=9)
    hybrid.init_forward_metadata(fb)
    out = hybrid.forward(q, k, v, lay, fb).float()
    assert deft._step is not None
    ref = run(TorchNativeAttnBackend(runner), fb, lay, q, k, v)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=0)


def test_kernel_failure_switches_to_stock(sim_factory, deft_patches, caplog):
    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, native, _ = backends(sim)
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=11)
    deft.init_forward_metadata(fb)
    assert deft._step is not None and deft.device == sim.req_to_token.device

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    deft._step.plan.run = broken
    with caplog.at_level(logging.WARNING, logger="deft_sglang"):
        out = deft.forward_decode(q, k, v, lay, fb).float()
    assert "kernel exploded" in caplog.text and deft.reason.startswith("decode kernel failure")
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)
    deft.init_forward_metadata(fb)
    assert deft._step is None  # later steps go straight to the stock kernel


def test_strided_q_from_a_fused_qkv(sim_factory, deft_patches):
    """Models pass q as a column slice of a fused qkv projection (row stride > Hq*D)."""
    sim = sim_factory()
    fork(sim, [[1], [2], [3]])
    runner, deft, native, _ = backends(sim)
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=12)
    fused = torch.cat([q, k.flatten(1), v.flatten(1)], dim=1)
    q_view = fused[:, : q.shape[1]]
    assert not q_view.is_contiguous()
    out = run(deft, fb, lay, q_view, k, v)
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)


def test_shadow_check_and_step_stats(sim_factory, deft_patches, caplog):
    sim = sim_factory()
    fork(sim, [[1], [2], [3]])
    config = DeftConfig(shadow_check=True, stats_interval=2)
    runner, deft, native, _ = backends(sim, config=config)
    with caplog.at_level(logging.INFO, logger="deft_sglang"):
        for step in range(2):
            sim.decode()
            fb = forward_batch(sim, runner)
            lay = layer(sim)
            q, k, v = qkv(sim, fb.batch_size, seed=30 + step)
            run(deft, fb, lay, q, k, v)
            sim.sample()
    check = deft.monitor.shadow.summary()
    assert check["max_abs_stock"] > 0 and check["max_abs_diff"] < 2e-3
    lines = [r.getMessage() for r in caplog.records]
    host = [line for line in lines
            if line.startswith("DeFT host time per decode step over the last 2 steps")]
    assert host and "fresh plans read 3 requests, 0 as unshared chains" in host[0]  # 1 plan
    assert "KV per request / unique" in host[0]
    assert any(line.startswith("DeFT shadow check after 2 steps") for line in lines)
    # A wrong result cannot hide: a stock output off by 0.5 shows up as a 0.5 difference.
    deft.monitor.shadow.set_rows(3)
    deft.monitor.shadow.compare(torch.zeros(3, 4, device=sim.device),
                                torch.full((3, 4), 0.5, device=sim.device))
    assert deft.monitor.shadow.summary()["max_abs_diff"] == 0.5


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_rank_decodes_its_own_heads(sim_factory, deft_patches, tp):
    """Under ``--tp N`` each rank's backend sees Hq/N query heads and max(1, Hkv/N) KV heads
    (KV heads replicated when N > Hkv); DeFT must plan and decode with exactly those."""
    from sglang.srt.runtime_context import get_parallel

    from .conftest import PARALLEL_ONE

    rank = dict(PARALLEL_ONE, world_size=tp, tp_size=tp, tp_rank=tp - 1, attn_tp_size=tp,
                attn_tp_rank=tp - 1)
    with get_parallel().override(**rank):
        sim = sim_factory(tp_size=tp)
        fork(sim, [[1000 + i, 5] for i in range(3)])
        runner, deft, native, triton = backends(sim)
        assert (deft.q_heads, deft.kv_heads) == (4 // tp, max(1, 2 // tp))
        assert (deft.q_heads, deft.kv_heads) == (sim.q_heads, sim.kv_heads)
        for step in range(2):
            sim.decode()
            fb = forward_batch(sim, runner)
            lay = layer(sim)
            q, k, v = qkv(sim, fb.batch_size, seed=70 + step)
            out = run(deft, fb, lay, q, k, v)
            assert deft._step is not None and deft._step.plan.num_qo_heads == 4 // tp
            torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)
            torch.testing.assert_close(out, run(triton, fb, lay, q, k, v), atol=2e-3, rtol=0)
            sim.sample()


def test_planner_overrides_reach_the_plans(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1000 + i, 5] for i in range(4)])
    config = DeftConfig(planner=("waves=8", "merge_blocked_max_rows=0"))
    runner, deft, native, _ = backends(sim, config=config)
    sim.decode()
    fb = forward_batch(sim, runner)
    lay = layer(sim, 0)
    q, k, v = qkv(sim, fb.batch_size, seed=3)
    out = run(deft, fb, lay, q, k, v)
    plan_config = deft._step.plan.config
    assert (plan_config.waves, plan_config.merge_blocked_max_rows) == (8.0, 0)
    atol = 1e-4 if q.dtype == torch.float32 else 2e-3  # as test_decode_matches_stock
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=atol, rtol=0)
