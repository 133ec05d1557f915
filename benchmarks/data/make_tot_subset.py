"""Regenerate ``tot_trees.json`` (a compact subset of the DeFT ToT traces) from the originals.

    python benchmarks/data/make_tot_subset.py /work/shared/data/deft-traces/reasoning

Keeps, per file, 6 complete trees picked at spread-out quantiles of their iteration count, and of
each tree only the node structure (parent in BFS order, value, start, end).  See README.md here for
the attribution and the replay rule.
"""
import json
import os
import sys

FILES = ["docmergeToT", "keywordToT", "set128ToT", "sorting128ToT"]
QUANTILES = [0.15, 0.35, 0.5, 0.65, 0.85, 1.0]


def compact(tree: dict) -> dict:
    data = {int(k): v for k, v in tree["data"].items()}
    root = 0
    order, parent_of = [root], {root: -1}
    for node in order:  # BFS: every parent precedes its children
        for child in data[node]["children"]:
            parent_of[child] = node
            order.append(child)
    new_id = {old: i for i, old in enumerate(order)}
    return {
        "parent": [new_id[parent_of[o]] if parent_of[o] >= 0 else -1 for o in order],
        "value": [data[o]["value"] for o in order],
        "start": [data[o]["start"] for o in order],
        "end": [data[o]["end"] for o in order],
    }


def main(src: str, dst: str) -> None:
    out = {}
    for name in FILES:
        trees = [t for t in json.load(open(os.path.join(src, name + ".json")))
                 if not t["incompleted"]]
        compacted = [compact(t) for t in trees]
        index = sorted(range(len(compacted)), key=lambda i: (max(compacted[i]["end"]), i))
        picks = []
        for q in QUANTILES:
            i = index[min(len(index) - 1, int(q * (len(index) - 1)))]
            if i not in picks:
                picks.append(i)
        out[name] = [dict(source_index=i, **compacted[i]) for i in picks]
    with open(dst, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {dst}: " + ", ".join(f"{k}: {len(v)} trees" for k, v in out.items()))


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/deft-traces/reasoning",
         os.path.join(here, "tot_trees.json"))
