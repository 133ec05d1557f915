"""Short private tails attended in the merge (``PlannerConfig.merge_tail_tokens``) or in
phase 1's packs (``pack_tail_tokens``), ``kernels.short_tails``: the same attention as without
them, the same unique KV in the stats, and only leaves that hold one query's KV alone are
taken."""
import random

import numpy as np
import pytest
import torch

from deft_sglang.kernels import (PlannerConfig, StaticTreeAttention, plan_tree_attention,
                                 tree_attention_reference)
from deft_sglang.kernels.short_tails import take_short_tails, tails_per_pack

from .trees import DEVICE, make_forest, random_forest, random_qkv, star

DTYPE = torch.float32 if DEVICE == "cpu" else torch.bfloat16
TOL = 1e-5 if DTYPE == torch.float32 else 2e-2


def plan_for(forest, heads, tail_tokens, config=None, **kwargs):
    """A plan whose tails up to ``tail_tokens`` go to the merge (none packed), or by ``config``."""
    config = config or PlannerConfig(merge_tail_tokens=tail_tokens, pack_tail_tokens=0)
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=heads[0], num_kv_heads=heads[1], head_dim=32,
                               device=DEVICE, config=config, **kwargs)


def packing(pack_rows=64, merge_tail_tokens=0, pack_tail_tokens=64):
    # one SM, one wave: as many tails per pack as the row tile holds
    return PlannerConfig(num_sms=1, waves=1.0, merge_tail_tokens=merge_tail_tokens,
                         pack_tail_tokens=pack_tail_tokens, tail_pack_rows=pack_rows)


def check(forest, heads, tail_tokens, seed=0, **kwargs):
    q, k, v = random_qkv(forest, len(forest.query_node), heads[0], heads[1], 32, DTYPE,
                         seed=seed)
    plan = plan_for(forest, heads, tail_tokens, **kwargs)
    out = plan.run(q, k, v)
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL, rtol=TOL)
    return plan, out


@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (16, 1), (12, 4)])
def test_random_forests_match_the_reference(heads):
    rng = random.Random(f"short-{heads}")
    taken = 0
    for trial in range(8):
        forest = random_forest(rng, max_nodes=14, max_tokens=24, max_queries=12)
        for tail_tokens in (1, 8, 64):
            plan, _ = check(forest, heads, tail_tokens, seed=trial)
            unique = plan_for(forest, heads, 0).stats()["unique_kv_tokens"]
            assert plan.stats()["unique_kv_tokens"] == unique
            taken += plan.stats()["merge_tail_tokens"]
    assert taken > 0


def test_a_fan_out_leaves_phase_1_the_prefix():
    forest = star(prefix=100, branches=20, tail=6)
    plan, _ = check(forest, (8, 2), 8)
    stats = plan.stats()
    assert stats["merge_tail_tokens"] == 20 * 6
    assert stats["max_partials_per_query"] == plan_for(star(100, 20, 0), (8, 2), 0).stats()[
        "max_partials_per_query"]
    assert plan_for(forest, (8, 2), 5).short_tails is None  # tails longer than the bound


def test_short_unshared_requests_are_attended_by_the_merge_alone():
    forest = make_forest([3, 1, 7], [-1, -1, -1], [0, 1, 2])
    plan, _ = check(forest, (8, 2), 16)
    assert plan.num_partials == 0 and plan.stats()["merge_tail_tokens"] == 11


def test_device_indices_give_the_same_plan_and_result():
    forest = star(prefix=40, branches=9, tail=3)
    q, k, v = random_qkv(forest, 9, 8, 2, 32, DTYPE, seed=5)
    on_device = plan_tree_attention(
        forest.parent, forest.indptr, torch.tensor(forest.indices, dtype=torch.int32,
                                                   device=DEVICE),
        forest.query_node, num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE,
        validate=False, config=PlannerConfig(merge_tail_tokens=4))
    on_host = plan_for(forest, (8, 2), 4)
    for a, b in zip(on_device.short_tails, on_host.short_tails):
        assert torch.equal(a, b)
    assert torch.equal(on_device.kv_indices, on_host.kv_indices)
    assert torch.equal(on_device.run(q, k, v), on_host.run(q, k, v))


