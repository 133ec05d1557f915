"""Benchmark workloads as DeFT contract arrays (page size 1, slots scattered over a KV pool).

A workload is a forest of nodes (token counts) and the node each query decodes at; slots are a
random permutation of a pool exactly as large as the unique tokens plus ~1% spare, so every
kernel sees realistically scattered KV.  Names are stable: ``--workloads`` matches them by
fnmatch pattern or substring.

Sources: the paper's few-shot tree (4000-token prompt, b branches, g generated tokens each); the
four Tree-of-Thoughts traces (``data/tot_trees.json``, replayed with the rule in
``data/README.md``); speculative-decoding stars (t one-token drafts under a ~1016-token prompt);
a long prefix; a 1024-way fan-out; a 3-level tree; a mixed batch; an unshared batch.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tot_trees.json")
SPEC_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "spec_trees.json")
TOT_FILES = ["docmergeToT", "keywordToT", "set128ToT", "sorting128ToT"]


@dataclass(frozen=True)
class Heads:
    num_qo_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16

    @property
    def label(self) -> str:
        return f"{self.num_qo_heads}/{self.num_kv_heads}/d{self.head_dim}"

    @property
    def elem_bytes(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


LLAMA3_8B = Heads()
HEAD_VARIANTS = [Heads(32, 32, 128), Heads(32, 4, 128), Heads(16, 1, 128), Heads(32, 8, 64)]


@dataclass
class Tree:
    """Host-side forest: ``parent[n] < n`` (-1 for roots), ``tokens[n]``, ``query_node[b]``."""

    parent: list
    tokens: list
    query_node: list

    @staticmethod
    def forest(trees: list["Tree"]) -> "Tree":
        parent, tokens, queries = [], [], []
        for t in trees:
            base = len(parent)
            parent += [p + base if p >= 0 else -1 for p in t.parent]
            tokens += list(t.tokens)
            queries += [q + base for q in t.query_node]
        return Tree(parent, tokens, queries)


@dataclass
class Workload:
    name: str
    group: str
    tree: Tree
    heads: Heads = LLAMA3_8B
    meta: dict = field(default_factory=dict)
    # filled by materialize()
    node_parent: np.ndarray | None = None
    node_kv_indptr: np.ndarray | None = None
    node_kv_indices: np.ndarray | None = None
    query_node: np.ndarray | None = None
    num_slots: int = 0

    def materialize(self, seed: int = 0) -> "Workload":
        rng = np.random.default_rng(seed)
        tokens = np.asarray(self.tree.tokens, dtype=np.int64)
        total = int(tokens.sum())
        self.num_slots = total + max(16, total // 100)
        self.node_parent = np.asarray(self.tree.parent, dtype=np.int32)
        self.node_kv_indptr = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int32)
        self.node_kv_indices = rng.permutation(self.num_slots)[:total].astype(np.int32)
        self.query_node = np.asarray(self.tree.query_node, dtype=np.int32)
        return self

    @property
    def num_queries(self) -> int:
        return len(self.tree.query_node)

    def unique_tokens(self) -> int:
        """Tokens of nodes on some query's path (what an exact-once kernel must read)."""
        parent = np.asarray(self.tree.parent)
        need = np.zeros(len(parent), dtype=bool)
        for n in set(self.tree.query_node):
            while n >= 0 and not need[n]:
                need[n] = True
                n = parent[n]
        return int(np.asarray(self.tree.tokens)[need].sum())

    def path_tokens(self) -> np.ndarray:
        """Per query: tokens on its root-to-node path (what per-request decode reads)."""
        parent, tokens = self.tree.parent, self.tree.tokens
        depth_tokens = np.zeros(len(parent), dtype=np.int64)
        for n, p in enumerate(parent):
            depth_tokens[n] = tokens[n] + (depth_tokens[p] if p >= 0 else 0)
        return depth_tokens[np.asarray(self.tree.query_node, dtype=np.int64)]

    def depth(self) -> int:
        parent = self.tree.parent
        d = [0] * len(parent)
        for n, p in enumerate(parent):
            d[n] = d[p] + 1 if p >= 0 else 1
        return max(d) if d else 0

    def describe(self) -> dict:
        return dict(queries=self.num_queries, nodes=len(self.tree.parent), depth=self.depth(),
                    unique_tokens=self.unique_tokens(),
                    per_request_tokens=int(self.path_tokens().sum()), heads=self.heads.label,
                    **self.meta)


# ---------------------------------------------------------------------------------- builders
def fanout_tree(prompt: int, branches: int, gen: int) -> Tree:
    """A prompt node with ``branches`` children of ``gen`` tokens, one query per child."""
    return Tree([-1] + [0] * branches, [prompt] + [gen] * branches,
                list(range(1, branches + 1)))


def three_level_tree(prompt: int, b1: int, t1: int, b2: int, t2: int) -> Tree:
    parent, tokens, queries = [-1], [prompt], []
    for _ in range(b1):
        mid = len(parent)
        parent.append(0)
        tokens.append(t1)
        for _ in range(b2):
            queries.append(len(parent))
            parent.append(mid)
            tokens.append(t2)
    return Tree(parent, tokens, queries)


