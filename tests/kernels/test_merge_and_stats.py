"""LSE merge == attention over concatenated KV; plan IO statistics; exact-once loading."""
import os
import random

import numpy as np
import pytest
import torch

from deft_sglang.kernels import (attention_with_lse, merge_attention_states,
                                 merge_states_reference, plan_tree_attention)

from .trees import DEVICE, make_forest, random_forest, star


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [1, 7, 19])
def test_merging_two_partials_equals_attention_over_concatenation(dtype, split):
    g = torch.Generator().manual_seed(split)
    q = torch.randn(8, 32, generator=g)
    k = torch.randn(20, 2, 32, generator=g)
    v = torch.randn(20, 2, 32, generator=g)
    scale = 32 ** -0.5
    o_a, lse_a = attention_with_lse(q, k[:split], v[:split], scale)
    o_b, lse_b = attention_with_lse(q, k[split:], v[split:], scale)
    o_all, lse_all = attention_with_lse(q, k, v, scale)
    ref_o, ref_lse = merge_states_reference(o_a, lse_a, o_b, lse_b)
    assert torch.allclose(ref_o, o_all, atol=1e-10) and torch.allclose(ref_lse, lse_all)
    out, lse = merge_attention_states(o_a.to(DEVICE, dtype), lse_a.float().to(DEVICE),
                                      o_b.to(DEVICE, dtype), lse_b.float().to(DEVICE))
    out, lse = out.cpu(), lse.cpu()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert out.dtype == dtype
    assert (out.double() - o_all).abs().max().item() < tol
    assert (lse.double() - lse_all).abs().max().item() < 1e-5


def test_merge_with_an_empty_side():
    o = torch.randn(3, 4, 16, device=DEVICE)
    lse = torch.randn(3, 4, device=DEVICE)
    empty_lse = torch.full((3, 4), float("-inf"), device=DEVICE)
    out, merged = merge_attention_states(o, lse, torch.zeros_like(o), empty_lse)
    assert torch.allclose(out, o, atol=1e-6) and torch.allclose(merged, lse)


def test_merge_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        merge_attention_states(torch.zeros(2, 8), torch.zeros(2), torch.zeros(3, 8), torch.zeros(3))


def plan_for(forest, hq=32, hkv=8, d=128, **kwargs):
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, device="cpu",
                               **kwargs)


def test_stats_few_shot_tree_counts():
    forest = star(prefix=4000, branches=50, tail=400)
    stats = plan_for(forest).stats()
    assert stats["unique_kv_tokens"] == 4000 + 50 * 400
    assert stats["per_request_kv_tokens"] == 50 * 4400
    assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]
    assert stats["num_groups"] == 51
    assert stats["partial_bytes"] == stats["num_partials"] * 32 * (128 * 2 + 4)  # bf16 partials


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("heads", [(32, 8), (16, 1), (4, 4)])
def test_each_unique_token_loaded_once_up_to_64_queries(seed, heads):
    rng = random.Random(seed)
    forest = random_forest(rng, max_nodes=30, max_tokens=3000, max_queries=64)
    stats = plan_for(forest, hq=heads[0], hkv=heads[1]).stats()
    assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]


def test_unused_nodes_are_not_loaded():
    forest = make_forest([10, 20, 30], [-1, 0, 0], [1])
    stats = plan_for(forest).stats()
    assert stats["unique_kv_tokens"] == 30 and stats["loaded_kv_tokens"] == 30


def test_huge_fanout_splits_into_row_groups_and_reports_their_rereads():
    forest = star(prefix=2048, branches=1024, tail=32)
    stats = plan_for(forest).stats()
    assert stats["unique_kv_tokens"] == 2048 + 1024 * 32
    assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]
    # 1024 queries x 4 heads in row groups of 64 rows: 64 passes over the prefix, 63 re-reads
    assert stats["l2_reread_kv_tokens"] == 63 * 2048
    whole = plan_for(forest, config=__import__("deft_sglang.kernels", fromlist=["x"])
                     .PlannerConfig(reread_min_queries=1 << 30)).stats()
    assert whole["loaded_kv_tokens"] == whole["unique_kv_tokens"]
    assert whole["partial_bytes"] > stats["partial_bytes"]


def test_row_groups_of_big_nodes_run_chunk_major():
    """Without ``reread_needs_node_in_l2`` a node too big for L2 is split too, and the row groups
    of each chunk sit next to each other in the work order (so they share it in L2)."""
    from deft_sglang.kernels import PlannerConfig, tree_attention_reference

    from .trees import random_qkv
    forest = star(prefix=600, branches=12, tail=5)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    tiny_l2 = dict(reread_min_queries=4, reread_group_rows=16, l2_bytes=1024, block_n=16,
                   waves=64.0, min_chunk_partial_ratio=0.01)
    plans = {whole: plan_tree_attention(*args, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                        device=DEVICE, config=PlannerConfig(
                                            reread_needs_node_in_l2=whole, **tiny_l2))
             for whole in (True, False)}
    assert plans[True].stats()["loaded_kv_tokens"] == plans[True].stats()["unique_kv_tokens"]
    split = plans[False]
    # 12 queries, 4 per group: the first group loads the prefix, the other two re-read it
    assert split.stats()["loaded_kv_tokens"] == 600 + 12 * 5
    assert split.stats()["l2_reread_kv_tokens"] == 2 * 600
    kv_begin, _, q_begin, q_count, _ = split.items.cpu().numpy()
    prefix = np.nonzero(q_count == 4)[0]  # the prefix's row groups (tails have one query)
    chunks = kv_begin[prefix]
    assert len(set(chunks.tolist())) * 3 == len(prefix)
    for start in range(0, len(prefix), 3):  # each chunk's three row groups back to back
        assert np.all(prefix[start:start + 3] == prefix[start] + np.arange(3))
        assert len(set(chunks[start:start + 3].tolist())) == 1
        assert sorted(q_begin[prefix[start:start + 3]].tolist()) == [0, 4, 8]
    q, k, v = random_qkv(forest, 12, 8, 2, 32, torch.float32)
    want = tree_attention_reference(q, k, v, *args)
    for plan in plans.values():
        assert (plan.run(q, k, v) - want).abs().max().item() < 2e-5


