"""Tree verification (kernels.verify): prefix plan + masked draft part == the node-form oracle."""
import random

import numpy as np
import pytest
import torch

from deft_sglang.kernels import (StaticTreeAttention, ancestor_mask, draft_tree_as_nodes,
                                 plan_tree_verify, tree_attention_reference,
                                 tree_verify_attention, tree_verify_reference)
from deft_sglang.kernels.merge import launch_merge
from deft_sglang.kernels.reference import merge_states_reference
from deft_sglang.kernels.verify import full_mask_layout

from .trees import DEVICE, random_forest

TOL = {torch.float32: 2e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_draft_parents(rng: random.Random, draft_len: int) -> list:
    """A random token tree: token 0 is the root, every other token's parent precedes it."""
    return [-1] + [rng.randrange(i) for i in range(1, draft_len)]


def verify_case(seed: int, num_requests: int, draft_len: int, heads=(8, 2), head_dim=32,
                dtype=torch.float32):
    """A random committed forest, ``num_requests`` requests at random nodes, one random draft
    tree each, draft slots distinct from the forest's, and q/k/v."""
    rng = random.Random(seed)
    forest = random_forest(rng, max_nodes=8, max_tokens=30, max_queries=1)
    request_node = [rng.randrange(len(forest.parent)) for _ in range(num_requests)]
    draft_parent = np.array([random_draft_parents(rng, draft_len) for _ in range(num_requests)])
    num_slots = forest.num_slots + num_requests * draft_len
    draft_slots = torch.arange(forest.num_slots, num_slots)[torch.randperm(
        num_requests * draft_len, generator=torch.Generator().manual_seed(seed))]
    g = torch.Generator().manual_seed(seed)
    num_qo_heads, num_kv_heads = heads
    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)
    q = rnd(num_requests * draft_len, num_qo_heads, head_dim)
    k, v = rnd(num_slots, num_kv_heads, head_dim), rnd(num_slots, num_kv_heads, head_dim)
    mask = torch.from_numpy(np.stack([ancestor_mask(p) for p in draft_parent]))
    return forest, request_node, draft_parent, draft_slots.to(DEVICE), mask.to(DEVICE), (q, k, v)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("seed", range(24))
def test_verify_equals_node_form_oracle(seed):
    num_requests, draft_len = 1 + seed % 4, [1, 2, 5, 8, 13, 17][seed % 6]
    heads = [(8, 2), (4, 4), (8, 1), (16, 2)][seed % 4]
    dtype = torch.float16 if seed % 3 == 2 else torch.float32
    forest, request_node, draft_parent, slots, mask, (q, k, v) = verify_case(
        seed, num_requests, draft_len, heads, 32 if seed % 2 else 64, dtype)
    out = tree_verify_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                                request_node, slots, mask)
    nodes = draft_tree_as_nodes(forest.parent, forest.indptr, forest.indices, request_node,
                                slots.cpu(), draft_parent)
    oracle = tree_attention_reference(q, k, v, *nodes)
    direct = tree_verify_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                   request_node, slots, mask)
    assert max_err(direct, oracle) < 1e-6
    assert max_err(out, oracle) < TOL[dtype]


def test_full_mask_layout_reads_only_the_draft_columns():
    """SGLang's FULL_MASK rows (seq_len + T per row, prefix columns first) give the dense result;
    garbage in the prefix columns must not matter."""
    forest, request_node, _, slots, mask, (q, k, v) = verify_case(3, 3, 6)
    seq_lens = torch.tensor([30, 0, 7], device=DEVICE)
    rows = []
    for r in range(3):
        prefix = torch.rand(6, int(seq_lens[r])) < 0.5  # unread: random on purpose
        rows.append(torch.cat([prefix.to(DEVICE), mask[r]], dim=1).reshape(-1))
    full = torch.cat(rows)
    offsets, strides = full_mask_layout(seq_lens, 6)
    plan = plan_tree_verify(forest.parent, forest.indptr, forest.indices, request_node,
                            draft_len=6, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                            device=DEVICE)
    out = plan.run(q, k, v, slots, full, offsets, strides)
    dense = plan.run(q, k, v, slots, mask)
    assert torch.equal(out, dense)


def test_masked_out_row_gets_the_prefix_alone():
    forest, request_node, _, slots, mask, (q, k, v) = verify_case(5, 2, 4)
    mask = mask.clone()
    mask[1, 2] = False  # draft token 2 of request 1 sees no draft token, not even itself
    out = tree_verify_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                                request_node, slots, mask)
    ref = tree_verify_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                request_node, slots, mask)
    assert torch.isfinite(out).all()
    assert max_err(out, ref) < TOL[torch.float32]


def test_shared_prefix_is_read_once_for_all_draft_tokens():
    forest, _, _, _, _, _ = verify_case(1, 1, 1)
    plan = plan_tree_verify(forest.parent, forest.indptr, forest.indices, [0, 0, 0, 0],
                            draft_len=16, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                            device=DEVICE)
    stats = plan.stats()
    assert stats["draft_len"] == 16 and stats["num_queries"] == 64
    assert stats["loaded_kv_tokens"] == stats["unique_kv_tokens"]


