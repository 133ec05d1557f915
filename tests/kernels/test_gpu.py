"""GPU checks at realistic sizes (skipped without CUDA): bf16 within 2e-2, fp32 within 1e-3."""
import random

import pytest
import torch

from deft_sglang.kernels import plan_tree_attention, tree_attention_reference

from .trees import make_forest, random_forest, random_qkv, star

pytestmark = pytest.mark.gpu

CASES = {
    "few_shot": star(prefix=4000, branches=20, tail=100),
    "wide": star(prefix=512, branches=300, tail=8),
    "fanout_1024": star(prefix=256, branches=1024, tail=4),
    "three_level": make_forest([1500, 200, 200, 50, 50, 50, 50],
                               [-1, 0, 0, 1, 1, 2, 2], [3, 4, 5, 6, 1, 2]),
    "unshared": make_forest([700 + 37 * i for i in range(40)], [-1] * 40, list(range(40))),
}


DTYPES = [(torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float32, 1e-3)]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_against_reference(case, dtype, tol):
    check_case(CASES[case], dtype, tol, (32, 8))


@pytest.mark.parametrize("heads", [(32, 32), (16, 1), (32, 4), (8, 8)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_head_configs(heads, dtype, tol):
    check_case(CASES["three_level"], dtype, tol, heads)


def check_case(forest, dtype, tol, heads):
    hq, hkv = heads
    q, k, v = random_qkv(forest, len(forest.query_node), hq, hkv, 128, dtype, "cuda")
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=hq, num_kv_heads=hkv, head_dim=128,
                               device="cuda", num_slots=forest.num_slots)
    out = torch.full_like(q, float("nan"))
    plan.run(q, k, v, out=out)
    ref = tree_attention_reference(q, k, v, *args)
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= tol, err


@pytest.mark.parametrize("d", [64, 96, 256])
def test_head_dims_bf16(d):
    forest = star(prefix=900, branches=12, tail=33)
    q, k, v = random_qkv(forest, 12, 16, 4, d, torch.bfloat16, "cuda")
    args = (forest.parent, forest.indptr, forest.indices, forest.query_node)
    plan = plan_tree_attention(*args, num_qo_heads=16, num_kv_heads=4, head_dim=d, device="cuda")
    err = (plan.run(q, k, v).double() - tree_attention_reference(q, k, v, *args).double())
    assert err.abs().max().item() <= 2e-2


def random_bf16_case(seed, **sizes):
    """A random forest with random GQA heads (D 128) and its bf16 q/k/v on the GPU:
    (contract arrays, Hq, Hkv, q, k, v)."""
    rng = random.Random(seed)
    forest = random_forest(rng, **sizes)
    hkv = rng.choice([1, 2, 8])
    hq = hkv * rng.choice([1, 4, 8])
    q, k, v = random_qkv(forest, len(forest.query_node), hq, hkv, 128, torch.bfloat16, "cuda")
    return (forest.parent, forest.indptr, forest.indices, forest.query_node), hq, hkv, q, k, v


@pytest.mark.parametrize("seed", range(40))
def test_random_forests_bf16(seed):
    args, hq, hkv, q, k, v = random_bf16_case(1000 + seed, max_nodes=40, max_tokens=600,
                                              max_queries=80)
    plan = plan_tree_attention(*args, num_qo_heads=hq, num_kv_heads=hkv, head_dim=128,
                               device="cuda")
    err = (plan.run(q, k, v).double() - tree_attention_reference(q, k, v, *args).double())
    assert err.abs().max().item() <= 2e-2


def test_deterministic_run_to_run():
    forest = CASES["few_shot"]
    q, k, v = random_qkv(forest, 20, 32, 8, 128, torch.bfloat16, "cuda")
    plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=32, num_kv_heads=8, head_dim=128, device="cuda")
    first = plan.run(q, k, v).clone()
    for _ in range(5):
        assert torch.equal(plan.run(q, k, v), first)


@pytest.mark.parametrize("seed", range(12))
def test_merge_as_a_dependent_launch_gives_the_same_bits(seed):
    """The merge launched as a programmatic dependent of phase 1 (it may be scheduled before
    phase 1 ends and must wait for it) gives the plain launch's result, bit for bit, also when
    both are queued behind a long kernel."""
    from deft_sglang.kernels import PlannerConfig

    args, hq, hkv, q, k, v = random_bf16_case(2000 + seed, max_nodes=60, max_tokens=900,
                                              max_queries=120)
    plain, dependent = (plan_tree_attention(*args, num_qo_heads=hq, num_kv_heads=hkv,
                                            head_dim=128, device="cuda",
                                            config=PlannerConfig(merge_pdl=pdl))
                        for pdl in (False, True))
    assert dependent.merge_pdl == (torch.cuda.get_device_capability()[0] >= 9)
    want = plain.run(q, k, v)
    for _ in range(3):
        torch.cuda._sleep(2_000_000)
        assert torch.equal(dependent.run(q, k, v), want)
    ref = tree_attention_reference(q, k, v, *args).double()
    assert (want.double() - ref).abs().max().item() <= 2e-2


def test_uploads_queued_behind_a_long_kernel_keep_their_bytes():
    """Many plan uploads queued while the GPU is busy: each arrives as it was staged."""
    import numpy as np

    from deft_sglang.kernels.tree import host_to_device

    torch.cuda._sleep(50_000_000)  # keep the stream busy while the host stages uploads
    arrays = [np.full(3000 + i, i, dtype=np.int32) for i in range(12)]
    uploaded = [host_to_device(a, "cuda") for a in arrays]
    torch.cuda.synchronize()
    for array, tensor in zip(arrays, uploaded):
        assert torch.equal(tensor.cpu(), torch.from_numpy(array))
    big = np.arange(400_000, dtype=np.int64)
    assert torch.equal(host_to_device(big, "cuda").cpu(), torch.from_numpy(big))
