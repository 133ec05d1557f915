"""DeFT decode under CUDA graphs, on CPU: the capture-time workspace, the plan hand-off from
``can_run_graph`` to ``init_forward_metadata_out_graph``, and the replayed kernels' results.

A real graph replay re-runs the captured launches: the KV store and ``workspace.run`` on the
padded batch. ``replay`` below runs exactly those on the loaded workspace."""
import types

import pytest
import torch

pytest.importorskip("sglang")

from deft_sglang.config import DeftConfig  # noqa: E402

from .test_backend import backends, fork, forward_batch, layer, qkv, run  # noqa: E402

MAX_BS = 8


def replay_view(fb, max_bs=MAX_BS):
    """What SGLang's ``build_replay_fb_view`` hands the backend: padded buffers, the batch's
    own ``out_cache_loc``."""
    pad = max_bs - fb.batch_size
    return types.SimpleNamespace(
        batch_size=max_bs, forward_mode=fb.forward_mode, num_padding=pad,
        out_cache_loc=fb.out_cache_loc,
        req_pool_indices=torch.cat([fb.req_pool_indices, fb.req_pool_indices.new_zeros(pad)]),
        seq_lens=torch.cat([fb.seq_lens, fb.seq_lens.new_ones(pad)]),
        seq_lens_cpu=torch.cat([fb.seq_lens_cpu, fb.seq_lens_cpu.new_ones(pad)]))


def replay(sim, deft, fb, lay, q, k, v):
    """The captured launches of one layer, on a padded batch of MAX_BS rows."""
    sim.kv_pool.set_kv_buffer(lay, fb.out_cache_loc, k, v)
    padded = q.new_zeros(MAX_BS, sim.q_heads, sim.head_dim)
    padded[:fb.batch_size] = q.view(-1, sim.q_heads, sim.head_dim)
    out = torch.full_like(padded, float("nan"))
    deft.graphs.workspace.run(padded, sim.kv_pool.k_buffer[lay.layer_id],
                              sim.kv_pool.v_buffer[lay.layer_id], out, sm_scale=lay.scaling)
    return out


def check_replay(sim, deft, native, fb, seed: int) -> None:
    """Prepare the replay of ``fb`` as SGLang does and check the captured launches' result:
    stock's attention on the real rows, zeros on the padding rows."""
    deft.init_forward_metadata_out_graph(replay_view(fb))
    if deft.graphs.workspace.tails is not None:  # captured by init_forward_metadata_in_graph
        deft.graphs.workspace.advance_tails(fb.out_cache_loc)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=seed)
    out = replay(sim, deft, fb, lay, q, k, v)
    expect = run(native, fb, lay, q, k, v).view(-1, sim.q_heads, sim.head_dim)
    torch.testing.assert_close(out[:fb.batch_size].float(), expect, atol=2e-3, rtol=0)
    assert torch.count_nonzero(out[fb.batch_size:]) == 0  # padding rows


def captured(sim, deft, runner):
    """Set up graph state and run one layer as a capture does (empty work list: zeros)."""
    deft.init_cuda_graph_state(MAX_BS, MAX_BS)
    assert deft.graphs is not None
    sim.decode()
    fb = forward_batch(sim, runner)
    deft.init_forward_metadata_out_graph(fb, in_capture=True)
    deft.init_forward_metadata_in_graph(fb)  # what SGLang records first in every capture
    q, k, v = qkv(sim, fb.batch_size, seed=1)
    out = deft.forward_decode(q, k, v, layer(sim), fb)
    assert torch.count_nonzero(out) == 0
    sim.sample()
    return fb


def replay_steps(sim, deft, native, runner, steps: int, join_at: int, seed: int) -> None:
    """Announce and replay ``steps`` decode steps, checking each against stock; at step
    ``join_at`` a new branch joins (a different tree in the same buffers)."""
    for step in range(steps):
        if step == join_at:
            sim.submit([list(range(10, 58)) + [7, 7]])
        sim.decode()
        fb = forward_batch(sim, runner)
        assert deft.deft_prepare_graph_replay(fb)
        check_replay(sim, deft, native, fb, seed=seed + step)
        sim.sample()


def test_replays_match_stock_on_changing_trees(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1000 + i, 5] for i in range(3)])
    runner, deft, native, _ = backends(sim)
    captured(sim, deft, runner)
    replay_steps(sim, deft, native, runner, steps=3, join_at=2, seed=20)
    assert deft.graphs.replays == 3 and deft.graphs.refused == 0
    assert deft.reuse.reused == 1  # step 1 advanced the workspace; step 2 had a new request


