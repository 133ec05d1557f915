"""Registers, spills and shared memory of phase 1 with and without the fused merge."""
import sys
sys.path.insert(0, "benchmarks")
import torch
import workloads as WL
import deft_sglang.kernels as K
from deft_sglang.kernels.partial_attention import launch_partial_attention
from deft_sglang.kernels.planner import SMALL_M
for name in ("tot-keyword-tree82-it198", "long-32000x16-g256"):
    w = [x for x in WL.full_workloads(quick=False) if x.name == name][0].materialize(0)
    h = w.heads
    q = torch.randn(w.num_queries, h.num_qo_heads, h.head_dim, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, dtype=torch.bfloat16, device="cuda")
    for fused in (False, True):
        cfg = K.PlannerConfig(fused_merge=fused)
        plan = K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices, w.query_node,
            num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
            device="cuda", config=cfg)
        out = torch.empty_like(q)
        po, pl = plan._partials(q.dtype)
        fm = (plan._merge_counters(), plan.merge_indptr, plan.merge_slots, out) if fused else None
        kern = launch_partial_attention(q, k, k, plan.kv_indices, plan.query_order, plan.items, po, pl,
            0.1, SMALL_M, cfg.small_block_n, plan.block_m, plan.block_n, cfg.num_warps, cfg.num_stages,
            interleave_heads=cfg.interleave_heads, fused_merge=fm)
        torch.cuda.synchronize()
        print(name, "fused" if fused else "unfused", "regs", kern.n_regs, "spills", kern.n_spills,
              "shared", kern.metadata.shared, "items", plan.items.shape[1])