@pytest.mark.parametrize("merge_shape, stages", [((1, 1), 0), ((4, 2), 0), ((8, 16), 0),
                                                 ((1, 1), 1), ((2, 1), 3), ((8, 1), 2)])
def test_merge_launch_shapes_agree(merge_shape, stages):
    from deft_sglang.kernels import PlannerConfig, tree_attention_reference

    from .trees import random_qkv
    forest = star(prefix=90, branches=5, tail=7)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE,
                               config=PlannerConfig(block_n=16, waves=64.0, merge_stages=stages,
                                                    min_chunk_partial_ratio=0.01,
                                                    merge_blocked_max_rows=0))
    assert plan.stats()["max_partials_per_query"] > 2  # the merge has work to pipeline
    plan.merge_shape = merge_shape
    q, k, v = random_qkv(forest, 5, 8, 2, 32, torch.float32)
    err = (plan.run(q, k, v) - tree_attention_reference(q, k, v, *args)).abs().max().item()
    assert err < 2e-5


def test_small_batches_merge_with_the_blocked_loop(monkeypatch):
    from deft_sglang.kernels import PlannerConfig, planner

    cfg = PlannerConfig(merge_stages=3, merge_blocked_max_rows=64)
    assert (cfg.merge_stages_for(64), cfg.merge_stages_for(65)) == (0, 3)
    assert PlannerConfig(merge_blocked_max_rows=0).merge_stages_for(1) == 3
    # batch-invariant plans keep one summation order whatever the batch size
    assert PlannerConfig(fixed_chunk_tokens=64).merge_stages_for(1) == 3

    from .trees import random_qkv
    forest = star(prefix=90, branches=5, tail=7)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    seen, real = [], planner.launch_merge
    monkeypatch.setattr(planner, "launch_merge",
                        lambda *a, **kw: seen.append(kw["stages"]) or real(*a, **kw))
    q, k, v = random_qkv(forest, 5, 8, 2, 32, torch.float32)
    for rows_bound, stages in ((40, 0), (39, 3)):  # 5 queries x 8 heads = 40 rows
        plan = plan_tree_attention(*args, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                   device=DEVICE, config=PlannerConfig(
                                       block_n=16, merge_blocked_max_rows=rows_bound))
        plan.run(q, k, v)
        assert seen[-1] == stages


@pytest.mark.parametrize("with_extra", [False, True])
def test_sequential_merge_equals_blocked_merge(with_extra):
    from deft_sglang.kernels.merge import launch_merge
    gen = torch.Generator().manual_seed(3)
    num_partials, queries, heads, dim = 13, 4, 6, 16
    partial_out = torch.randn(num_partials, heads, dim, generator=gen).to(DEVICE)
    partial_lse = (4 * torch.randn(num_partials, heads, generator=gen)).to(DEVICE)
    partial_lse[5, 2] = -float("inf")  # an empty partial
    # query 2 owns no partial: zeros, or its extra partial alone
    indptr = torch.tensor([0, 5, 9, 9, 13], dtype=torch.int32, device=DEVICE)
    slots = torch.randperm(num_partials, generator=gen).to(torch.int32).to(DEVICE)
    extra = None
    if with_extra:
        extra = (torch.randn(queries, heads, dim, generator=gen).to(DEVICE),
                 torch.randn(queries, heads, generator=gen).to(DEVICE))
    outs = []
    for stages, shape in ((0, (2, 4)), (2, (2, 1)), (1, (8, 1))):
        out = torch.full((queries, heads, dim), float("nan"), device=DEVICE)
        launch_merge(partial_out, partial_lse, indptr, slots, out, *shape, extra=extra,
                     stages=stages)
        outs.append(out)
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)
    assert torch.all(outs[0][2] == 0) != with_extra


def test_merge_pdl_needs_a_hopper_gpu_and_compiled_kernels():
    from deft_sglang.kernels import PlannerConfig
    forest = star(prefix=90, branches=5, tail=7)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    hopper = DEVICE != "cpu" and torch.cuda.get_device_capability()[0] >= 9
    for asked in (False, True):
        plan = plan_tree_attention(*args, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                   device=DEVICE, config=PlannerConfig(merge_pdl=asked))
        assert plan.merge_pdl == (asked and hopper and os.environ.get("TRITON_INTERPRET") != "1")
