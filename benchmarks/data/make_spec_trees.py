"""Compact the DeFT speculative-decoding traces into ``spec_trees.json`` (see README.md).

    python benchmarks/data/make_spec_trees.py <path to deft-traces/speculative/>

Keeps each file's ``Tree_Structure`` (Medusa choice paths) keyed by ``Token_Tree_size``; the
prompts and acceptance records are dropped.
"""
import glob
import json
import os
import sys


def main(src: str) -> None:
    trees = {}
    for path in sorted(glob.glob(os.path.join(src, "APPS_tree_size*.json"))):
        with open(path) as f:
            data = json.load(f)
        trees[str(data["Token_Tree_size"])] = data["Tree_Structure"]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_trees.json")
    with open(out, "w") as f:
        json.dump({"source": "LINs-lab/DeFT commit 728525e, speculative/APPS_tree_size*.json",
                   "tree_structure_by_size": dict(sorted(trees.items(), key=lambda x: int(x[0])))},
                  f, separators=(",", ":"))
    print(f"wrote {out}: sizes {sorted(map(int, trees))}")


if __name__ == "__main__":
    main(sys.argv[1])
