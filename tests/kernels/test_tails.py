"""Tail slack: a plan advanced on the device equals a fresh plan of the grown tree, step by step."""
import pytest
import torch

from deft_sglang.kernels import StaticTreeAttention, plan_tree_attention, tree_attention_reference

from .trees import DEVICE, Forest, make_forest, random_qkv, star

HQ, HKV, D = 8, 2, 32


def grow(forest: Forest, new_slots) -> Forest:
    """``forest`` with ``new_slots[b]`` appended to query b's node."""
    indices, indptr = list(forest.indices), list(forest.indptr)
    for b, slot in enumerate(new_slots):
        node = forest.query_node[b]
        indices.insert(indptr[node + 1], slot)
        indptr = indptr[:node + 1] + [x + 1 for x in indptr[node + 1:]]
    return Forest(forest.parent, indptr, indices, forest.query_node, forest.num_slots)


def with_spare_slots(forest: Forest, steps: int) -> Forest:
    """``forest`` with room in its pool for ``steps`` new tokens per query."""
    return Forest(forest.parent, forest.indptr, forest.indices, forest.query_node,
                  forest.num_slots + steps * len(forest.query_node))


def advance(plan, base: Forest, current: Forest, step: int, *buffers) -> Forest:
    """Append decode step ``step``'s token of every query (fresh pool slots past ``base``'s)
    to ``plan`` (or to the workspace ``buffers``); return ``current`` grown the same way."""
    batch = len(base.query_node)
    new = [base.num_slots + step * batch + b for b in range(batch)]
    plan.extend_tails(torch.tensor(new, device=DEVICE), *buffers)
    return grow(current, new)


def plan_for(forest, **kwargs):
    return plan_tree_attention(forest.parent, forest.indptr, forest.indices, forest.query_node,
                               num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, device=DEVICE,
                               **kwargs)


def reference(forest, q, k, v):
    return tree_attention_reference(q, k, v, forest.parent, forest.indptr, forest.indices,
                                    forest.query_node)


EXTENDABLE = [
    star(prefix=300, branches=6, tail=11),
    # queries listed out of node order, two levels, a 1-token tail
    make_forest([50, 20, 20, 5, 1, 7], [-1, 0, 0, 1, 1, 2], [5, 3, 4]),
    make_forest([9, 30, 1], [-1, -1, -1], [2, 0, 1]),  # unshared requests
]


@pytest.mark.parametrize("device_indices", [False, True])
@pytest.mark.parametrize("forest", EXTENDABLE)
def test_advanced_plan_equals_the_grown_tree(forest, device_indices):
    slack, batch = 3, len(forest.query_node)
    q, k, v = random_qkv(with_spare_slots(forest, slack), batch, HQ, HKV, D, torch.float32,
                         seed=batch)
    if device_indices:  # as the SGLang backend plans: slots gathered on the device, unvalidated
        plan = plan_tree_attention(forest.parent, forest.indptr,
                                   torch.tensor(forest.indices, device=DEVICE),
                                   forest.query_node, num_qo_heads=HQ, num_kv_heads=HKV,
                                   head_dim=D, device=DEVICE, validate=False, tail_slack=slack)
    else:
        plan = plan_for(forest, tail_slack=slack)
    assert plan.tails is not None and plan.tails.room == slack
    current = forest
    for step in range(slack):
        current = advance(plan, forest, current, step)
        err = (plan.run(q, k, v) - reference(current, q, k, v)).abs().max().item()
        assert err < 2e-5, f"step {step}: {err}"
    with pytest.raises(ValueError, match="used up"):
        plan.extend_tails(torch.zeros(batch, dtype=torch.int32, device=DEVICE))


def test_workspace_copy_is_advanced_in_place():
    forest, slack = EXTENDABLE[1], 2
    batch = len(forest.query_node)
    q, k, v = random_qkv(with_spare_slots(forest, slack), 8, HQ, HKV, D, torch.float32, seed=3)
    static = StaticTreeAttention(max_queries=8, max_items=64, max_kv_tokens=1000,
                                 max_partials=256, num_qo_heads=HQ, num_kv_heads=HKV,
                                 head_dim=D, dtype=torch.float32, device=DEVICE, num_programs=3)
    plan = plan_for(forest, tail_slack=slack)
    static.load(plan)
    current = forest
    for step in range(slack):
        current = advance(plan, forest, current, step, static.kv_indices, static.items)
        out = torch.empty_like(q)
        static.run(q, k, v, out)
        err = (out[:batch] - reference(current, q[:batch], k, v)).abs().max().item()
        assert err < 2e-5


