"""Planning host time on the GPU host: one C call vs the step-by-step path, and where the
one-call path's time goes (session 10)."""
import cProfile, pstats, sys, time, statistics
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import numpy as np, torch
import workloads as WL
import deft_sglang.kernels as K
from deft_sglang.kernels import api
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
names = ("tree3-1600x16x16", "spec-star-t256", "tot-set128-batch6", "fanout-2048x1024-g32")
loads = {w.name: w for w in WL.full_workloads() if w.name in names}
one_call = api._plan_in_one_call
def planner(w, cfg):
    h = w.heads
    return lambda v=True: K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices,
        w.query_node, num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
        device=dev, num_slots=w.num_slots, validate=v, config=cfg)
def timeit(f, n=400, *a):
    for _ in range(30): f(*a)
    sync(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(*a); ts.append((time.perf_counter() - t) * 1e6)
    sync()
    return statistics.median(ts), np.percentile(ts, 10)
for name in names:
    w = loads[name].materialize(0)
    f = planner(w, K.PlannerConfig())
    for path in ("one-call", "steps"):
        api._plan_in_one_call = one_call if path == "one-call" else (lambda *a: None)
        for v in (True, False):
            p50, p10 = timeit(f, 400, v)
            print(f"{name} {path} validate={v}: p50 {p50:.1f} us  p10 {p10:.1f}", flush=True)
api._plan_in_one_call = one_call
if dev.type == "cuda":
    x = torch.empty(30000, dtype=torch.int32, pin_memory=True)
    y = x.to(dev, non_blocking=True)
    for label, fn in (("torch.empty pinned 30k", lambda: torch.empty(30000, dtype=torch.int32, pin_memory=True)),
                      ("pinned .to(cuda)", lambda: x.to(dev, non_blocking=True)),
                      ("split_with_sizes 10", lambda: y.split_with_sizes([3000] * 10)),
                      ("torch.empty cuda", lambda: torch.empty(30000, dtype=torch.int32, device=dev))):
        p50, p10 = timeit(fn, 1000)
        print(f"{label}: p50 {p50:.1f} us  p10 {p10:.1f}", flush=True)
w = loads["tree3-1600x16x16"].materialize(0)
f = planner(w, K.PlannerConfig())
prof = cProfile.Profile(); prof.enable()
for _ in range(500): f()
prof.disable(); sync()
pstats.Stats(prof).sort_stats("tottime").print_stats(25)