def spec_tree(prompt: int, choices) -> Tree:
    """Tree verification: a ``prompt``-token prefix, then a one-token node per token of the
    draft tree given by Medusa ``choices``; every draft token is a query at its own node."""
    from harness import import_deft  # the kernels package, installed or from the source tree

    _, token_parent = import_deft().token_tree_parents(choices)
    parent = [-1] + [p + 1 if p >= 0 else 0 for p in token_parent]
    return Tree(parent, [prompt] + [1] * len(token_parent), list(range(1, len(parent))))


def load_spec_trees() -> dict:
    with open(SPEC_DATA) as f:
        return json.load(f)["tree_structure_by_size"]


def unshared_tree(lengths) -> Tree:
    return Tree([-1] * len(lengths), [int(x) for x in lengths], list(range(len(lengths))))


def load_tot() -> dict:
    with open(DATA) as f:
        return json.load(f)


def tot_snapshot(tree: dict, iteration: int, scale: int = 1) -> Tree:
    """The live tree at ``iteration`` under the replay rule (data/README.md).

    A node is alive from ``start`` until ``end`` (leaf) or the largest ``end`` in its subtree
    (interior); it holds ``min(value, iteration - start + 1)`` tokens; every node with
    ``start <= iteration <= end`` is decoding and carries one query.  ``scale`` > 1 divides
    token counts (CPU smoke tests only).
    """
    parent = np.asarray(tree["parent"])
    value, start, end = (np.asarray(tree[k]) for k in ("value", "start", "end"))
    free_at = end.copy()
    for n in range(len(parent) - 1, 0, -1):
        free_at[parent[n]] = max(free_at[parent[n]], free_at[n])
    alive = (start <= iteration) & (iteration <= free_at)
    alive[0] = True
    new_id = -np.ones(len(parent), dtype=np.int64)
    new_id[alive] = np.arange(int(alive.sum()))
    out_parent, out_tokens, queries = [], [], []
    for n in np.nonzero(alive)[0]:
        out_parent.append(int(new_id[parent[n]]) if parent[n] >= 0 else -1)
        tok = int(min(value[n], iteration - start[n] + 1))
        out_tokens.append(max(1, tok // scale) if scale > 1 else tok)
        if n > 0 and start[n] <= iteration <= end[n]:
            queries.append(int(new_id[n]))
    return Tree(out_parent, out_tokens, queries)


def tot_iterations(tree: dict, fractions) -> list[int]:
    total = max(tree["end"])
    return [max(1, int(round(f * total))) for f in fractions]


# ---------------------------------------------------------------------------------- registry
def _tot_workloads(tot: dict, trees_per_file: int, fractions, scale: int = 1) -> list[Workload]:
    out = []
    for fname in TOT_FILES:
        short = fname.replace("ToT", "")
        picks = tot[fname][1::2][:trees_per_file]  # quantile 0.35 / 0.65 / 1.0 trees
        for t in picks:
            for frac, it in zip(fractions, tot_iterations(t, fractions)):
                name = f"tot-{short}-tree{t['source_index']}-it{it}"
                out.append(Workload(name, f"tot-{short}", tot_snapshot(t, it, scale),
                                    meta=dict(source=f"{fname}[{t['source_index']}]",
                                              iteration=it, fraction=frac)))
    return out


def _tot_batch(tot: dict, fname: str, n_trees: int, frac: float, scale: int = 1) -> Workload:
    trees = tot[fname][:n_trees]
    snaps = [tot_snapshot(t, tot_iterations(t, [frac])[0], scale) for t in trees]
    short = fname.replace("ToT", "")
    return Workload(f"tot-{short}-batch{len(trees)}", "tot-batch", Tree.forest(snaps),
                    meta=dict(source=f"{fname}[:{len(trees)}] at {frac:.0%} of each tree"))


def _mixed(tot: dict, scale: int = 1) -> Workload:
    rng = np.random.default_rng(1234)
    parts = [fanout_tree(4000 // scale, 20, 100 // scale),
             tot_snapshot(tot["set128ToT"][2], 300, scale),
             tot_snapshot(tot["docmergeToT"][2], 1500, scale),
             fanout_tree(1016 // scale, 64, 1),
             unshared_tree(rng.integers(1000, 6000, 32) // scale)]
    return Workload("mixed-trees+32unshared", "mixed", Tree.forest(parts),
                    meta=dict(parts="fewshot 4000x20(+100), 2 ToT snapshots, star t=64, "
                                    "32 unshared 1k-6k"))


def full_workloads(quick: bool = False) -> list[Workload]:
    """All GPU workloads, most important first (so a time budget cuts the tail)."""
    tot = load_tot()
    W = []
    add = W.append
    add(Workload("fewshot-4000xb50-g400", "fewshot", fanout_tree(4000, 50, 400),
                 meta=dict(branches=50, gen=400)))
    add(Workload("long-32000x16-g256", "long", fanout_tree(32000, 16, 256)))
    add(Workload("fanout-2048x1024-g32", "fanout", fanout_tree(2048, 1024, 32)))
    add(Workload("unshared-128x4096", "unshared", unshared_tree([4096] * 128)))
    for b in (20, 30, 50):
        for g in (100, 400):
            if (b, g) != (50, 400) and (not quick or g == 400):
                add(Workload(f"fewshot-4000xb{b}-g{g}", "fewshot", fanout_tree(4000, b, g),
                             meta=dict(branches=b, gen=g)))
    add(Workload("tree3-1600x16x16", "tree3", three_level_tree(1600, 16, 200, 16, 50),
                 meta=dict(note="3-level tree, 256 queries (also the planning target)")))
    spec = load_spec_trees()
    for t in ((128,) if quick else (32, 64, 128, 256)):
        add(Workload(f"spec-star-t{t}", "spec-star", fanout_tree(1016, t, 1), meta=dict(t=t)))
        add(Workload(f"spec-medusa-t{t}", "spec-tree", spec_tree(1016, spec[str(t)]),
                     meta=dict(t=t, note="Medusa token tree (DeFT traces), verify attention")))
    W += _tot_workloads(tot, 1 if quick else 3, (0.5,) if quick else (0.2, 0.5, 0.8))
    for fname in (["set128ToT"] if quick else TOT_FILES):
        add(_tot_batch(tot, fname, 6, 0.5))
    add(_mixed(tot))
    for h in (HEAD_VARIANTS[2:3] if quick else HEAD_VARIANTS):
        add(Workload(f"fewshot-4000xb50-g400@{h.label}", "heads", fanout_tree(4000, 50, 400),
                     heads=h, meta=dict(branches=50, gen=400)))
        if not quick:
            base = _tot_batch(tot, "set128ToT", 6, 0.5)
            add(Workload(f"{base.name}@{h.label}", "heads", base.tree, heads=h, meta=base.meta))
    return W


def server_workloads() -> list[Workload]:
    """The decode batches of the end-to-end runs where DeFT trailed stock (H100, llama-1b-shape:
    32/8 heads of 64): 1k prompt x 64 forks, n = 32 parallel sampling of a 1k prompt, 256
    unshared ~1.1k requests; and the 1k / 8k x 64 forks with Llama-3-8B heads (the 8k one is the
    issue's end-to-end target). Tails of 128 tokens stand for the middle of a 256-token
    generation."""
    small = Heads(32, 8, 64)
    return [Workload("srv1b-fork-1024x64", "server", fanout_tree(1024, 64, 128), heads=small),
            Workload("srv1b-nsample-1024x32", "server", fanout_tree(1024, 32, 128), heads=small),
            Workload("srv1b-unshared-256x1100", "server", unshared_tree([1100] * 256),
                     heads=small),
            Workload("srv8b-fork-1024x64", "server", fanout_tree(1024, 64, 128)),
            Workload("srv8b-fork-8192x64", "server", fanout_tree(8192, 64, 128))]


def smoke_workloads() -> list[Workload]:
    """Tiny cases for ``--cpu-smoke`` (TRITON_INTERPRET=1): every builder, small heads."""
    tot = load_tot()
    small = Heads(4, 2, 32, torch.float32)
    W = [Workload("fewshot-64xb3-g8", "fewshot", fanout_tree(64, 3, 8), heads=small,
                  meta=dict(branches=3, gen=8)),
         Workload("fewshot-64xb5-g8", "fewshot", fanout_tree(64, 5, 8), heads=small,
                  meta=dict(branches=5, gen=8)),
         Workload("spec-star-t6", "spec-star", fanout_tree(40, 6, 1), heads=small),
         Workload("tree3-24x3x2", "tree3", three_level_tree(24, 3, 5, 2, 3), heads=small),
         Workload("spec-medusa-t32", "spec-tree", spec_tree(40, load_spec_trees()["32"]),
                  heads=small),
         Workload("unshared-4x50", "unshared", unshared_tree([50, 17, 33, 64]), heads=small),
         # fp16: the Triton interpreter cannot run SGLang's kernel in bf16 (DeFT it can)
         Workload("fewshot-fp16-mqa", "heads", fanout_tree(48, 3, 6),
                  heads=Heads(8, 1, 64, torch.float16)),
         Workload("fewshot-bf16-mha", "heads", fanout_tree(40, 2, 5),
                  heads=Heads(4, 4, 64, torch.bfloat16))]
    snap = tot_snapshot(tot["keywordToT"][0], 200, scale=40)
    W.append(Workload("tot-keyword-scaled", "tot-keyword", snap, heads=small))
    W.append(Workload("mixed-scaled", "mixed", _mixed(tot, scale=160).tree, heads=small))
    return W


def select(workloads: list[Workload], patterns: list[str] | None) -> list[Workload]:
    if not patterns:
        return workloads
    return [w for w in workloads
            if any(fnmatch.fnmatch(w.name, p) or p in w.name for p in patterns)]
