"""Speculative token trees (tree verification) in the kernel contract."""
import json
import os

import pytest
import torch

from deft_sglang.kernels import plan_tree_attention, token_tree_parents, tree_attention_reference

from .trees import DEVICE, make_forest, random_qkv

SPEC_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "data",
                         "spec_trees.json")


def test_token_tree_parents():
    paths, parent = token_tree_parents([[1, 0], [0], [1], [0, 0]])
    assert paths == [[], [0], [1], [0, 0], [1, 0]]
    assert parent == [-1, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="not its parent"):
        token_tree_parents([[0], [1, 0]])
    with pytest.raises(ValueError, match="repeat"):
        token_tree_parents([[0], [0]])


@pytest.mark.parametrize("size", ["32", "64"])
def test_medusa_tree_verify_equals_reference(size):
    with open(SPEC_DATA) as f:
        choices = json.load(f)["tree_structure_by_size"][size]
    _, token_parent = token_tree_parents(choices)
    t = len(token_parent)
    assert t == int(size)
    # a 40-token committed prefix, then one node per draft token; each token is a query there
    parent = [-1] + [p + 1 if p >= 0 else 0 for p in token_parent]
    forest = make_forest([40] + [1] * t, parent, list(range(1, t + 1)), seed=t)
    q, k, v = random_qkv(forest, t, 8, 2, 32, torch.float32, seed=t)
    plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE)
    ref = tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   forest.query_node)
    assert (plan.run(q, k, v) - ref).abs().max().item() < 2e-5
    stats = plan.stats()
    assert stats["unique_kv_tokens"] == 40 + t
    # the prefix is read once for all draft tokens (t <= 64 queries share it: no re-reads)
    assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]
