"""A tree-of-thought serving workload whose branching follows the DeFT reasoning traces.

Each trace (``benchmarks/data/tot_trees.json``: Tree-of-Thoughts runs from the DeFT reference
repository, MIT; see the README there) records one run: the root's ``value`` is the prompt
length, every expanding node branches into its children (10 per level), each child generates
``value`` tokens, and one node per level expands further. The program replays that against a
server:

1. every tree's root becomes a random prompt of the root's length, prefilled (and cached);
2. level by level, the children of every expanding node are one request each: the path's
   tokens plus one distinct token per child, ``max_new_tokens`` = the child's ``value``
   (greedy, ``ignore_eos``); the trees run side by side, so one level of all trees is one batch;
3. the child that expands next continues from its own prompt and output tokens, so each level
   decodes on top of the whole path above it, which SGLang's radix cache holds once.

The timed part is the levels (decode, plus each child's one-token prefill of its distinct
token); the root prefill is not timed. The row's TPOT is the levels' time over their decode
steps (a level runs until its longest branch is done).
"""
from __future__ import annotations

import json
import os
import random
import time

TRACES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "data",
                      "tot_trees.json")
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def load_trees(name: str, count: int, path: str = TRACES) -> list[dict]:
    """The first ``count`` complete trees of trace file ``name`` (e.g. ``keywordToT``)."""
    with open(path) as f:
        traces = json.load(f)
    if name not in traces:
        raise ValueError(f"unknown ToT trace {name!r}; choose from {', '.join(sorted(traces))}")
    if count < 1 or count > len(traces[name]):
        raise ValueError(f"--tot asks for {count} trees of {name}; it has {len(traces[name])}")
    return traces[name][:count]


def children_of(tree: dict) -> dict[int, list[int]]:
    """Node -> its children, in the trace's (BFS) order."""
    kids: dict[int, list[int]] = {}
    for node, parent in enumerate(tree["parent"]):
        if parent >= 0:
            kids.setdefault(parent, []).append(node)
    return kids


def output_ids(result: dict) -> list[int]:
    """The generated token ids of one /generate result."""
    if "output_ids" in result:
        return [int(t) for t in result["output_ids"]]
    logprobs = result.get("meta_info", {}).get("output_token_logprobs") or []
    return [int(entry[1]) for entry in logprobs]


def run_tot(client, vocab: int, trace: str, num_trees: int, seed: int = 0,
            max_new_cap: int = 0) -> dict:
    """Replay ``num_trees`` trees of ``trace`` side by side; a throughput row (see e2e_compare).

    ``max_new_cap`` > 0 caps every child's generated tokens (shorter runs)."""
    trees = load_trees(trace, num_trees)
    rng = random.Random(seed)
    kids = [children_of(t) for t in trees]
    path_ids = [{0: [rng.randrange(3, vocab) for _ in range(int(t["value"][0]))]} for t in trees]
    client.generate(input_ids=[p[0] for p in path_ids],
                    sampling_params={**GREEDY, "max_new_tokens": 1})
    frontier = [(t, 0) for t in range(len(trees))]
    levels, tokens, requests, wall = [], 0, 0, 0.0
    while frontier:
        batch = []  # (tree, child, prompt, new tokens)
        for t, node in frontier:
            for i, child in enumerate(kids[t].get(node, [])):
                new = int(trees[t]["value"][child])
                new = min(new, max_new_cap) if max_new_cap > 0 else new
                batch.append((t, child, path_ids[t][node] + [3 + i], max(1, new)))
        if not batch:
            break
        start = time.perf_counter()
        results = client.generate(input_ids=[b[2] for b in batch], sampling_params=[
            {**GREEDY, "max_new_tokens": b[3]} for b in batch])
        spent = time.perf_counter() - start
        made = sum(int(r["meta_info"]["completion_tokens"]) for r in results)
        levels.append({"requests": len(batch), "tokens": made, "wall_s": round(spent, 4),
                       "steps": max(b[3] for b in batch)})
        tokens, requests, wall = tokens + made, requests + len(batch), wall + spent
        frontier = []
        for (t, child, prompt, _), result in zip(batch, results):
            if kids[t].get(child):  # this child expands at the next level
                path_ids[t][child] = prompt + output_ids(result)
                frontier.append((t, child))
    row = {"kind": "tot", "trace": trace, "trees": len(trees), "levels": len(levels),
           "requests": requests, "tokens": tokens, "wall_s": round(wall, 4),
           "decode_tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
           # a level decodes in lockstep up to its longest branch
           "tpot_ms": round(1000 * wall / max(1, sum(lv["steps"] for lv in levels)), 3),
           "level_latency_ms": [round(1000 * lv["wall_s"], 1) for lv in levels],
           "prefix": int(trees[0]["value"][0]), "width": max(len(k) for k in kids[0].values())}
    print(f"    tot       {trace} x {len(trees)} trees, {len(levels)} levels, {requests} "
          f"requests: {row['decode_tok_s']:9.1f} tok/s", flush=True)
    return row