def test_merge_extra_partial_equals_lse_merge():
    g = torch.Generator().manual_seed(0)
    out_a, out_b = torch.randn(5, 4, 32, generator=g), torch.randn(5, 4, 32, generator=g)
    lse_a, lse_b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lse_b[2] = -float("inf")  # an empty extra partial
    log2e = 1.4426950408889634
    partial_out = out_a.to(DEVICE)
    partial_lse = (lse_a * log2e).to(DEVICE)
    indptr = torch.arange(6, dtype=torch.int32, device=DEVICE)
    slots = torch.arange(5, dtype=torch.int32, device=DEVICE)
    out = torch.empty(5, 4, 32, device=DEVICE)
    launch_merge(partial_out, partial_lse, indptr, slots, out,
                 extra=(out_b.to(DEVICE), (lse_b * log2e).to(DEVICE)))
    ref, _ = merge_states_reference(out_a, lse_a, out_b, lse_b)
    assert max_err(out.cpu(), ref) < 1e-5


def test_static_workspace_runs_the_verify_plan():
    """Graph form: the prefix plan loaded into a StaticTreeAttention plus the draft part."""
    from deft_sglang.kernels.verify import dense_mask_layout, launch_draft_attention
    forest, request_node, _, slots, mask, (q, k, v) = verify_case(7, 3, 5)
    plan = plan_tree_verify(forest.parent, forest.indptr, forest.indices, request_node,
                            draft_len=5, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                            device=DEVICE)
    static = StaticTreeAttention(max_queries=32, max_items=256, max_kv_tokens=512,
                                 max_partials=512, num_qo_heads=8, num_kv_heads=2, head_dim=32,
                                 dtype=torch.float32, device=DEVICE)
    static.load(plan.prefix)
    extra = (torch.empty_like(q), torch.empty(q.shape[:2], device=DEVICE))
    offsets, strides = dense_mask_layout(3, 5, DEVICE)
    launch_draft_attention(q, k, v, slots, mask, offsets, strides, 5, *extra, 32 ** -0.5)
    out = static.run(q, k, v, torch.empty_like(q), extra=extra)
    assert max_err(out, plan.run(q, k, v, slots, mask)) < 1e-5


def test_bad_verify_input():
    forest, request_node, _, slots, mask, (q, k, v) = verify_case(2, 2, 3)
    kwargs = dict(num_qo_heads=8, num_kv_heads=2, head_dim=32, device=DEVICE)
    with pytest.raises(ValueError, match="draft_len"):
        plan_tree_verify(forest.parent, forest.indptr, forest.indices, request_node,
                         draft_len=0, **kwargs)
    with pytest.raises(ValueError, match="tail_slack"):
        plan_tree_verify(forest.parent, forest.indptr, forest.indices, request_node,
                         draft_len=3, tail_slack=4, **kwargs)
    plan = plan_tree_verify(forest.parent, forest.indptr, forest.indices, request_node,
                            draft_len=3, **kwargs)
    with pytest.raises(ValueError, match="q must have shape"):
        plan.run(q[:5], k, v, slots, mask)
    with pytest.raises(ValueError, match="draft_slots"):
        plan.run(q, k, v, slots[:4], mask)
    with pytest.raises(ValueError, match="R\\*T\\*T"):
        plan.run(q, k, v, slots, mask[:1])
    with pytest.raises(ValueError, match="go together"):
        plan.run(q, k, v, slots, mask, mask_offsets=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="draft_mask must be \\[R, T, T\\]"):
        tree_verify_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                              request_node, slots, mask.reshape(-1))
    with pytest.raises(ValueError, match="smaller than"):
        ancestor_mask([-1, 1])
    args = (forest.parent, forest.indptr, forest.indices)
    with pytest.raises(ValueError, match="draft_parent must be \\[R, T\\]"):
        draft_tree_as_nodes(*args, request_node, slots.cpu(), [[-1, 0, 1]])
    with pytest.raises(ValueError, match="R\\*T = 6"):
        draft_tree_as_nodes(*args, request_node, slots.cpu()[:5], [[-1, 0, 1], [-1, 0, 0]])
    with pytest.raises(ValueError, match="before i"):
        draft_tree_as_nodes(*args, request_node, slots.cpu(), [[-1, 0, 2], [-1, 0, 0]])
    with pytest.raises(ValueError, match="request_node"):
        draft_tree_as_nodes(*args, [0, 99], slots.cpu(), [[-1, 0, 1], [-1, 0, 0]])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_verify_gpu_medusa_sizes(dtype):
    for seed, draft_len in enumerate((32, 64, 128)):
        forest, request_node, draft_parent, slots, mask, (q, k, v) = verify_case(
            100 + seed, 4, draft_len, (32, 8), 128, dtype)
        out = tree_verify_attention(q, k, v, forest.parent, forest.indptr, forest.indices,
                                    request_node, slots, mask)
        ref = tree_verify_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                    request_node, slots, mask)
        assert max_err(out, ref) < TOL[dtype]