@pytest.mark.parametrize("where", ["host", "graph"])
def test_reused_plans_advance_in_replays(sim_factory, deft_patches, where):
    """DEFT_GRAPH_TAIL_ADVANCE: the host's copies or the captured kernel advance a reused plan;
    both give stock's result through used-up slack (re-plans) and a joining request."""
    sim = sim_factory()
    fork(sim, [[1000 + i, 5] for i in range(3)])
    config = DeftConfig(tail_slack=2, graph_tail_advance=where)
    runner, deft, native, _ = backends(sim, config=config)
    captured(sim, deft, runner)
    assert (deft.graphs.workspace.tails is not None) == (where == "graph")
    replay_steps(sim, deft, native, runner, steps=7, join_at=5, seed=40)
    # steps: fresh, 2 advanced, re-planned (slack used up), 1 advanced, fresh (join), advanced
    assert deft.reuse.reused == 4 and deft.reuse.fresh == 3


def test_plan_too_large_for_the_workspace_runs_eagerly(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, native, _ = backends(sim)
    captured(sim, deft, runner)
    deft.graphs.workspace.capacity["partials"] = 1
    sim.decode()
    fb = forward_batch(sim, runner)
    assert not deft.deft_prepare_graph_replay(fb)
    assert deft.graphs.refused == 1
    lay = layer(sim)
    q, k, v = qkv(sim, fb.batch_size, seed=5)
    out = run(deft, fb, lay, q, k, v)  # the eager path SGLang then takes
    assert deft._step is not None
    torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)


def test_unannounced_replay_reads_chains(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1], [2], [3]])
    runner, deft, native, _ = backends(sim)
    captured(sim, deft, runner)
    sim.decode()
    fb = forward_batch(sim, runner)
    check_replay(sim, deft, native, fb, seed=6)  # can_run_graph was not asked
    assert deft.graphs.replays == 0


def test_fallback_mode_leaves_graphs_to_the_inner_backend(sim_factory, deft_patches):
    sim = sim_factory()
    runner, deft, _, _ = backends(sim, config=DeftConfig(cuda_graph="fallback"))
    deft.init_cuda_graph_state(MAX_BS, MAX_BS)
    assert deft.graphs is None
    fork(sim, [[1], [2]])
    sim.decode()
    fb = forward_batch(sim, runner)
    assert deft.deft_prepare_graph_replay(fb)  # the captured graph holds the stock kernel
    deft.init_forward_metadata_out_graph(fb, in_capture=True)
    assert not deft._graph_decode and deft._step is None


def test_graph_runner_patch_asks_the_backend():
    from deft_sglang.patches.graph_runner import backend_accepts

    def broken(fb):
        raise RuntimeError("boom")

    fb = object()
    assert backend_accepts(types.SimpleNamespace(attn_backend=object()), fb)
    assert not backend_accepts(types.SimpleNamespace(attn_backend=types.SimpleNamespace(
        deft_prepare_graph_replay=lambda f: False)), fb)
    assert not backend_accepts(types.SimpleNamespace(attn_backend=types.SimpleNamespace(
        deft_prepare_graph_replay=broken)), fb)


def test_workspace_capacity_bounds():
    from deft_sglang.graph import graph_capacity

    cap = graph_capacity(64, 10000, q_heads=32, head_dim=128, partial_elem_bytes=2,
                         workspace_mb=256)
    assert cap.max_queries == 64 and cap.max_kv_tokens == 20000
    assert cap.max_partials == (256 << 20) // (32 * (128 * 2 + 4))
    with pytest.raises(ValueError, match="max_bs"):
        graph_capacity(0, 10, 1, 16, 2, 16)


def test_an_offer_never_replayed_is_not_advanced_from(sim_factory, deft_patches):
    sim = sim_factory()
    fork(sim, [[1], [2]])
    runner, deft, native, _ = backends(sim)
    captured(sim, deft, runner)
    for step in range(3):
        sim.decode()
        fb = forward_batch(sim, runner)
        assert deft.deft_prepare_graph_replay(fb)
        if step == 1:  # SGLang asked but did not replay: this step's token never reached the
            sim.sample()  # workspace, so the next step must be planned afresh
            continue
        check_replay(sim, deft, native, fb, seed=90 + step)
        sim.sample()
    assert deft.reuse.reused == 1  # step 1 advanced; step 2 did not advance from it
