"""DeFT in CUDA-graph form vs eager, per layer: what SGLang's decode graphs will see.

    PYTHONUNBUFFERED=1 python benchmarks/bench_graph.py --out DIR [--quick] [--workloads PAT ...]
        [--server-shapes] [--deft-config split_launches=true ...]

Per workload (the kernel benchmark's workloads and heads):

* ``eager_us``: ``plan.run`` (launches sized to the tree), timed with the harness's ``bench``;
* ``static_us``: :class:`StaticTreeAttention` with the plan loaded (persistent phase 1 over a
  work list in device memory, merge over the whole captured batch);
* ``graph_us``: 32 layers of ``static.run`` captured in one CUDA graph, replay time / 32
  (launch overhead gone, as in SGLang's decode graphs);
* ``plan_ms`` and ``load_us``: host time to plan the step and to load it into the workspace.

Every static result is checked against ``plan.run``. Writes DIR/graph.json and DIR/graph.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import harness as H  # noqa: E402
import workloads as WL  # noqa: E402

LAYERS = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workloads", nargs="*")
    p.add_argument("--time-budget", type=float, default=300.0)
    p.add_argument("--deft-config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="PlannerConfig overrides, e.g. split_launches=true")
    p.add_argument("--server-shapes", action="store_true",
                   help="also the end-to-end runs' decode batches (workloads.server_workloads)")
    return p.parse_args(argv)


def caches(w: WL.Workload, device):
    h, g = w.heads, torch.Generator(device="cpu").manual_seed(0)
    k = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, generator=g).to(device, h.dtype)
    v = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, generator=g).to(device, h.dtype)
    q = torch.randn(w.num_queries, h.num_qo_heads, h.head_dim, generator=g).to(device, h.dtype)
    return q, k, v


def measure(w: WL.Workload, device, config=None) -> dict:
    K = H.import_deft()
    h = w.heads
    q, k, v = caches(w, device)

    def plan():
        return K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices,
                                     w.query_node, num_qo_heads=h.num_qo_heads,
                                     num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
                                     device=device, validate=False, config=config)
    p = plan()
    stats = p.stats()
    static = K.StaticTreeAttention(max_queries=w.num_queries, max_items=1 << 16,
                                   max_kv_tokens=w.num_slots, max_partials=stats["num_partials"] + 64,
                                   num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads,
                                   head_dim=h.head_dim, dtype=h.dtype, device=device,
                                   config=config)
    static.load(p)
    eager_out = p.run(q, k, v, check=False)
    out = torch.empty_like(q)
    static.run(q, k, v, out)
    H.sync(device)
    err = (out.float() - eager_out.float()).abs().max().item()
    graph = torch.cuda.CUDAGraph()
    outs = [torch.empty_like(q) for _ in range(LAYERS)]
    with torch.cuda.graph(graph):
        for layer_out in outs:
            static.run(q, k, v, layer_out)
    row = dict(workload=w.name, queries=w.num_queries, unique_tokens=stats["unique_kv_tokens"],
               work_items=stats["num_work_items"], partials=stats["num_partials"],
               max_err_vs_eager=err)
    row["eager_us"] = H.bench(lambda: p.run(q, k, v, out=out, check=False), device)["median_us"]
    row["static_us"] = H.bench(lambda: static.run(q, k, v, out), device)["median_us"]
    row["graph_us"] = H.bench(graph.replay, device)["median_us"] / LAYERS
    row["plan_ms"] = H.time_host(plan, device)["host_us"] / 1e3
    row["load_us"] = H.time_host(lambda: static.load(p), device, sync_each=False)["host_us"]
    return row


COLUMNS = [("workload", "workload"), ("queries", "queries"), ("unique_tokens", "unique KV"),
           ("eager_us", "eager µs"), ("static_us", "static µs"), ("graph_us", "graph µs/layer"),
           ("plan_ms", "plan ms"), ("load_us", "load µs"), ("max_err_vs_eager", "max err")]


def write_markdown(path: str, env: dict, rows: list[dict]) -> None:
    cells = [{key: H.fmt(row[key], 2) if isinstance(row.get(key), float) else row.get(key, "")
              for key, _ in COLUMNS} for row in rows]
    with open(path, "w") as f:
        f.write(H.env_markdown(env) + "\n\n"
                + H.markdown_table(cells, [(label, key) for key, label in COLUMNS]) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cuda")
    env = H.env_record(device)
    config = H.planner_config(H.import_deft(), args.deft_config)
    env["deft_config"] = args.deft_config
    pool = (WL.server_workloads() if args.server_shapes else []) + WL.full_workloads(args.quick)
    chosen = WL.select(pool, args.workloads)
    rows, start = [], time.time()
    for w in chosen:
        if time.time() - start > args.time_budget:
            H.log(f"time budget reached; skipping {w.name} and later")
            break
        row = measure(w.materialize(), device, config)
        rows.append(row)
        H.log(" | ".join(f"{label} {H.fmt(row[key], 2) if isinstance(row[key], float) else row[key]}"
                         for key, label in COLUMNS))
        H.write_json(os.path.join(args.out, "graph.json"), dict(env=env, rows=rows))
    write_markdown(os.path.join(args.out, "graph.md"), env, rows)
    bad = [r["workload"] for r in rows if r["max_err_vs_eager"] > 2e-2]
    H.log(f"wrote {args.out}/graph.md; {'all match eager' if not bad else f'MISMATCH: {bad}'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
