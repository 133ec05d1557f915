"""The tree reader against SGLang's real RadixCache / ReqToTokenPool / Req / ScheduleBatch.

The oracle: stock decode reads ``req_to_token[row, :seq_len]`` for every request, so the slots on
each query's forest path, concatenated root-first, must equal that row slice exactly.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("sglang")

from deft_sglang.tree_reader import (DecodeForest, chain_forest, read_decode_forest,  # noqa: E402
                                     tree_cache_supported)

PROMPT = list(range(10, 74))  # 64 tokens


def read(sim, verify=True, reqs=None) -> tuple[DecodeForest, list, list]:
    rows, lens = sim.batch_rows()
    forest = read_decode_forest(reqs or sim.running.reqs, rows, lens, sim.tree_cache,
                                sim.req_to_token, verify=verify)
    return forest, rows, lens


def assert_exact(forest: DecodeForest, rows, lens, req_to_token):
    """Each query's path slots == its req_to_token row prefix; parents precede children."""
    assert np.all(forest.node_parent < np.arange(forest.num_nodes))
    kv = forest.gather_kv_indices(req_to_token)
    indptr = forest.node_kv_indptr
    assert kv.shape[0] == indptr[-1]
    for b, (row, seq_len) in enumerate(zip(rows, lens)):
        path, n = [], int(forest.query_node[b])
        while n >= 0:
            path.append(n)
            n = int(forest.node_parent[n])
        got = torch.cat([kv[indptr[n]:indptr[n + 1]] for n in reversed(path)])
        assert torch.equal(got, req_to_token[row, :seq_len]), f"query {b} reads other slots"


def unique_tokens(forest: DecodeForest) -> int:
    return int(forest.node_len.sum())


def fork(sim, prefix, suffixes, parent_new_tokens=2):
    """What ``sgl.fork`` does: run the prefix as a request, finish it, then start the branches."""
    parent = sim.submit([prefix], max_new_tokens=parent_new_tokens)
    sim.decode()
    sim.sample()
    sim.finish(parent)
    return sim.submit([prefix + s for s in suffixes])


def test_fork_shares_the_prefix(sim_factory):
    sim = sim_factory()
    fork(sim, PROMPT, [[1000 + i, 7, 8] for i in range(4)])
    for _ in range(3):
        sim.decode()
        forest, rows, lens = read(sim)
        assert_exact(forest, rows, lens, sim.req_to_token)
        assert not forest.fallbacks
        roots = np.nonzero(forest.node_parent == -1)[0]
        assert len(roots) == 1 and forest.node_len[roots[0]] >= len(PROMPT)
        assert unique_tokens(forest) < sum(lens) - 2 * len(PROMPT)
        sim.sample()


def test_nested_forks(sim_factory):
    sim = sim_factory()
    fork(sim, PROMPT, [[501], [502]], parent_new_tokens=1)
    sim.decode()
    sim.sample()
    branches = list(sim.running.reqs)
    sim.finish(branches)
    grandkids = [PROMPT + [501] + [11, 12, 13], PROMPT + [501] + [21, 22],
                 PROMPT + [502] + [31], PROMPT + [502] + [41, 42, 43, 44]]
    sim.submit(grandkids)
    sim.decode()
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    # Grandkids 0 and 1 share the prompt and branch 501; 2 and 3 share the prompt and 502.
    paths = [forest.path_positions(b) for b in range(4)]
    assert paths[0][:2] == paths[1][:2] and paths[2][:2] == paths[3][:2]
    assert paths[0][0] == paths[2][0] and paths[0][1] != paths[2][1]
    assert unique_tokens(forest) < sum(lens) - 3 * len(PROMPT)


def test_node_split_by_a_later_insert(sim_factory):
    sim = sim_factory()
    (first,) = sim.submit([PROMPT + [900, 901, 902]])  # caches PROMPT+[900..902] as one node
    sim.decode()
    forest, rows, lens = read(sim)
    assert forest.num_tree_nodes == 1
    sim.sample()
    sim.submit([PROMPT + [950, 951]])  # match splits that node at len(PROMPT)
    sim.decode()
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    paths = [forest.path_positions(b) for b in range(2)]
    assert paths[0][0] == paths[1][0] and paths[0][0][2] == len(PROMPT)
    assert first.last_node.parent.parent is sim.tree_cache.root_node


def test_eviction_of_unrelated_nodes(sim_factory):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    sim = sim_factory()
    other = sim.submit([[5] * 40, [6] * 40], max_new_tokens=2)
    sim.decode()
    sim.sample()
    sim.finish(other)  # cached, unlocked: evictable
    fork(sim, PROMPT, [[1], [2], [3]])
    sim.decode()
    before = sim.tree_cache.evictable_size()
    result = sim.tree_cache.evict(EvictParams(num_tokens=10_000))
    assert result.num_tokens_evicted >= 80 and sim.tree_cache.evictable_size() < before
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    assert not forest.fallbacks and forest.num_tree_nodes >= 1


