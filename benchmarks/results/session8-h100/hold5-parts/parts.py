"""Where the fan-out and spec-star time goes: DeFT (eager, default config) on the whole tree,
on its shared prefix alone (private nodes emptied), and on its private tails alone (each an
unshared request), plus phase 1 alone (no merge) for each."""
import json, os, sys
DEV = os.environ.get("DEV", "cuda")
DIV = int(os.environ.get("DIV", "1"))  # shrink the trees for a CPU check
sys.path.insert(0, "benchmarks")
import torch
import harness as H
import workloads as WL
from deft_sglang import kernels as K
from deft_sglang.kernels.partial_attention import launch_partial_attention
from deft_sglang.kernels.config import SMALL_M

def case(name, tree):
    w = WL.Workload(name, "parts", tree).materialize(0)
    h = w.heads
    plan = K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices,
                                 w.query_node, num_qo_heads=h.num_qo_heads,
                                 num_kv_heads=h.num_kv_heads, head_dim=h.head_dim, device=DEV)
    g = torch.Generator(device="cpu").manual_seed(0)
    k = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, generator=g).to(DEV, h.dtype)
    v = torch.randn_like(k)
    q = torch.randn(w.num_queries, h.num_qo_heads, h.head_dim, generator=g).to(DEV, h.dtype)
    out = torch.empty_like(q)
    full = H.bench(lambda: plan.run(q, k, v, out=out, check=False), DEV)
    po, pl = plan._partials(q.dtype)
    cfg = plan.config
    phase1 = H.bench(lambda: launch_partial_attention(
        q, k, v, plan.kv_indices, plan.query_order, plan.items, po, pl, 0.088, SMALL_M,
        cfg.small_block_n, plan.block_m, plan.block_n, cfg.num_warps, cfg.num_stages,
        interleave_heads=cfg.interleave_heads), DEV)
    st = plan.stats()
    row = dict(name=name, full_us=full["median_us"], phase1_us=phase1["median_us"],
               items=st["num_work_items"], programs=st["num_work_items"] * h.num_kv_heads,
               unique_kv_tokens=st["unique_kv_tokens"], partials=st["num_partials"])
    print(json.dumps(row), flush=True)
    return row

rows = []
for prompt, b, gen, tag in ((2048 // DIV, 1024 // DIV, 32, "fanout"),
                            (1016 // DIV, 256 // DIV, 1, "spec-star-t256"),
                            (4000 // DIV, 50 // DIV or 1, 400 // DIV, "fewshot-b50")):
    rows.append(case(f"{tag} whole", WL.fanout_tree(prompt, b, gen)))
    rows.append(case(f"{tag} prefix only", WL.fanout_tree(prompt, b, 0)))
    rows.append(case(f"{tag} tails only", WL.unshared_tree([gen] * b)))
json.dump(dict(env=H.env_record(DEV), rows=rows),
          open(os.path.join(sys.argv[1], "parts.json"), "w"), indent=1)
