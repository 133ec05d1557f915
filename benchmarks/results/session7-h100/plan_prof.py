"""Host time of planning tree3 on the GPU host: wall medians and a cProfile breakdown."""
import cProfile, pstats, sys, time, statistics
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import numpy as np, torch
import workloads as WL
import deft_sglang.kernels as K
from deft_sglang.kernels import planner, tree
w = [x for x in WL.full_workloads(quick=True) if x.name.startswith("tree3")][0].materialize(0)
h = w.heads
dev = torch.device("cuda")
for native in (True, False):
    cfg = K.PlannerConfig(native=native)
    f = lambda v=True: K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices, w.query_node,
        num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim, device=dev,
        num_slots=w.num_slots, validate=v, config=cfg)
    for _ in range(30): f()
    torch.cuda.synchronize()
    for v in (True, False):
        ts = []
        for _ in range(300):
            t = time.perf_counter(); f(v); ts.append((time.perf_counter() - t) * 1e6)
        torch.cuda.synchronize()
        print(f"native={native} validate={v}: p50 {statistics.median(ts):.1f} us  p10 {np.percentile(ts,10):.1f}")
arr = np.zeros(20000, dtype=np.int32)
ts = []
for _ in range(300):
    t = time.perf_counter(); tree.host_to_device(arr, dev); ts.append((time.perf_counter() - t) * 1e6)
print("host_to_device 20000 int32 p50", statistics.median(ts))
arr = np.zeros(2000, dtype=np.int32)
ts = []
for _ in range(300):
    t = time.perf_counter(); tree.host_to_device(arr, dev); ts.append((time.perf_counter() - t) * 1e6)
print("host_to_device 2000 int32 p50", statistics.median(ts))
cfg = K.PlannerConfig()
p = cProfile.Profile(); p.enable()
for _ in range(300):
    K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices, w.query_node,
        num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim, device=dev,
        num_slots=w.num_slots, validate=False, config=cfg)
p.disable(); pstats.Stats(p).sort_stats("tottime").print_stats(22)
