"""Oracle tests: DeFT tree attention == plain attention over each query's root-to-node KV."""
import random

import pytest
import torch

from deft_sglang.kernels import (PlannerConfig, plan_tree_attention, tree_attention,
                                 tree_attention_reference)

from .trees import DEVICE, chain, make_forest, random_forest, random_qkv, star

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def run_case(forest, hq, hkv, d, dtype, seed=0, config=None, device=DEVICE):
    q, k, v = random_qkv(forest, len(forest.query_node), hq, hkv, d, dtype, device, seed)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    if config is None:
        out = tree_attention(q, k, v, *args)
    else:
        plan = plan_tree_attention(*args, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d,
                                   device=device, config=config, num_slots=forest.num_slots)
        out = plan.run(q, k, v)
    ref = tree_attention_reference(q, k, v, *args)
    assert out.dtype == q.dtype and out.shape == q.shape
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err}"
    return out


SHAPES = {
    "chain": chain(depth=5, tokens=9, queries=2),
    "star": star(prefix=70, branches=6, tail=5),
    "deep_star": make_forest([33, 1, 0, 17, 4, 4, 1], [-1, 0, 1, 2, 3, 3, 0], [4, 5, 6, 2, 1]),
    "empty_nodes": make_forest([0, 12, 0, 0, 5], [-1, 0, 1, 2, 2], [3, 4, 2]),
    "one_token_nodes": make_forest([1] * 8, [-1, 0, 1, 1, 2, 3, 4, 5], [6, 7, 4, 1]),
    "forest": make_forest([20, 3, 15, 6, 2], [-1, 0, -1, 2, -1], [1, 3, 4, 0]),
    "duplicate_queries": make_forest([40, 8], [-1, 0], [1, 1, 1, 0]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("heads", [(4, 4), (4, 1), (8, 2), (16, 1)])
def test_shapes_fp16(shape, heads):
    run_case(SHAPES[shape], heads[0], heads[1], 64, torch.float16)


@pytest.mark.parametrize("d", [16, 48, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_head_dims(d, dtype):
    run_case(SHAPES["deep_star"], 8, 2, d, dtype)


def test_bf16_on_cpu_upcasts():
    run_case(SHAPES["star"], 8, 1, 64, torch.bfloat16)


@pytest.mark.parametrize("seed", range(300))
def test_random_forests(seed):
    rng = random.Random(seed)
    forest = random_forest(rng)
    hkv = rng.choice([1, 2, 4])
    group = rng.choice([1, 2, 3, 4, 8, 16])
    d = rng.choice([16, 32, 64, 80])
    dtype = rng.choice([torch.float16, torch.float32])
    run_case(forest, hkv * group, hkv, d, dtype, seed=seed)


CONFIGS = [
    PlannerConfig(block_n=16, waves=64.0, min_chunk_partial_ratio=0.01),  # many tiny chunks
    PlannerConfig(block_n=32),
    PlannerConfig(block_n=128, waves=0.5),                                 # one chunk per node
    PlannerConfig(reread_min_queries=2, reread_group_rows=16),            # re-reading row groups
]


@pytest.mark.parametrize("config", CONFIGS, ids=["tiny_chunks", "bn32", "whole_nodes", "reread"])
def test_result_does_not_depend_on_chunking(config):
    forest = star(prefix=150, branches=9, tail=21)
    base = run_case(forest, 8, 2, 64, torch.float32)
    other = run_case(forest, 8, 2, 64, torch.float32, config=config)
    assert (base - other).abs().max().item() < 1e-5


def test_query_on_empty_path_gets_zeros():
    forest = make_forest([0, 0, 6], [-1, 0, -1], [1, 2])
    out = run_case(forest, 2, 1, 16, torch.float32)
    assert torch.count_nonzero(out[0]) == 0


def test_many_queries_wide_fanout():
    forest = star(prefix=64, branches=96, tail=2)
    run_case(forest, 4, 1, 32, torch.float16)


def test_explicit_sm_scale_and_out_buffer():
    forest = SHAPES["star"]
    q, k, v = random_qkv(forest, len(forest.query_node), 4, 2, 32, torch.float32)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    plan.run(q, k, v, sm_scale=0.3, out=out)
    ref = tree_attention_reference(q, k, v, *args, sm_scale=0.3)
    assert (out - ref).abs().max().item() < 2e-5


def test_plan_reused_across_layers():
    forest = SHAPES["deep_star"]
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE)
    for layer in range(3):
        q, k, v = random_qkv(forest, len(forest.query_node), 4, 2, 32, torch.float32, seed=layer)
        ref = tree_attention_reference(q, k, v, *args)
        assert (plan.run(q, k, v) - ref).abs().max().item() < 2e-5


def test_unvalidated_device_indices_are_used_in_place():
    forest = SHAPES["deep_star"]
    indices = torch.tensor(forest.indices, dtype=torch.int32, device=DEVICE)
    args = (forest.parent, forest.indptr, indices, forest.query_node)
    # (with short tails taken out of the forest its indices are gathered anew instead)
    plan = plan_tree_attention(*args, num_qo_heads=4, num_kv_heads=2, head_dim=32, device=DEVICE,
                               validate=False,
                               config=PlannerConfig(merge_tail_tokens=0, pack_tail_tokens=0))
    q, k, v = random_qkv(forest, len(forest.query_node), 4, 2, 32, torch.float32)
    assert plan.kv_indices.data_ptr() == indices.data_ptr()
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    assert (plan.run(q, k, v) - ref).abs().max().item() < 2e-5


def test_register_cap_still_exact():
    """``max_registers`` only changes how the kernel is compiled (the interpreter ignores it)."""
    run_case(star(prefix=70, branches=5, tail=9), 8, 2, 32, torch.float32,
             config=PlannerConfig(max_registers=128))


def test_partial_floor_never_starves_the_gpu():
    """A wide group on one KV head: the partial-write floor would leave fewer programs than
    SMs, so the planner cuts the chunks by load balance alone (and stays exact)."""
    forest = star(prefix=2000, branches=40, tail=3)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    shape = dict(num_qo_heads=16, num_kv_heads=1, head_dim=32, device=DEVICE)
    floor_only = PlannerConfig(num_sms=4)  # few SMs: the floor binds, nothing is starved
    many_sms = PlannerConfig(num_sms=132)
    few = plan_tree_attention(*args, config=floor_only, **shape).stats()["num_work_items"]
    many = plan_tree_attention(*args, config=many_sms, **shape).stats()["num_work_items"]
    assert few < 132 and many > few
    run_case(forest, 16, 1, 32, torch.float32, config=many_sms)


def test_capped_partial_floor_still_exact():
    forest = star(prefix=300, branches=12, tail=9)
    run_case(forest, 16, 1, 32, torch.float32, config=PlannerConfig(max_floor_over_want=1.0))