def _workspace(tail_steps: int) -> StaticTreeAttention:
    return StaticTreeAttention(max_queries=8, max_items=64, max_kv_tokens=1000,
                               max_partials=256, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D,
                               dtype=torch.float32, device=DEVICE, num_programs=3,
                               tail_steps=tail_steps)


@pytest.mark.parametrize("forest", EXTENDABLE)
def test_device_advance_as_a_graph_runs_it(forest):
    """What a replayed graph does: ``advance_tails`` with the step's slots, then the layers. The
    plan's own step advances nothing; every later step appends its token; past the loaded slack
    nothing is written (the host plans afresh before that)."""
    slack, batch = 3, len(forest.query_node)
    q, k, v = random_qkv(with_spare_slots(forest, slack + 1), 8, HQ, HKV, D, torch.float32,
                         seed=5)
    static = _workspace(tail_steps=4)
    plan = plan_for(forest, tail_slack=slack)
    static.load(plan)
    current = forest
    for step in range(-1, slack + 1):  # -1: the plan's own step
        new = [forest.num_slots + max(step, 0) * batch + b for b in range(batch)]
        # a graph's static buffer holds padding past the real rows
        slots = torch.tensor(new + [0] * (8 - batch), device=DEVICE)
        static.advance_tails(slots)
        if 0 <= step < slack:
            plan.tails.advanced_elsewhere()
            current = grow(current, new)
        out = torch.empty_like(q)
        static.run(q, k, v, out)
        err = (out[:batch] - reference(current, q[:batch], k, v)).abs().max().item()
        assert err < 2e-5, f"step {step}: {err}"
    assert plan.tails.room == 0
    with pytest.raises(ValueError, match="used up"):
        plan.tails.advanced_elsewhere()


def test_device_advance_is_disarmed_by_plans_without_slack():
    forest = EXTENDABLE[0]
    batch = len(forest.query_node)
    q, k, v = random_qkv(with_spare_slots(forest, 1), 8, HQ, HKV, D, torch.float32, seed=6)
    static = _workspace(tail_steps=2)
    static.load(plan_for(forest, tail_slack=2))
    static.load(plan_for(forest))  # no slack: later runs must write nothing
    for _ in range(2):
        static.advance_tails(torch.arange(forest.num_slots, forest.num_slots + 8, device=DEVICE))
    out = torch.empty_like(q)
    static.run(q, k, v, out)
    assert (out[:batch] - reference(forest, q[:batch], k, v)).abs().max().item() < 2e-5
    static.load(plan_for(forest, tail_slack=3))  # more slack than the tables hold: disarmed
    assert static.tails.state.tolist() == [-1, 0, 0]
    static.load_empty()
    assert static.tails.state.tolist() == [-1, 0, 0]
    with pytest.raises(ValueError, match="tail_steps"):
        _workspace(tail_steps=0).advance_tails(torch.zeros(8, dtype=torch.int64, device=DEVICE))


@pytest.mark.parametrize("forest", [
    make_forest([40, 5], [-1, 0], [1, 1]),          # two queries on one node
    make_forest([40, 5], [-1, 0], [0]),             # a query on an interior node
    make_forest([40, 0], [-1, 0], [1]),             # an empty tail
])
def test_other_trees_are_not_extendable(forest):
    plan = plan_for(forest, tail_slack=4)
    assert plan.tails is None
    with pytest.raises(ValueError, match="without tail slack"):
        plan.extend_tails(torch.zeros(len(forest.query_node), dtype=torch.int32, device=DEVICE))


def test_bad_slack():
    with pytest.raises(ValueError, match="tail_slack"):
        plan_for(EXTENDABLE[0], tail_slack=-1)


