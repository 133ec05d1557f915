"""Block streams (``PlannerConfig.stream_small_items``): the small items walked several to a
program give the per-item kernel's results, on every tree shape, and the stream shape covers
every item once."""
import random

import pytest
import torch

from deft_sglang.kernels import (PlannerConfig, StaticTreeAttention, plan_tree_attention,
                                 tree_attention_reference)
from deft_sglang.kernels.block_streams import MAX_ITEMS_PER_STREAM, stream_shape

from .test_tails import EXTENDABLE, advance, reference, with_spare_slots
from .test_tree_attention import SHAPES, TOL
from .trees import DEVICE, make_forest, random_forest, random_qkv, star

# Few SMs, so that CPU-sized trees still put several items in each stream.
STREAMS = dict(stream_small_items=True, num_sms=2)
SPLIT = dict(split_launches=True, num_sms=2)  # the same work list, small items one per program


def plan_and_run(forest, hq, hkv, d, dtype, seed=0, **config):
    q, k, v = random_qkv(forest, len(forest.query_node), hq, hkv, d, dtype, DEVICE, seed)
    plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, device=DEVICE,
                               num_slots=forest.num_slots, config=PlannerConfig(**config))
    out = plan.run(q, k, v)
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err}"
    return plan, out


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (16, 1)])
def test_streams_equal_the_item_kernel(shape, heads):
    plan, out = plan_and_run(SHAPES[shape], *heads, 32, torch.float32, **STREAMS)
    _, per_item = plan_and_run(SHAPES[shape], *heads, 32, torch.float32, **SPLIT)
    # the same blocks in the same order within each item: the same partials, bit for bit
    assert torch.equal(out, per_item)


@pytest.mark.parametrize("seed", range(40))
def test_random_forests_stream_exactly(seed):
    rng = random.Random(seed)
    forest = random_forest(rng, max_tokens=150)
    hkv = rng.choice([1, 2, 4])
    group = rng.choice([1, 2, 4, 8, 16])
    config = dict(STREAMS, small_block_n=rng.choice([16, 32, 64]),
                  stream_programs_per_sm=rng.choice([0.5, 2.0, 8.0]),
                  pack_tail_tokens=rng.choice([0, 64]), waves=rng.choice([1.0, 4.0, 16.0]))
    plan_and_run(forest, hkv * group, hkv, 32, rng.choice([torch.float16, torch.float32]),
                 seed=seed, **config)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
def test_many_private_tails_in_few_streams(dtype, d):
    # 40 tails of up to 3 blocks over 2 streams per head: items of every length share a stream
    forest = make_forest([90] + [(7 * b) % 150 + 1 for b in range(40)], [-1] + [0] * 40,
                         list(range(1, 41)))
    plan, _ = plan_and_run(forest, 16, 4, d, dtype, **STREAMS, small_block_n=64,
                           pack_tail_tokens=0)
    assert plan.streams and plan.items.shape[1] - plan.num_large_items > 2 * plan.streams[0]


def test_plans_without_small_items_have_no_streams():
    plan, _ = plan_and_run(star(prefix=64, branches=8, tail=0), 8, 2, 32, torch.float32,
                           **STREAMS)
    assert plan.streams == () and plan.num_large_items == plan.items.shape[1]


@pytest.mark.parametrize("forest", EXTENDABLE[:2])
def test_plans_advanced_on_the_device_stream_the_grown_tails(forest):
    # the streams read the items' lengths at launch: extend_tails' device updates are seen
    slack, batch = 3, len(forest.query_node)
    q, k, v = random_qkv(with_spare_slots(forest, slack), batch, 8, 2, 32, torch.float32,
                         seed=batch)
    plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE,
                               tail_slack=slack, config=PlannerConfig(**STREAMS))
    assert plan.streams and plan.tails is not None
    current = forest
    for step in range(slack):
        current = advance(plan, forest, current, step)
        err = (plan.run(q, k, v) - reference(current, q, k, v)).abs().max().item()
        assert err < 2e-5, f"step {step}: {err}"


@pytest.mark.parametrize("num_items", [1, 2, 5, 33, 64, 100, 1000, 100_000])
@pytest.mark.parametrize("heads_sms_pps", [(8, 132, 2.0), (1, 132, 2.0), (8, 2, 0.5), (32, 8, 1.0)])
def test_stream_shape_covers_every_item_once(num_items, heads_sms_pps):
    streams, most = stream_shape(num_items, *heads_sms_pps)
    assert 1 <= streams <= num_items and most <= MAX_ITEMS_PER_STREAM
    # the kernel's snake: slot i of stream s holds rank i*S + (s, or S-1-s on odd slots)
    ranks = [i * streams + (s if i % 2 == 0 else streams - 1 - s)
             for s in range(streams) for i in range(most)]
    assert sorted(r for r in ranks if r < num_items) == list(range(num_items))


def test_no_streams_for_no_items():
    assert stream_shape(0, 8, 132, 2.0)[0] == 0


def test_graph_workspace_refuses_streams():
    with pytest.raises(ValueError, match="stream_small_items"):
        StaticTreeAttention(max_queries=4, max_items=8, max_kv_tokens=64, max_partials=16,
                            num_qo_heads=4, num_kv_heads=2, head_dim=32, dtype=torch.float32,
                            device=DEVICE, config=PlannerConfig(stream_small_items=True))


def test_bad_stream_programs():
    with pytest.raises(ValueError, match="stream_programs_per_sm"):
        PlannerConfig(stream_programs_per_sm=0)
