"""Host time of planning on the GPU host: wall medians per workload and config, and a cProfile
breakdown of tree3 (session 9)."""
import cProfile, pstats, sys, time, statistics
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import numpy as np, torch
import workloads as WL
import deft_sglang.kernels as K
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
names = ("tree3-1600x16x16", "spec-star-t256", "tot-set128-batch6", "fanout-2048x1024-g32")
loads = {w.name: w for w in WL.full_workloads() if w.name in names}
def planner(w, cfg):
    h = w.heads
    return lambda v=True: K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices,
        w.query_node, num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
        device=dev, num_slots=w.num_slots, validate=v, config=cfg)
for name in names:
    w = loads[name].materialize(0)
    for label, cfg in (("default", K.PlannerConfig()), ("no-tails", K.PlannerConfig(merge_tail_tokens=0, pack_tail_tokens=0))):
        f = planner(w, cfg)
        for _ in range(30): f()
        sync()
        for v in (True, False):
            ts = []
            for _ in range(300):
                t = time.perf_counter(); f(v); ts.append((time.perf_counter() - t) * 1e6)
            sync()
            print(f"{name} {label} validate={v}: p50 {statistics.median(ts):.1f} us  p10 {np.percentile(ts,10):.1f}", flush=True)
w = loads["tree3-1600x16x16"].materialize(0)
f = planner(w, K.PlannerConfig())
prof = cProfile.Profile(); prof.enable()
for _ in range(300): f()
prof.disable(); sync()
pstats.Stats(prof).sort_stats("tottime").print_stats(28)
