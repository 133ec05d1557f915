"""Property-based fuzzing of the kernel contract (hypothesis), and batch invariance."""
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from deft_sglang.kernels import (PlannerConfig, plan_tree_attention, tree_attention,
                                 tree_attention_reference)

from .trees import DEVICE, Forest, make_forest, random_qkv

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


@st.composite
def forests(draw):
    """Forests with empty and 1-token nodes, interior-node and duplicate queries, wide fan-out."""
    num_nodes = draw(st.integers(1, 14))
    parents = [-1]
    for n in range(1, num_nodes):
        parents.append(draw(st.one_of(st.just(-1), st.integers(0, n - 1)))
                       if draw(st.booleans()) and draw(st.booleans()) else
                       draw(st.integers(0, n - 1)))
    tokens = [draw(st.sampled_from([0, 1, 1, 2, 5, 17, 40, 70])) for _ in range(num_nodes)]
    wide = draw(st.booleans()) and draw(st.booleans())
    num_queries = draw(st.integers(1, 66 if wide else 9))
    query_node = [draw(st.integers(0, num_nodes - 1)) for _ in range(num_queries)]
    return make_forest(tokens, parents, query_node, seed=draw(st.integers(0, 1 << 20)),
                       spare_slots=draw(st.integers(0, 5)))


CONFIG = st.sampled_from([None, PlannerConfig(block_n=16, waves=64.0, min_chunk_partial_ratio=0.01),
                          PlannerConfig(reread_min_queries=1, reread_group_rows=16),
                          PlannerConfig(fixed_chunk_tokens=32)])


# DEFT_FUZZ_EXAMPLES cases in all (1000 in CI); DEFT_FUZZ_SHARDS > 1 splits them into that many
# tests with their own hypothesis seeds, so that pytest-xdist workers run them side by side (on a
# GPU the cases are bound by compiling each kernel variant, which workers overlap).
EXAMPLES = int(os.environ.get("DEFT_FUZZ_EXAMPLES", "1000"))
SHARDS = int(os.environ.get("DEFT_FUZZ_SHARDS", "1"))
CASES = given(forest=forests(), hkv=st.sampled_from([1, 2]),
              group=st.sampled_from([1, 2, 3, 4, 16]), head_dim=st.sampled_from([16, 32, 48]),
              dtype=st.sampled_from([torch.float16, torch.float32]), config=CONFIG,
              seed=st.integers(0, 1000))


def fuzz_settings(examples: int, derandomize: bool):
    return settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_tree_attention_matches_reference(forest, hkv, group, head_dim, dtype, config, seed):
    hq = hkv * group
    q, k, v = random_qkv(forest, len(forest.query_node), hq, hkv, head_dim, dtype, seed=seed)
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=hq, num_kv_heads=hkv, head_dim=head_dim,
                               device=DEVICE, num_slots=forest.num_slots, config=config)
    out = plan.run(q, k, v)
    ref = tree_attention_reference(q, k, v, *args)
    assert (out.double() - ref.double()).abs().max().item() <= TOL[dtype]
    stats = plan.stats()
    if config is None and len(forest.query_node) <= 64:  # exact-once up to 64 queries a node
        assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]


if SHARDS <= 1:
    test_fuzz_tree_attention_matches_reference = fuzz_settings(EXAMPLES, True)(
        CASES(check_tree_attention_matches_reference))
else:
    for _shard in range(SHARDS):
        globals()[f"test_fuzz_tree_attention_matches_reference_shard{_shard}"] = fuzz_settings(
            -(-EXAMPLES // SHARDS), False)(hypothesis_seed(_shard)(
                CASES(check_tree_attention_matches_reference)))


def _join(a: Forest, b: Forest) -> Forest:
    """Forest b appended after forest a, b's slots moved past a's pool."""
    shift_nodes, shift_slots = len(a.parent), a.num_slots
    indptr = a.indptr + [a.indptr[-1] + x for x in b.indptr[1:]]
    return Forest(a.parent + [p if p < 0 else p + shift_nodes for p in b.parent], indptr,
                  a.indices + [s + shift_slots for s in b.indices],
                  a.query_node + [n + shift_nodes for n in b.query_node],
                  a.num_slots + b.num_slots)


@pytest.mark.parametrize("seed", range(6))
def test_batch_invariance_with_fixed_chunks(seed):
    rng = random.Random(seed)
    mine = make_forest([rng.randint(1, 200), 7, 40, 3], [-1, 0, 0, 2], [1, 3, 3, 0],
                       seed=seed)
    other = make_forest([rng.randint(100, 900)] + [rng.randint(1, 60)] * 30, [-1] + [0] * 30,
                        list(range(1, 31)), seed=seed + 100)
    both = _join(mine, other)
    config = PlannerConfig(fixed_chunk_tokens=32)
    q, k, v = random_qkv(both, len(both.query_node), 8, 2, 32, torch.float16, seed=seed)
    alone = plan_tree_attention(mine.parent, mine.indptr, mine.indices, mine.query_node,
                                num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE,
                                config=config).run(q[:4].contiguous(), k, v)
    batched = plan_tree_attention(both.parent, both.indptr, both.indices, both.query_node,
                                  num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE,
                                  config=config).run(q, k, v)
    assert torch.equal(alone, batched[:4])


def test_same_inputs_same_bits():
    forest = make_forest([150, 9, 9, 30], [-1, 0, 0, 1], [1, 2, 3, 3])
    q, k, v = random_qkv(forest, 4, 8, 2, 32, torch.float16)
    first = tree_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                           forest.query_node)
    again = tree_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                           forest.query_node)
    assert torch.equal(first, again)
