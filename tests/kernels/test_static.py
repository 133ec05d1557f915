"""Fixed-buffer DeFT (CUDA-graph form): re-load different trees, compare with the reference."""
import pytest
import torch

from deft_sglang.kernels import (PlannerConfig, StaticTreeAttention, plan_tree_attention,
                                 tree_attention_reference)
from deft_sglang.kernels.partial_attention import launch_partial_attention
from deft_sglang.kernels.planner import SMALL_M

from .trees import DEVICE, make_forest, random_qkv, star

HQ, HKV, D = 8, 2, 32


def workspace(config=None, **overrides):
    caps = dict(max_queries=12, max_items=64, max_kv_tokens=2000, max_partials=256)
    caps.update(overrides)
    return StaticTreeAttention(**caps, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D,
                               dtype=torch.float32, device=DEVICE, num_programs=3, config=config)


def plan_for(forest, config=None):
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, device=DEVICE,
                               config=config)


def reference(forest, q, k, v):
    return tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                    forest.query_node)


TREES = [star(prefix=300, branches=6, tail=11),
         make_forest([40, 0, 9, 1, 77], [-1, 0, 1, 2, 0], [3, 4, 2, 0, 4]),
         make_forest([500] + [3] * 9, [-1] + [0] * 9, list(range(1, 10))),
         make_forest([130, 17, 1, 64], [-1, -1, -1, -1], [2, 0, 3, 1])]  # unshared: 4-row items


def test_reload_different_trees_into_fixed_buffers():
    static = workspace()
    batch = 12  # the captured batch size; each tree uses a prefix of it
    buffers = [t.data_ptr() for t in (static.items, static.merge_slots, static.partial_out)]
    for forest in TREES:
        plan = plan_for(forest)
        assert static.fits(plan)
        static.load(plan)
        q, k, v = random_qkv(forest, batch, HQ, HKV, D, torch.float32, seed=len(forest.parent))
        out = torch.full_like(q, float("nan"))
        static.run(q, k, v, out)
        num = len(forest.query_node)
        ref = reference(forest, q[:num], k, v)
        assert (out[:num] - ref).abs().max().item() < 2e-5
        assert torch.count_nonzero(out[num:]) == 0  # padding rows
    assert buffers == [t.data_ptr() for t in (static.items, static.merge_slots,
                                             static.partial_out)]


def test_repeated_runs_of_one_plan():
    # Phase 1 consumes the work list through counters that each run must start from zero: a
    # second run that found them spent would run no item and merge the first run's partials.
    static = workspace()
    forest = TREES[0]
    static.load(plan_for(forest))
    num = len(forest.query_node)
    for seed in (5, 6):  # new q each run, so stale partials cannot pass for fresh ones
        q, k, v = random_qkv(forest, 12, HQ, HKV, D, torch.float32, seed=seed)
        out = torch.full_like(q, float("nan"))
        static.run(q, k, v, out)
        assert (out[:num] - reference(forest, q[:num], k, v)).abs().max().item() < 2e-5


def test_persistent_launch_needs_work_counters():
    static = workspace()
    forest = TREES[1]
    static.load(plan_for(forest))
    q, k, v = random_qkv(forest, 12, HQ, HKV, D, torch.float32, seed=1)
    block_m, block_n, small_n, warps, stages, _ = static.tiles
    with pytest.raises(ValueError, match="work_counters"):
        launch_partial_attention(q, k, v, static.kv_indices, static.query_order, static.items,
                                 static.partial_out, static.partial_lse, D ** -0.5, SMALL_M,
                                 small_n, block_m, block_n, warps, stages,
                                 item_bounds=static.item_bounds[0], num_programs=3)


@pytest.mark.parametrize("caps", [dict(max_queries=3), dict(max_items=2),
                                  dict(max_kv_tokens=100), dict(max_partials=4)])
def test_plans_beyond_capacity_are_refused(caps):
    static = workspace(**caps)
    plan = plan_for(TREES[0])
    assert not static.fits(plan)
    with pytest.raises(ValueError, match="eagerly"):
        static.load(plan)


def test_empty_load_gives_zeros_and_other_tiles_are_refused():
    static = workspace()
    forest = TREES[1]
    static.load(plan_for(forest))
    static.load_empty()  # what a graph capture loads before any tree exists
    q, k, v = random_qkv(forest, 12, HQ, HKV, D, torch.float32, seed=2)
    out = torch.full_like(q, float("nan"))
    static.run(q, k, v, out)
    assert torch.count_nonzero(out) == 0
    other = plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                                num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, device=DEVICE,
                                config=PlannerConfig(block_n=32))
    assert not static.fits(other)  # its chunks were cut for other kernel tiles


def test_each_plan_goes_to_the_kernel_its_row_tiles_need():
    static = workspace()
    for forest, small_only in ((TREES[0], False), (TREES[3], True)):
        plan = plan_for(forest)
        static.load(plan)
        n = plan.items.shape[1]
        expect = [[0, 0], [0, n]] if small_only else [[0, n], [n, n]]
        assert static.item_bounds.tolist() == expect