def private_tail_forest(rng):
    """A random radix-like forest whose every query sits alone on its own leaf (a decode batch)."""
    num_shared = rng.randint(1, 6)
    parents = [-1] + [rng.choice([-1] + list(range(n))) if rng.random() < 0.2 else rng.randrange(n)
                      for n in range(1, num_shared)]
    tokens = [rng.choice([0, 1, rng.randint(1, 60)]) for _ in range(num_shared)]
    queries = rng.randint(1, 9)
    query_node = []
    for _ in range(queries):  # a private tail (>= 1 token) below a random shared node, or a root
        parents.append(rng.choice([-1] + list(range(num_shared))))
        tokens.append(rng.randint(1, 20))
        query_node.append(len(parents) - 1)
    rng.shuffle(query_node)
    return make_forest(tokens, parents, query_node, seed=rng.randrange(1 << 30), spare_slots=0)


@pytest.mark.parametrize("seed", range(40))
def test_random_decode_batches_advance_exactly(seed):
    import random

    rng = random.Random(seed)
    forest = private_tail_forest(rng)
    slack, batch = rng.randint(1, 4), len(forest.query_node)
    steps = rng.randint(1, slack)
    q, k, v = random_qkv(with_spare_slots(forest, steps), batch, HQ, HKV, D, torch.float32,
                         seed=seed)
    plan = plan_for(forest, tail_slack=slack)
    assert plan.tails is not None
    current = forest
    for step in range(steps):
        current = advance(plan, forest, current, step)
    err = (plan.run(q, k, v) - reference(current, q, k, v)).abs().max().item()
    assert err < 2e-5


def test_extend_checks_the_slot_count():
    plan = plan_for(EXTENDABLE[0], tail_slack=2)
    with pytest.raises(ValueError, match="new_slots must have shape"):
        plan.extend_tails(torch.zeros(3, dtype=torch.int32, device=DEVICE))


def test_ranges_on_device():
    from deft_sglang.kernels.tree import ranges_on_device

    for device_path in (False, True):  # the GPU's torch ops, also checked on the CPU
        out = ranges_on_device([10, 0, 7, 3], [3, 0, 1, 2], DEVICE, device_path)
        assert out.tolist() == [10, 11, 12, 7, 3, 4] and out.dtype == torch.int64
        assert ranges_on_device([5], [0], DEVICE, device_path).numel() == 0


def test_device_tails_kernel_equals_the_host_reference_on_wide_batches():
    """More queries than one kernel block (1024): DeviceTails writes what TailSlack.extend does."""
    from deft_sglang.kernels.tails import DeviceTails, TailSlack
    gen = torch.Generator().manual_seed(0)
    batch, steps, width = 1500, 3, 1600
    first = torch.randperm(3000, generator=gen)[:batch] * steps  # tails never overlap
    open_items = torch.randperm(2000, generator=gen)[:batch]
    base_len = torch.randint(1, 50, (batch,), generator=gen)
    step_index = torch.arange(steps)[:, None]
    reference = TailSlack(room=steps, open_items=open_items.to(DEVICE),
                          positions=(first + step_index).to(DEVICE),
                          lengths=(base_len + 1 + step_index).to(torch.int32).to(DEVICE))
    tables = DeviceTails(steps + 1, width, DEVICE)
    tables.load(reference, batch)
    kv_ref = torch.zeros(9000, dtype=torch.int32, device=DEVICE)
    items_ref = torch.zeros(5, 2000, dtype=torch.int32, device=DEVICE)
    kv_dev, items_dev = kv_ref.clone(), items_ref.clone()
    tables.advance(torch.ones(width, dtype=torch.int64, device=DEVICE), kv_dev, items_dev)
    assert torch.count_nonzero(kv_dev) == 0  # the plan's own step writes nothing
    for _ in range(steps):
        slots = torch.randint(1, 1 << 20, (width,), generator=gen).to(DEVICE)
        reference.extend(slots[:batch], kv_ref, items_ref)
        tables.advance(slots, kv_dev, items_dev)
        assert torch.equal(kv_dev, kv_ref) and torch.equal(items_dev, items_ref)
    kept = (kv_dev.clone(), items_dev.clone())
    tables.advance(torch.ones(width, dtype=torch.int64, device=DEVICE), kv_dev, items_dev)
    assert torch.equal(kv_dev, kept[0]) and torch.equal(items_dev, kept[1])  # past the slack
