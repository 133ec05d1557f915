"""The merge fused into phase 1 (``PlannerConfig.fused_merge``): the program that writes a
query's last partial merges it.  Same results as the merge launch, run after run, with the
counters left at zero; plans that cannot fuse fall back to the launch."""
from __future__ import annotations

import random

import pytest
import torch

from deft_sglang.kernels import PlannerConfig, plan_tree_attention, tree_attention_reference

from .trees import DEVICE, make_forest, random_forest, random_qkv, star

DTYPE = torch.float32 if DEVICE == "cpu" else torch.bfloat16
TOL = 1e-5 if DTYPE == torch.float32 else 2e-2


def plan_for(forest, heads, head_dim, fused, **overrides):
    config = PlannerConfig(fused_merge=fused, **overrides)
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=heads[0], num_kv_heads=heads[1], head_dim=head_dim,
                               device=DEVICE, num_slots=forest.num_slots, config=config)


@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (16, 1), (12, 4)])
@pytest.mark.parametrize("row_groups", [False, True])
def test_fused_merge_matches_the_merge_launch_and_the_reference(heads, row_groups):
    rng = random.Random(f"{heads}-{row_groups}")
    knobs = dict(reread_min_queries=2, reread_group_rows=16) if row_groups else {}
    for trial in range(6):
        forest = random_forest(rng, max_nodes=12, max_tokens=80, max_queries=14, empty_prob=0.0)
        q, k, v = random_qkv(forest, len(forest.query_node), heads[0], heads[1], 32, DTYPE,
                             seed=trial)
        fused = plan_for(forest, heads, 32, True, **knobs)
        launched = plan_for(forest, heads, 32, False, **knobs)
        assert fused.fused_merge and not launched.fused_merge
        first = fused.run(q, k, v)
        again = fused.run(q, k, v)  # the counters must be back at zero for this to hold
        assert torch.equal(first, again)
        assert int(fused._merge_counters().abs().sum()) == 0
        torch.testing.assert_close(first.float(), launched.run(q, k, v).float(), atol=TOL,
                                   rtol=TOL)
        ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                       forest.query_node)
        torch.testing.assert_close(first.float(), ref.float(), atol=TOL, rtol=TOL)


def test_a_wide_group_merges_once_per_query_and_head():
    forest = star(prefix=90, branches=40, tail=7)  # 40 queries: more than one block of 16
    q, k, v = random_qkv(forest, 40, 8, 2, 32, DTYPE, seed=3)
    plan = plan_for(forest, (8, 2), 32, True, reread_min_queries=1 << 30)
    out = plan.run(q, k, v)
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL, rtol=TOL)


def test_a_query_without_partials_falls_back_to_the_merge_launch():
    forest = make_forest([6, 0], [-1, -1], [0, 1])  # query 1's path holds no token
    q, k, v = random_qkv(forest, 2, 4, 2, 32, DTYPE, seed=1)
    plan = plan_for(forest, (4, 2), 32, True)
    assert not plan.fused_merge
    out = plan.run(q, k, v)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL, rtol=TOL)
