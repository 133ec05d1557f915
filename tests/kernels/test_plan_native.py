"""The planner's C core (``kernels.native``) against the numpy path: the same plan, bit for bit.

Planning is host work only, so these run on the CPU whatever the machine has; a machine without
a C compiler skips the comparisons (and the fallback test still checks that planning works).
"""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from deft_sglang.kernels import PlannerConfig, plan_tree_attention
from deft_sglang.kernels import native
from deft_sglang.kernels.short_tails import take_short_tails
from deft_sglang.kernels.tree import build_layout, validate_tree

from .trees import chain, make_forest, random_forest, star

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here")
CPU = torch.device("cpu")
PLAN_TENSORS = ("kv_indices", "query_order", "items", "merge_indptr", "merge_slots")
CONFIGS = {
    "default": dict(),
    "row-groups": dict(reread_min_queries=2, reread_group_rows=16,
                       reread_needs_node_in_l2=False),
    "row-groups-in-l2": dict(reread_min_queries=1, reread_group_rows=32, l2_bytes=1 << 16),
    "split-launches": dict(split_launches=True, max_floor_over_want=0),
    "fixed-chunks": dict(fixed_chunk_tokens=24),
    "few-sms": dict(num_sms=4, waves=1.5, min_chunk_partial_ratio=0.5, block_m=32),
    "short-chunks": dict(min_chunk_blocks=1.5, min_chunk_partial_ratio=1),
}


def _plan(forest, heads, native_on: bool, tail_slack=0, **overrides):
    config = PlannerConfig(native=native_on, **{"num_sms": 132, "l2_bytes": 50 << 20,
                                                 **overrides})
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=heads[0], num_kv_heads=heads[1], head_dim=64,
                               device=CPU, num_slots=forest.num_slots, config=config,
                               tail_slack=tail_slack)


def assert_same_plan(forest, heads, tail_slack=0, **overrides):
    expected = _plan(forest, heads, False, tail_slack, **overrides)
    actual = _plan(forest, heads, True, tail_slack, **overrides)
    assert_plans_equal(actual, expected)


def assert_plans_equal(actual, expected):
    """Every tensor and setting of two plans is the same, their stats too."""
    for name in PLAN_TENSORS:
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    for name in ("num_partials", "block_m", "merge_shape", "num_large_items", "pack_shape"):
        assert getattr(actual, name) == getattr(expected, name), name
    for name in ("short_tails", "tail_packs"):
        mine, theirs = getattr(actual, name), getattr(expected, name)
        assert (mine is None) == (theirs is None), name
        for ours, reference in zip(mine or (), theirs or ()):
            same = (torch.equal(ours, reference) if isinstance(ours, torch.Tensor)
                    else ours == reference)
            assert same, name
    assert actual.stats() == expected.stats()
    assert (actual.tails is None) == (expected.tails is None)
    if expected.tails is not None:
        for name in ("open_items", "positions", "lengths"):
            assert torch.equal(getattr(actual.tails, name), getattr(expected.tails, name)), name


@needs_native
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("heads", [(4, 4), (16, 4), (16, 2), (16, 1)])
def test_random_forests_plan_the_same(config, heads):
    rng = random.Random(f"{config}-{heads}")
    for _ in range(25):
        forest = random_forest(rng, max_nodes=30, max_tokens=300, max_queries=40)
        assert_same_plan(forest, heads, **CONFIGS[config])


@needs_native
@pytest.mark.parametrize("config", ["default", "row-groups", "split-launches"])
def test_shaped_forests_plan_the_same_with_tail_slack(config):
    forests = [chain(6, 50, queries=1), star(700, 33, 9), star(3000, 200, 40),
               make_forest([5, 0, 1, 64, 1, 1], [-1, 0, 0, 1, 2, 2], [3, 4, 5])]
    for forest in forests:
        for tail_slack in (0, 5):
            assert_same_plan(forest, (32, 8), tail_slack=tail_slack, **CONFIGS[config])


@needs_native
def test_many_row_groups_outgrow_the_first_segment_guess():
    # 40 nested nodes each seen by 300 queries, one query per row group: 12,000 segments, more
    # than the C core's first guess (2 (nodes + queries) + 1), so it sizes them again.
    forest = make_forest([8] * 40 + [3] * 300, [-1] + list(range(39)) + [39] * 300,
                         list(range(40, 340)))
    assert_same_plan(forest, (16, 16), reread_min_queries=1, reread_group_rows=16,
                     reread_needs_node_in_l2=False)


