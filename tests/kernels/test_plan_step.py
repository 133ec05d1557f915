"""One-call planning (``kernels.plan_step``, ``plan_step.c``) against the step-by-step path:
the same plan, every tensor and stat; its buffers, inputs and faults.  Host work only, so these
run on the CPU whatever the machine has (skipped without a C compiler)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from deft_sglang.kernels import PlannerConfig, native, plan_tree_attention

from .test_plan_native import CONFIGS, CPU, assert_plans_equal, needs_native
from .trees import chain, make_forest, random_forest, star


@needs_native
@pytest.mark.parametrize("config", ["default", "row-groups", "fixed-chunks", "few-sms"])
@pytest.mark.parametrize("slots", [np.int32, np.int64])
def test_one_call_plans_like_the_steps(config, slots, monkeypatch):
    """``plan_step.c`` (validation, tails, grouping and plan in one call, the upload written
    there) against the C core's parts called one by one: the same plan, packs included."""
    from deft_sglang.kernels import api
    rng = random.Random(f"one-call-{config}")
    forests = [random_forest(rng, max_nodes=30, max_tokens=rng.choice([6, 24, 90]),
                             max_queries=30) for _ in range(40)]
    forests += [star(700, 33, 9), star(300, 40, 1), star(64, 50, 40), chain(4, 20),
                make_forest([0], [-1], []), make_forest([], [], [])]
    packed = 0
    for forest in forests:
        arrays = (forest.parent, forest.indptr, np.asarray(forest.indices, dtype=slots),
                  forest.query_node)
        for heads in ((32, 8), (8, 8)):
            kwargs = dict(num_qo_heads=heads[0], num_kv_heads=heads[1], head_dim=64, device=CPU,
                          num_slots=forest.num_slots,
                          config=PlannerConfig(**{"num_sms": 132, "l2_bytes": 50 << 20,
                                                     **CONFIGS[config]}))
            one_call = plan_tree_attention(*arrays, **kwargs)
            with monkeypatch.context() as patch:
                patch.setattr(api, "_plan_in_one_call", lambda *args: None)
                steps = plan_tree_attention(*arrays, **kwargs)
            assert_plans_equal(one_call, steps)
            packed += one_call.tail_packs is not None
    assert packed > 0 or config == "fixed-chunks"


@needs_native
def test_one_call_takes_tensors_and_names_a_fault():
    forest = star(70, 12, 20)
    arrays = [torch.tensor(a, dtype=torch.int32) for a in (forest.parent, forest.indptr,
                                                           forest.indices, forest.query_node)]
    kwargs = dict(num_qo_heads=8, num_kv_heads=2, head_dim=64, device=CPU,
                  num_slots=forest.num_slots)
    assert_plans_equal(plan_tree_attention(*arrays, **kwargs),
                       plan_tree_attention(*(a.tolist() for a in arrays), **kwargs))
    arrays[2][5] = forest.num_slots
    with pytest.raises(ValueError, match="node_kv_indices values must lie in"):
        plan_tree_attention(*arrays, **kwargs)


@needs_native
def test_one_call_checks_the_shape_without_validation():
    """Unvalidated host arrays still have their shape checked (the C core never reads out of
    bounds); only the slots' range goes unchecked."""
    forest = star(30, 4, 5)
    kwargs = dict(num_qo_heads=8, num_kv_heads=2, head_dim=64, device=CPU, validate=False,
                  num_slots=forest.num_slots)
    with pytest.raises(ValueError, match="query_node values must lie in"):
        plan_tree_attention(forest.parent, forest.indptr, forest.indices, [1, 2, 9], **kwargs)
    with pytest.raises(ValueError, match="a parent index must be -1 or smaller"):
        plan_tree_attention([-1, 3, 0, 0, 0], forest.indptr, forest.indices,
                            forest.query_node, **kwargs)
    slots = list(forest.indices)
    slots[0] = forest.num_slots + 5  # out of range, but not checked without validation
    plan_tree_attention(forest.parent, forest.indptr, slots, forest.query_node, **kwargs)


@needs_native
def test_one_call_grows_its_buffers_for_a_bigger_plan():
    """A bigger plan than the last grows the buffers (one more call); a much smaller one after
    it shrinks them again, since the whole upload buffer is copied to the device."""
    config = PlannerConfig(reread_min_queries=2, reread_group_rows=16)
    small, big, bigger = star(40, 2, 3), star(4000, 300, 70), star(9000, 700, 20)
    for forest in (small, big, small, bigger, small):
        plan = plan_tree_attention(forest.parent, forest.indptr, forest.indices,
                                   forest.query_node, num_qo_heads=16, num_kv_heads=4,
                                   head_dim=64, device=CPU, config=config)
        assert plan.stats()["unique_kv_tokens"] == forest.indptr[-1]
        knobs = [k for key, k in native._KNOBS.items() if key[0] is config]
        assert len(knobs) == 1 and knobs[0].step_lengths[1] < 4 * forest.indptr[-1] + 100