def test_only_lone_query_leaves_are_taken():
    # node 1 has a child, node 3 two queries, node 4 no tokens, node 5 too many; 2 and 6 qualify
    parent = np.array([-1, 0, 1, 0, 0, 0, 0])
    tokens = np.array([5, 2, 2, 2, 0, 9, 1])
    indptr = np.concatenate([[0], np.cumsum(tokens)])
    query_node = np.array([2, 3, 3, 4, 5, 6, 1])
    indices = np.arange(indptr[-1]) + 100
    tails = take_short_tails(parent, indptr, indices, query_node, max_tokens=4)
    assert tails.tail_indptr.tolist() == [0, 2, 2, 2, 2, 2, 3, 3]
    assert tails.tail_slots.tolist() == [107, 108, 120]  # node 2's slots, then node 6's
    assert np.diff(tails.kv_indptr).tolist() == [5, 2, 0, 2, 0, 9, 0]
    assert tails.kv_indices.tolist() == [100, 101, 102, 103, 104, 105, 106, 109, 110,
                                         111, 112, 113, 114, 115, 116, 117, 118, 119]
    assert take_short_tails(parent, indptr, indices, query_node, max_tokens=0) is None


def test_not_with_tail_slack():
    forest = star(prefix=60, branches=5, tail=3)
    assert plan_for(forest, (8, 2), 8, tail_slack=4).short_tails is None


def test_graph_form_attends_the_tails_and_clears_them_for_the_next_plan():
    config = PlannerConfig(merge_tail_tokens=8)
    static = StaticTreeAttention(max_queries=8, max_items=64, max_kv_tokens=512,
                                 max_partials=128, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                 dtype=DTYPE, device=DEVICE, config=config)
    with_tails, without = star(prefix=60, branches=5, tail=3), star(prefix=60, branches=3, tail=20)
    for forest in (with_tails, without, with_tails):
        plan = plan_for(forest, (8, 2), 8)
        assert (plan.short_tails is not None) == (forest is with_tails)
        assert static.fits(plan)
        static.load(plan)
        num = len(forest.query_node)
        q, k, v = random_qkv(forest, 8, 8, 2, 32, DTYPE, seed=num)  # 8 rows: padded batch
        out = static.run(q, k, v, torch.empty_like(q))
        ref = tree_attention_reference(q[:num], k, v, forest.parent, forest.indptr,
                                       forest.indices, forest.query_node)
        torch.testing.assert_close(out[:num].float(), ref.float(), atol=TOL, rtol=TOL)
        assert torch.equal(out[num:], torch.zeros_like(out[num:]))


