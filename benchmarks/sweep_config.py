"""Where DeFT's per-layer time goes, and how the planner's knobs move it (GPU host).

    PYTHONUNBUFFERED=1 python benchmarks/sweep_config.py --out DIR [--workloads PAT ...]
        [--configs "" "waves=8" "block_n=128,num_warps=8" ...]

For every workload (the kernel benchmark's) and every ``PlannerConfig`` variant (comma-separated
``KEY=VALUE`` overrides; ``""`` is the default config):

* ``us``: the median per-layer time of ``plan.run`` (the harness's ``bench``, L2 flushed);
* ``phase1_us`` / ``merge_us``: GPU time of each kernel, from the CUDA profiler over repeated
  runs with the L2 flushed before each (what the total is made of);
* the plan's shape: work items, partials, chunk tokens (median / max), row tiles;
* ``max_diff``: the largest difference from the default config's output (all must agree).

Writes DIR/sweep.json and DIR/sweep.md (one table per workload, best variant first).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness as H  # noqa: E402
import workloads as WL  # noqa: E402
from bench_graph import caches  # noqa: E402
from bench_kernels import make_planner  # noqa: E402

DEFAULT_WORKLOADS = [
    "srv8b-fork-8192x64", "srv8b-fork-1024x64", "srv1b-fork-1024x64",
    "fewshot-4000xb50-g400", "fewshot-4000xb20-g400", "long-32000x16-g256",
    "fanout-2048x1024-g32", "tree3-1600x16x16", "tot-*", "spec-star-t128",
    "fewshot-4000xb50-g400@16/1/d128", "unshared-128x4096", "mixed-*"]
# Session 4 swept registers caps, split launches, smaller tiles and merge heads (none helped;
# results/session4-*); session 5 made interleave_heads and the sequential merge the defaults;
# session 6 (results/session6-h100/run1/sweep) found more warps, 128-row tiles and deeper or
# shallower pipelines slower overall, and made max_floor_over_want=2 and the blocked merge for
# small batches the defaults. Its Nsight Compute run showed wide groups' row-tile passes missing
# L2, so this sweep tries row groups that run side by side (chunk-major order), for any node.
DEFAULT_CONFIGS = [
    "", "reread_min_queries=64,reread_group_rows=128,reread_needs_node_in_l2=true",
    "reread_group_rows=128", "reread_min_queries=8", "reread_min_queries=32",
    "block_m=128,num_warps=8,reread_group_rows=128", "small_block_n=32", "num_warps=8"]
PROFILE_REPS = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--workloads", nargs="*", default=DEFAULT_WORKLOADS)
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--rep-ms", type=float, default=40.0)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny workloads on the CPU (set TRITON_INTERPRET=1): checks the script")
    return p.parse_args(argv)


def kernel_times(fn, device) -> dict:
    """GPU µs per call of each kernel ``fn`` launches (CUDA profiler; L2 flushed before each)."""
    if device.type != "cuda":
        return {}
    flush = torch.empty(256 << 20, dtype=torch.int8, device=device)
    fn()
    torch.cuda.synchronize(device)
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(PROFILE_REPS):
            flush.zero_()
            fn()
        torch.cuda.synchronize(device)
    per_kernel: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = evt.name
        if "attention" not in name and "merge" not in name:
            continue  # the flush's fill kernel and copies
        key = "merge" if "merge" in name else "phase1"
        per_kernel[key] = per_kernel.get(key, 0.0) + evt.device_time / PROFILE_REPS
    return per_kernel


def plan_shape(plan) -> dict:
    st = plan.stats()
    lens = plan.items[1].cpu().numpy() if plan.items.numel() else np.zeros(1)
    return dict(items=st["num_work_items"], partials=st["num_partials"],
                max_partials=st["max_partials_per_query"], row_tiles=st["row_tiles"],
                chunk_median=int(np.median(lens)), chunk_max=int(lens.max()),
                merge_shape=list(st["merge_shape"]), block_m=plan.block_m)


def sweep_workload(K, w, device, configs, rep_ms) -> list[dict]:
    q, k, v = caches(w, device)
    ref = None
    rows = []
    for spec in configs:
        overrides = [s for s in spec.split(",") if s]
        try:
            config = H.planner_config(K, overrides)
            plan = make_planner(K, w, device, config)(validate=False)
            out = torch.empty_like(q)
            fn = lambda: plan.run(q, k, v, out=out, check=False)  # noqa: E731
            fn()
            H.sync(device)
        except Exception as exc:  # a variant the kernel cannot compile: record, go on
            rows.append(dict(config=spec or "default", error=repr(exc)[:200]))
            continue
        if ref is None:  # the first variant also warms the GPU (clocks, allocator, flush
            ref = out.clone()  # buffer): time it twice and keep the second, or it reads slow
            H.bench(fn, device, warmup_ms=25.0, rep_ms=rep_ms)
        t = H.bench(fn, device, warmup_ms=25.0, rep_ms=rep_ms)
        row = dict(config=spec or "default", us=t["median_us"],
                   max_diff=float((out.float() - ref.float()).abs().max()),
                   **{f"{k}_us": v for k, v in kernel_times(fn, device).items()},
                   **plan_shape(plan))
        H.log(f"  {row['config']:36s} {row['us']:8.1f} us  phase1 {row.get('phase1_us', 0):7.1f}"
              f"  merge {row.get('merge_us', 0):6.1f}  items {row['items']:6d}"
              f"  chunk {row['chunk_median']}/{row['chunk_max']}  diff {row['max_diff']:.1e}")
        rows.append(row)
    return rows


COLUMNS = [("config", "config"), ("µs", "us"), ("phase 1 µs", "phase1_us"),
           ("merge µs", "merge_us"), ("items", "items"), ("partials", "partials"),
           ("max partials/query", "max_partials"), ("chunk median", "chunk_median"),
           ("chunk max", "chunk_max"), ("row tiles", "row_tiles"), ("block_m", "block_m"),
           ("max diff vs default", "max_diff")]


def _cell(value):
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 0.01 and value else f"{value:.2f}"
    return value


def write_markdown(path: str, env: dict, results: dict) -> None:
    """One table per workload, fastest variant first."""
    md = [f"# Planner sweep\n\n{H.env_markdown(env)}\n"]
    for name, rows in results.items():
        ok = sorted((r for r in rows if "us" in r), key=lambda r: r["us"])
        md.append(f"## {name}\n\n" + H.markdown_table(
            [{k: _cell(v) for k, v in r.items()} for r in ok],
            COLUMNS + [("× default", "vs_default")]) + "\n")
    with open(path, "w") as f:
        f.write("\n".join(md))


def main(args) -> int:
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    K = H.import_deft()
    env = H.env_record(device)
    chosen = (WL.smoke_workloads()[:3] if args.cpu_smoke
              else WL.select(WL.server_workloads() + WL.full_workloads(quick=True),
                             args.workloads))
    results = {}
    for w in chosen:
        w = w.materialize(0)
        H.log(f"{w.name} ({w.heads.label}, {w.num_queries} queries, "
              f"{w.unique_tokens()} unique tokens)")
        rows = sweep_workload(K, w, device, args.configs, args.rep_ms)
        results[w.name] = rows
        ok = sorted((r for r in rows if "us" in r), key=lambda r: r["us"])
        base = next((r["us"] for r in rows if r["config"] == "default" and "us" in r), None)
        for r in ok:
            r["vs_default"] = r["us"] / base if base else None
        if ok and base:
            H.log(f"  best: {ok[0]['config']} {ok[0]['us']:.1f} us "
                  f"({ok[0]['us'] / base:.2f}x default)")
    H.write_json(os.path.join(args.out, "sweep.json"), dict(env=env, results=results))
    write_markdown(os.path.join(args.out, "sweep.md"), env, results)
    for spec in args.configs:
        ratios = [r["vs_default"] for rows in results.values() for r in rows
                  if r["config"] == (spec or "default") and r.get("vs_default")]
        if ratios:
            H.log(f"geomean time vs default  {spec or 'default':36s} "
                  f"{statistics.geometric_mean(ratios):.3f} over {len(ratios)} workloads")
    return 0


if __name__ == "__main__":
    a = parse_args()
    os.makedirs(a.out, exist_ok=True)
    sys.exit(main(a))
