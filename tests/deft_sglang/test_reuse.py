"""Plan reuse (deft_sglang.reuse): an advanced plan decodes like the stock backend, step by step."""
import array

import pytest
import torch

pytest.importorskip("sglang")

from deft_sglang.config import DeftConfig  # noqa: E402

from .test_backend import PROMPT, backends, fork, forward_batch, layer, qkv, run  # noqa: E402


def decode_step(sim, runner, deft, native, seed: int) -> bool:
    """One decode step through DeFT, every layer checked against torch-native; True when the
    step was planned afresh (not advanced)."""
    sim.decode()
    fb = forward_batch(sim, runner)
    before = deft.steps  # counts fresh plans
    deft.init_forward_metadata(fb)
    for layer_id in range(sim.num_layers):
        lay = layer(sim, layer_id)
        q, k, v = qkv(sim, fb.batch_size, seed=seed + layer_id)
        out = deft.forward_decode(q, k, v, lay, fb).float()
        torch.testing.assert_close(out, run(native, fb, lay, q, k, v), atol=2e-3, rtol=0)
    sim.sample()
    return deft.steps > before


@pytest.mark.parametrize("slack", [2, 0])
def test_plan_reuse_while_the_batch_only_grows(sim_factory, deft_patches, slack):
    sim = sim_factory()
    fork(sim, [[1000 + i, 5] for i in range(3)])
    runner, deft, native, _ = backends(sim, config=DeftConfig(tail_slack=slack))
    fresh = []
    for step in range(6):
        if step == 4:  # a request joins: the batch changes, so the plan is built afresh
            sim.submit([PROMPT + [9, 9]])
        fresh.append(decode_step(sim, runner, deft, native, seed=40 + 10 * step))
    if slack:  # fresh, 2 advances (slack 2), fresh (slack used up), fresh (new request), advance
        assert fresh == [True, False, False, True, True, False] and deft.reuse.reused == 3
    else:
        assert fresh == [True] * 6 and deft.reuse.reused == 0


def test_plan_reuse_survives_node_splits_and_evictions(sim_factory, deft_patches):
    """A split keeps every node's slots and depths, and evicting unrelated nodes touches no
    running request, so an advanced plan stays exact across both."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    sim = sim_factory()
    other = sim.submit([[5] * 40], max_new_tokens=2)
    sim.decode()
    sim.sample()
    sim.finish(other)  # cached and unlocked: evictable
    fork(sim, [[1000 + i, 5] for i in range(3)])
    runner, deft, native, _ = backends(sim, config=DeftConfig(tail_slack=8))
    for step in range(4):
        if step == 2:
            shared = sim.running.reqs[0].last_node.parent
            key = RadixKey(array.array("q", PROMPT[:20] + [77]))
            sim.tree_cache.match_prefix(MatchPrefixParams(key=key))
            assert sim.running.reqs[0].last_node.parent is shared  # the shared node was split:
            assert len(shared.value) == len(PROMPT) - 20           # it kept its second part
            assert sim.tree_cache.evict(EvictParams(num_tokens=10_000)).num_tokens_evicted >= 40
        decode_step(sim, runner, deft, native, seed=80 + 10 * step)
    assert deft.reuse.reused == 3


def test_used_up_slack_replans_the_same_forest_without_reading_the_tree(sim_factory,
                                                                        deft_patches,
                                                                        monkeypatch):
    """Slack used up on an unchanged batch: the kept forest is planned again with its tails
    grown to the new lengths (exact, checked against torch-native), the tree is not read."""
    from deft_sglang import backend as backend_module

    sim = sim_factory()
    fork(sim, [[1000 + i, 5] for i in range(3)])
    runner, deft, native, _ = backends(sim, config=DeftConfig(tail_slack=2))
    reads = []
    real_read = backend_module.read_decode_forest
    monkeypatch.setattr(backend_module, "read_decode_forest",
                        lambda *a, **k: reads.append(1) or real_read(*a, **k))
    fresh = [decode_step(sim, runner, deft, native, seed=40 + 10 * step) for step in range(7)]
    # planned, 2 advances, re-planned (slack used up), 2 advances, re-planned
    assert fresh == [True, False, False, True, False, False, True]
    assert len(reads) == 1  # only the first plan read the RadixCache
    tails = deft._step.forest.query_node
    assert (deft._step.forest.node_len[tails] >= 7).all()  # the tails grew with the steps