@pytest.mark.parametrize("pack_rows", [16, 32, 64])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (16, 1), (12, 4)])
def test_packed_tails_match_the_reference(heads, pack_rows):
    rng = random.Random(f"packed-{heads}-{pack_rows}")
    forests = [star(prefix=50, branches=20, tail=12), star(prefix=9, branches=33, tail=1),
               star(prefix=30, branches=9, tail=40)]
    forests += [random_forest(rng, max_nodes=14, max_tokens=24, max_queries=12)
                for _ in range(4)]
    packed = 0
    for seed, forest in enumerate(forests):
        plan, _ = check(forest, heads, 0, seed=seed, config=packing(pack_rows))
        stats = plan.stats()
        assert stats["unique_kv_tokens"] == plan_for(forest, heads, 0).stats()["unique_kv_tokens"]
        assert stats["merge_tail_tokens"] == 0
        packed += stats.get("packed_tail_tokens", 0)
        if plan.tail_packs is not None:
            num_tails, per_pack, _ = plan.pack_shape
            assert per_pack * (heads[0] // heads[1]) <= max(pack_rows, heads[0] // heads[1])
            assert plan.tail_packs[1] == -(-num_tails // per_pack)
    assert packed > 0


def test_packed_tails_partials_follow_the_plans_own():
    forest = star(prefix=100, branches=6, tail=12)
    prefix_only = plan_for(star(prefix=100, branches=6, tail=0), (8, 2), 0)
    plan, _ = check(forest, (8, 2), 0, config=packing())
    base = prefix_only.num_partials
    assert plan.pack_shape == (6, 6, base) and plan.num_partials == base + 6
    assert torch.equal(plan.merge_slots.cpu(), prefix_only.merge_slots.cpu())  # lists unchanged
    assert plan.tail_packs[3].cpu().tolist() == list(range(base, base + 6))
    assert plan.stats()["max_partials_per_query"] == \
        prefix_only.stats()["max_partials_per_query"] + 1


def test_batch_invariant_plans_never_pack():
    forest = star(prefix=100, branches=6, tail=12)
    config = PlannerConfig(fixed_chunk_tokens=32, merge_tail_tokens=8, pack_tail_tokens=64)
    plan, _ = check(forest, (8, 2), 0, config=config)
    assert plan.tail_packs is None and plan.short_tails is None  # 12 > 8: kept in phase 1


def test_one_long_tail_packs_them_all():
    # a 1-token tail and a 12-token one: some tail exceeds the merge's bound, so all are packed
    forest = make_forest([20, 1, 12], [-1, 0, 0], [1, 2])
    plan, _ = check(forest, (8, 2), 0, config=packing(merge_tail_tokens=8))
    assert plan.stats()["packed_tail_tokens"] == 13 and plan.short_tails is not None
    plan, _ = check(forest, (8, 2), 0, config=packing(merge_tail_tokens=12))
    assert plan.stats()["merge_tail_tokens"] == 13 and plan.tail_packs is None


def test_tails_per_pack_fills_the_tile_but_not_past_the_gpus_programs():
    assert tails_per_pack(1024, 8, 4, 132, 4.0, 64) == 15  # 1024 tails x 8 heads / 528
    assert tails_per_pack(4096, 8, 4, 132, 4.0, 64) == 16  # the tile holds 16 queries' rows
    assert tails_per_pack(40, 8, 4, 132, 4.0, 64) == 1     # few tails: one per pack
    assert tails_per_pack(3, 8, 4, 1, 1.0, 64) == 3        # never more than there are
    assert tails_per_pack(4096, 1, 16, 132, 4.0, 16) == 1  # a query's rows fill the tile


def test_graph_form_switches_between_packs_merge_tails_and_none():
    config = packing(merge_tail_tokens=4)
    static = StaticTreeAttention(max_queries=24, max_items=64, max_kv_tokens=1024,
                                 max_partials=256, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                 dtype=DTYPE, device=DEVICE, config=config)
    forests = [star(prefix=60, branches=20, tail=12), star(prefix=60, branches=5, tail=3),
               star(prefix=60, branches=3, tail=70), star(prefix=30, branches=17, tail=9)]
    modes = []
    for forest in forests:
        plan = plan_for(forest, (8, 2), 0, config=config)
        modes.append("packs" if plan.tail_packs is not None else
                     "merge" if plan.short_tails is not None else "none")
        assert static.fits(plan)
        static.load(plan)
        num = len(forest.query_node)
        q, k, v = random_qkv(forest, 24, 8, 2, 32, DTYPE, seed=num)
        out = static.run(q, k, v, torch.empty_like(q))
        ref = tree_attention_reference(q[:num], k, v, forest.parent, forest.indptr,
                                       forest.indices, forest.query_node)
        torch.testing.assert_close(out[:num].float(), ref.float(), atol=TOL, rtol=TOL)
        assert torch.equal(out[num:], torch.zeros_like(out[num:]))
    assert modes == ["packs", "merge", "none", "packs"]

