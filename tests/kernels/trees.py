"""Random and hand-made KV forests for kernel tests (contract arrays as Python lists)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

# Kernels run on the GPU when there is one, else on the CPU under TRITON_INTERPRET=1.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Forest:
    parent: list
    indptr: list
    indices: list
    query_node: list
    num_slots: int


def make_forest(node_tokens, parents, query_node, *, seed=0, spare_slots=7) -> Forest:
    """Forest whose node n holds node_tokens[n] tokens at random, distinct pool slots."""
    indptr = [0]
    for count in node_tokens:
        indptr.append(indptr[-1] + count)
    num_slots = indptr[-1] + spare_slots
    slots = torch.randperm(num_slots, generator=torch.Generator().manual_seed(seed))
    return Forest(list(parents), indptr, slots[:indptr[-1]].tolist(), list(query_node), num_slots)


def random_forest(rng: random.Random, *, max_nodes=12, max_tokens=40, max_queries=10,
                  empty_prob=0.15, interior_queries=True) -> Forest:
    num_nodes = rng.randint(1, max_nodes)
    parents = [-1] + [rng.choice([-1] + list(range(n))) if rng.random() < 0.15
                      else rng.randrange(n) for n in range(1, num_nodes)]
    tokens = [0 if rng.random() < empty_prob else rng.choice([1, rng.randint(1, max_tokens)])
              for _ in range(num_nodes)]
    has_child = {p for p in parents if p >= 0}
    leaves = [n for n in range(num_nodes) if n not in has_child]
    candidates = list(range(num_nodes)) if interior_queries else leaves
    num_queries = rng.randint(1, max_queries)
    query_node = [rng.choice(candidates) for _ in range(num_queries)]
    return make_forest(tokens, parents, query_node, seed=rng.randrange(1 << 30),
                       spare_slots=rng.randint(0, 9))


def chain(depth: int, tokens: int, queries: int = 1) -> Forest:
    return make_forest([tokens] * depth, [-1] + list(range(depth - 1)), [depth - 1] * queries)


def star(prefix: int, branches: int, tail: int) -> Forest:
    return make_forest([prefix] + [tail] * branches, [-1] + [0] * branches,
                       list(range(1, branches + 1)))


def random_qkv(forest: Forest, batch, num_qo_heads, num_kv_heads, head_dim, dtype, device=DEVICE,
               seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)
    return (rnd(batch, num_qo_heads, head_dim), rnd(forest.num_slots, num_kv_heads, head_dim),
            rnd(forest.num_slots, num_kv_heads, head_dim))