def test_finished_requests_and_decode_tails(sim_factory):
    sim = sim_factory()
    kids = fork(sim, PROMPT, [[1000 + i] for i in range(4)])
    prev_tails = None
    for step in range(4):
        sim.decode()
        forest, rows, lens = read(sim)
        assert_exact(forest, rows, lens, sim.req_to_token)
        tails = forest.node_len[forest.query_node]
        starts = forest.node_start[forest.query_node]
        assert np.all(starts + tails == np.asarray(lens))
        if prev_tails is not None:
            assert np.all(tails == prev_tails + 1)
        prev_tails = tails
        sim.sample()
    sim.finish(kids[:2])  # their outputs enter the tree
    late = sim.submit([list(kids[0].origin_input_ids) + list(kids[0].output_ids[:2]) + [77]])
    sim.decode()
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    assert len(forest.query_node) == 3 and late[0] in sim.running.reqs
    late_path = forest.path_positions(2)
    assert sum(length for _, _, length in late_path[:-1]) >= len(PROMPT) + 3


def test_overlap_order_prefill_processed_late(sim_factory):
    """The first decode of a fresh batch is read before cache_unfinished_req (overlap order)."""
    sim = sim_factory()
    pending = sim.submit([PROMPT + [1], PROMPT + [1]], process=False)  # duplicate prompts
    sim.decode()
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    assert forest.num_tree_nodes == 0  # nothing cached yet: two private chains
    sim.process(pending)  # second request's duplicate slots are freed, its row rewritten
    sim.sample()
    sim.decode()
    forest, rows, lens = read(sim)
    assert_exact(forest, rows, lens, sim.req_to_token)
    assert forest.num_tree_nodes == 1 and unique_tokens(forest) < sum(lens) - len(PROMPT)


def test_page_size_16(sim_factory):
    sim = sim_factory(page_size=16)
    fork(sim, PROMPT + [3, 4, 5], [[1000 + i, 9] for i in range(3)])
    for _ in range(3):
        sim.decode()
        forest, rows, lens = read(sim)
        assert_exact(forest, rows, lens, sim.req_to_token)
        tree = np.setdiff1d(np.arange(forest.num_nodes), forest.query_node)
        assert tree.size and np.all(forest.node_len[tree] % 16 == 0)
        assert unique_tokens(forest) < sum(lens) - len(PROMPT)
        sim.sample()


def test_inconsistent_state_reads_unshared_chains(sim_factory):
    from sglang.srt.managers.schedule_batch import FINISH_LENGTH
    from sglang.srt.mem_cache.radix_cache import TreeNode

    sim = sim_factory()
    kids = fork(sim, PROMPT, [[1000 + i] for i in range(5)])
    sim.decode()
    rows, lens = sim.batch_rows()
    saved_row = kids[0].req_pool_idx
    kids[0].req_pool_idx = 10_000                       # pool row is not the batch's
    kids[1].last_node = TreeNode()                      # detached from the tree
    kids[2].finished_reason = FINISH_LENGTH(1)          # finished (overlap leftover)
    corrupt = sim.req_to_token[rows[3], 5].item()       # row disagrees with the shared node
    sim.req_to_token[rows[3], 5] = 4242
    forest = read_decode_forest(sim.running.reqs, rows, lens, sim.tree_cache,
                                sim.req_to_token, verify=True)
    assert sum(forest.fallbacks.values()) == 4, forest.fallbacks
    for b in range(4):
        assert forest.path_positions(b) == [(rows[b], 0, lens[b])]
    assert len(forest.path_positions(4)) > 1  # the healthy request still shares
    assert_exact(forest, rows, lens, sim.req_to_token)
    sim.req_to_token[rows[3], 5] = corrupt
    kids[0].req_pool_idx = saved_row


def test_unsupported_cache_and_chains(sim_factory):
    sim = sim_factory()
    fork(sim, PROMPT, [[1], [2]])
    sim.decode()
    rows, lens = sim.batch_rows()
    assert tree_cache_supported(sim.tree_cache) and not tree_cache_supported(None)
    for forest in (read_decode_forest(sim.running.reqs, rows, lens, tree_cache=None),
                   chain_forest(rows, lens)):
        assert forest.num_tree_nodes == 0 and np.all(forest.node_parent == -1)
        assert_exact(forest, rows, lens, sim.req_to_token)
    with pytest.raises(ValueError, match="batch sizes differ"):
        read_decode_forest(sim.running.reqs, rows[:1], lens, sim.tree_cache)


def test_tails_grow_in_place_and_never_shrink():
    """``with_tails_at``: the same forest with each request's tail running to its new length;
    tree nodes and the original forest are untouched, a shorter length is refused."""
    forest = chain_forest([3, 5], [10, 7])  # two chains: tails start at 0
    grown = forest.with_tails_at(np.array([12, 9]))
    assert grown.node_len[grown.query_node].tolist() == [12, 9]
    assert forest.node_len[forest.query_node].tolist() == [10, 7]
    assert grown.node_row.tolist() == forest.node_row.tolist()
    with pytest.raises(ValueError, match="shrink"):
        forest.with_tails_at(np.array([0, 9]))