@needs_native
def test_a_bigger_plan_after_a_small_one_resizes_the_output():
    config = dict(reread_min_queries=4)
    assert_same_plan(star(40, 2, 3), (8, 2), **config)
    assert_same_plan(star(4000, 120, 300), (8, 2), **config)  # same knobs: the cached guess
    assert_same_plan(star(40, 2, 3), (8, 2), **config)


@needs_native
def test_layout_is_the_lexicographic_path_order():
    rng = random.Random(7)
    for _ in range(50):
        forest = random_forest(rng, max_nodes=40, max_queries=60)
        arrays = validate_tree(forest.parent, forest.indptr, forest.indices, forest.query_node)
        expected, actual = build_layout(*arrays), build_layout(*arrays, native=True)
        for name in ("query_order", "query_begin", "query_end"):
            np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name))


@needs_native
@pytest.mark.parametrize("fault", ["parent", "indptr-start", "indptr-order", "indptr-end",
                                   "query", "slot"])
def test_native_validation_rejects_what_numpy_rejects(fault):
    forest = star(5, 3, 2)
    arrays = [list(forest.parent), list(forest.indptr), list(forest.indices),
              list(forest.query_node)]
    if fault == "parent":
        arrays[0][2] = 3
    elif fault == "indptr-start":
        arrays[1] = [1] + arrays[1][1:]
    elif fault == "indptr-order":
        arrays[1][2], arrays[1][3] = arrays[1][3], arrays[1][2]
    elif fault == "indptr-end":
        arrays[2] = arrays[2][:-1]
    elif fault == "query":
        arrays[3][0] = 4
    else:
        arrays[2][0] = forest.num_slots
    with pytest.raises(ValueError) as numpy_error:
        validate_tree(*arrays, num_slots=forest.num_slots)
    for slots in (arrays[2], np.array(arrays[2], dtype=np.int32)):  # int32 is checked as is
        with pytest.raises(ValueError) as native_error:
            validate_tree(arrays[0], arrays[1], slots, arrays[3], num_slots=forest.num_slots,
                          native=True)
        assert str(native_error.value) == str(numpy_error.value)


@needs_native
def test_int32_slots_plan_like_int64_slots():
    forest = star(300, 7, 20)
    int32 = dict(forest.__dict__, indices=np.array(forest.indices, dtype=np.int32))
    as_lists = _plan(forest, (8, 2), True)
    as_int32 = _plan(type(forest)(**int32), (8, 2), True)
    for name in PLAN_TENSORS:
        assert torch.equal(getattr(as_int32, name), getattr(as_lists, name)), name


def test_without_a_compiler_planning_falls_back_to_numpy(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.library() is None
    assert "numpy" in caplog.text
    plan = _plan(star(30, 4, 5), (8, 2), True)  # config.native on, but no core: numpy plans
    assert plan.stats()["unique_kv_tokens"] == 30 + 4 * 5


@needs_native
@pytest.mark.parametrize("max_tokens", [1, 8, 64])
def test_short_tails_are_taken_alike(max_tokens):
    rng = random.Random(f"tails-{max_tokens}")
    forests = [random_forest(rng, max_nodes=30, max_tokens=24, max_queries=20)
               for _ in range(60)] + [star(50, 20, 12), chain(3, 5)]
    taken = 0
    for forest in forests:
        arrays = [np.asarray(a, dtype=np.int64) for a in (forest.parent, forest.indptr,
                                                         forest.indices, forest.query_node)]
        for dtype in (np.int32, np.int64):
            args = (arrays[0], arrays[1], arrays[2].astype(dtype), arrays[3], max_tokens)
            ours, numpy_path = (take_short_tails(*args, native=flag) for flag in (True, False))
            assert (ours is None) == (numpy_path is None)
            if ours is None:
                continue
            taken += ours.num_tokens
            assert ours.longest == numpy_path.longest
            for name in ("kv_indptr", "kv_indices", "tail_indptr", "tail_slots", "queries"):
                mine, theirs = getattr(ours, name), getattr(numpy_path, name)
                assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name
    assert taken > 0


@pytest.mark.parametrize("native_on", [False, pytest.param(True, marks=needs_native)])
def test_min_chunk_blocks_shortens_the_chunks_of_small_trees(native_on):
    # 1,800 tokens over 33 programs per KV head ask for ~68-token chunks; the default floor of
    # 4 blocks (256 tokens) keeps them long, a floor of 1 block lets them be 64.
    forest = chain(6, 300, queries=1)
    default = _plan(forest, (32, 8), native_on)
    short = _plan(forest, (32, 8), native_on, min_chunk_blocks=1)
    assert int(default.items[1].max()) > 64
    assert int(short.items[1].max()) == 64
    assert short.items.shape[1] > default.items.shape[1]
    if native_on:
        assert_same_plan(forest, (32, 8), min_chunk_blocks=1)