def test_split_launches_route_large_and_small_items_and_change_no_result():
    split = PlannerConfig(split_launches=True)
    for seed, forest in enumerate(TREES):
        plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices,
                                   forest.query_node, num_qo_heads=HQ, num_kv_heads=HKV,
                                   head_dim=D, device=DEVICE, config=split)
        q, k, v = random_qkv(forest, len(forest.query_node), HQ, HKV, D, torch.float32,
                             seed=seed)
        whole = plan_for(forest).run(q, k, v)
        assert torch.equal(plan.run(q, k, v), whole)  # the same tiles per item: same bits
        rows = plan.items[3].cpu() * (HQ // HKV)
        n, total = plan.num_large_items, plan.items.shape[1]
        assert bool((rows[:n] > SMALL_M).all()) and bool((rows[n:] <= SMALL_M).all())
        static = workspace()
        static.load(plan)
        assert static.item_bounds.tolist() == [[0, n], [n, total]]
        out = static.run(q, k, v, torch.empty_like(q))
        torch.testing.assert_close(out, reference(forest, q, k, v), atol=1e-4, rtol=0)


def test_bad_capacity():
    with pytest.raises(ValueError, match="max_items"):
        workspace(max_items=0)


@pytest.mark.gpu
def test_cuda_graph_capture_replan_replay():
    config = PlannerConfig()
    static = StaticTreeAttention(max_queries=64, max_items=4096, max_kv_tokens=1 << 16,
                                 max_partials=1 << 14, num_qo_heads=32, num_kv_heads=8,
                                 head_dim=128, dtype=torch.bfloat16, device="cuda",
                                 config=config)
    first, second = star(prefix=3000, branches=40, tail=90), \
        make_forest([900, 300, 300, 20, 20, 20], [-1, 0, 0, 1, 1, 2], [3, 4, 5, 2])
    num_slots = max(first.num_slots, second.num_slots)
    g = torch.Generator(device="cpu").manual_seed(0)
    k = torch.randn(num_slots, 8, 128, generator=g).to("cuda", torch.bfloat16)
    v = torch.randn(num_slots, 8, 128, generator=g).to("cuda", torch.bfloat16)
    q = torch.randn(64, 32, 128, generator=g).to("cuda", torch.bfloat16)
    out = torch.empty_like(q)
    plan = lambda f: plan_tree_attention(f.parent, f.indptr, f.indices, f.query_node,
                                         num_qo_heads=32, num_kv_heads=8, head_dim=128,
                                         device="cuda", config=config)
    static.load(plan(first))
    static.run(q, k, v, out)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static.run(q, k, v, out)
    for forest in (second, first):
        static.load(plan(forest))
        graph.replay()
        torch.cuda.synchronize()
        num = len(forest.query_node)
        ref = reference(forest, q[:num], k, v)
        assert (out[:num].double() - ref.double()).abs().max().item() <= 2e-2


def test_graph_form_results_are_bit_identical_run_to_run():
    """Which program claims an item varies from run to run on a GPU; the result must not."""
    static = workspace()
    forest = TREES[0]
    static.load(plan_for(forest))
    q, k, v = random_qkv(forest, 12, HQ, HKV, D, torch.float32, seed=7)
    first, second = torch.empty_like(q), torch.empty_like(q)
    static.run(q, k, v, first)
    for _ in range(3):
        static.run(q, k, v, second)
        assert torch.equal(first, second)


def test_interleaved_head_order_changes_no_result():
    # Eager and graph form are each compared with themselves: their merges may tile the
    # partials differently (the graph form's merge shape is fixed at construction), which
    # changes the rounding, not the result.
    head_major = PlannerConfig(interleave_heads=False)
    static = {True: workspace(config=PlannerConfig(interleave_heads=True)),
              False: workspace(config=head_major)}
    for seed, forest in enumerate(TREES):
        q, k, v = random_qkv(forest, len(forest.query_node), HQ, HKV, D, torch.float32,
                             seed=seed)
        whole = plan_for(forest, head_major).run(q, k, v)
        plan = plan_for(forest)  # interleaved: the default
        assert torch.equal(plan.run(q, k, v), whole)  # each (item, head) computed alike
        graph_form = {}
        for interleaved, workspace_ in static.items():
            workspace_.load(plan_for(forest, workspace_.config))
            graph_form[interleaved] = workspace_.run(q, k, v, torch.empty_like(q))
        assert torch.equal(graph_form[True], graph_form[False])
        torch.testing.assert_close(graph_form[True], whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocked_max_rows", [0, 1 << 20])  # sequential loop, blocked loop
def test_both_merge_loops_in_the_graph_form(blocked_max_rows):
    config = PlannerConfig(merge_blocked_max_rows=blocked_max_rows)
    static = workspace(config=config)
    for seed, forest in enumerate(TREES):
        q, k, v = random_qkv(forest, len(forest.query_node), HQ, HKV, D, torch.float32,
                             seed=seed)
        static.load(plan_for(forest, config))
        got = static.run(q, k, v, torch.empty_like(q))
        want = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                        forest.query_node)
        assert (got - want).abs().max().item() < 2e-5
