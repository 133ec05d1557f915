"""Bad input raises ValueError naming the argument, never a wrong answer."""
import pytest
import torch

from deft_sglang.kernels import PlannerConfig, plan_tree_attention, tree_attention

from .trees import DEVICE, star

FOREST = star(prefix=10, branches=3, tail=2)


def tensors(hq=4, hkv=2, d=16, dtype=torch.float32, batch=3, slots=None):
    slots = FOREST.num_slots if slots is None else slots
    return (torch.randn(batch, hq, d, dtype=dtype, device=DEVICE),
            torch.randn(slots, hkv, d, dtype=dtype, device=DEVICE),
            torch.randn(slots, hkv, d, dtype=dtype, device=DEVICE))


def call(q, k, v, parent=None, indptr=None, indices=None, query_node=None):
    return tree_attention(q, k, v, FOREST.parent if parent is None else parent,
                          FOREST.indptr if indptr is None else indptr,
                          FOREST.indices if indices is None else indices,
                          FOREST.query_node if query_node is None else query_node)


@pytest.mark.parametrize("kwargs, match", [
    (dict(parent=[-1, 0, 0, 3]), "node_parent"),
    (dict(parent=[-1, 0, 0, -2]), "node_parent"),
    (dict(indptr=[0, 10, 9, 14, 16]), "node_kv_indptr"),
    (dict(indptr=[1, 10, 12, 14, 16]), "node_kv_indptr"),
    (dict(indptr=[0, 10, 12, 14]), "node_kv_indptr"),
    (dict(query_node=[1, 2, 4]), "query_node"),
    (dict(query_node=[1, 2, -1]), "query_node"),
    (dict(query_node=[1, 2]), "query_node"),
    (dict(indices=list(range(15)) + [10 ** 6]), "node_kv_indices"),
    (dict(indices=[-1] + list(range(15))), "node_kv_indices"),
])
def test_bad_tree(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(*tensors(), **kwargs)


def test_float_tree_arrays_rejected():
    with pytest.raises(ValueError, match="node_parent"):
        call(*tensors(), parent=torch.tensor([-1.0, 0, 0, 0]))


def test_heads_not_divisible():
    with pytest.raises(ValueError, match="num_qo_heads"):
        call(*tensors(hq=6, hkv=4))


@pytest.mark.parametrize("d", [8, 40, 272])
def test_bad_head_dim(d):
    with pytest.raises(ValueError, match="head_dim"):
        call(*tensors(d=d))


def test_dtype_mismatch():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="k_cache"):
        call(q, k.half(), v)


def test_unsupported_dtype():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="q must be"):
        call(q.double(), k.double(), v.double())


def test_kv_shape_mismatch():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="v_cache"):
        call(q, k, v[:, :1])


def test_plan_run_with_wrong_batch():
    plan = plan_tree_attention(FOREST.parent, FOREST.indptr, FOREST.indices, FOREST.query_node,
                               num_qo_heads=4, num_kv_heads=2, head_dim=16, device=DEVICE)
    q, k, v = tensors(batch=4)
    with pytest.raises(ValueError, match="q must have shape"):
        plan.run(q, k, v)


@pytest.mark.parametrize("kwargs", [dict(block_n=48), dict(waves=0), dict(num_sms=-1),
                                    dict(reread_group_rows=4), dict(max_registers=8),
                                    dict(max_registers=300)])
def test_bad_planner_config(kwargs):
    with pytest.raises(ValueError, match="PlannerConfig"):
        PlannerConfig(**kwargs)
