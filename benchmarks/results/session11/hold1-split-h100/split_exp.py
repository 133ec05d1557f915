"""Session 11 experiment: phase 1 split by item class (large row tiles / 16-row items + packs),
the two launches run one after the other or side by side on two streams, each with its own
tile config.  Times every variant with the harness (L2 flushed, head start), checks outputs."""
import sys, json, itertools
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import torch
import harness as H
import workloads as WL
import deft_sglang.kernels as K
from deft_sglang.kernels.partial_attention import launch_partial_attention
from deft_sglang.kernels.merge import launch_merge
from deft_sglang.kernels.config import SMALL_M

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAMES = sys.argv[1].split(",")
OUT = sys.argv[2]
loads = {w.name: w for w in WL.full_workloads() + WL.server_workloads() + WL.smoke_workloads()}
side = torch.cuda.Stream() if dev.type == "cuda" else None
if dev.type == "cpu":  # interpreter smoke of the script itself
    loads["cpu-fan"] = WL.Workload("cpu-fan", "x", WL.fanout_tree(64, 12, 20), heads=WL.Heads(8, 2, 32, torch.float32))


def tensors(w):
    h = w.heads
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(w.num_queries, h.num_qo_heads, h.head_dim, device=dev, dtype=h.dtype, generator=g)
    k = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, device=dev, dtype=h.dtype, generator=g)
    v = torch.randn(w.num_slots, h.num_kv_heads, h.head_dim, device=dev, dtype=h.dtype, generator=g)
    return q, k, v


def plan_of(w, **cfg):
    h = w.heads
    return K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices, w.query_node,
        num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
        device=dev, num_slots=w.num_slots, config=K.PlannerConfig(**cfg))


def split_runner(plan, q, k, v, big, small, mode):
    """big/small: dict(block_n, warps, stages); mode: seq, conc (big on main, small on side),
    conc_rev (small on main first, big on side), big_only, small_only."""
    split = plan.num_large_items
    po, pl = plan._partials(q.dtype)
    out = torch.empty_like(q)
    scale = 1.0 / plan.head_dim ** 0.5
    packs = plan.tail_packs
    tp = (packs[0], *plan.short_tails, *packs[1:3]) if packs is not None else None
    cfg = plan.config

    def big_launch():
        launch_partial_attention(q, k, v, plan.kv_indices, plan.query_order, plan.items[:, :split],
            po, pl, scale, SMALL_M, small["block_n"], plan.block_m, big["block_n"], big["warps"],
            big["stages"], interleave_heads=cfg.interleave_heads)

    def small_launch():
        launch_partial_attention(q, k, v, plan.kv_indices, plan.query_order, plan.items[:, split:],
            po, pl, scale, SMALL_M, small["block_n"], SMALL_M, small["block_n"], small["warps"],
            small["stages"], interleave_heads=cfg.interleave_heads, tail_packs=tp)

    def merge():
        tail = None if plan.short_tails is None or packs is not None else \
            (q, k, v, *plan.short_tails, scale * 1.4426950408889634)
        launch_merge(po, pl, plan.merge_indptr, plan.merge_slots, out, *plan.merge_shape,
                     stages=cfg.merge_stages_for(q.shape[0] * q.shape[1]), num_warps=cfg.merge_warps,
                     tail=tail, pack_slots=None if packs is None else packs[3])

    def run():
        main = torch.cuda.current_stream() if side is not None else None
        if mode == "seq":
            big_launch(); small_launch()
        elif mode in ("conc", "conc_rev") and side is not None:
            first, second = (big_launch, small_launch) if mode == "conc" else (small_launch, big_launch)
            side.wait_stream(main)
            first()
            with torch.cuda.stream(side):
                second()
            main.wait_stream(side)
        elif mode in ("conc", "conc_rev"):
            big_launch(); small_launch()
        elif mode == "big_only":
            big_launch()
        elif mode == "small_only":
            small_launch()
        if mode not in ("big_only", "small_only"):
            merge()
        return out
    return run


results = []
for name in NAMES:
    w = loads[name].materialize(0)
    q, k, v = tensors(w)
    base = plan_of(w)
    ref = base.run(q, k, v).clone()
    t = H.bench(lambda: base.run(q, k, v), dev, rep_ms=60)
    results.append(dict(workload=name, variant="default", us=t["median_us"]))
    print(f"{name:32s} default                      {t['median_us']:8.1f}", flush=True)
    variants = []
    S = dict(block_n=64, warps=4, stages=3)
    for plan_cfg in ({}, dict(block_m=128, reread_group_rows=128)):
        for big in (dict(block_n=64, warps=4, stages=3), dict(block_n=64, warps=8, stages=3)):
            if plan_cfg and big["warps"] == 4:
                continue
            if not plan_cfg and big["warps"] == 8:
                continue
            for mode in ("seq", "conc", "conc_rev", "big_only", "small_only"):
                variants.append((plan_cfg, big, S, mode))
    for small in (dict(block_n=32, warps=4, stages=3), dict(block_n=64, warps=4, stages=4),
                  dict(block_n=128, warps=4, stages=2), dict(block_n=64, warps=2, stages=3),
                  dict(block_n=32, warps=2, stages=4), dict(block_n=64, warps=8, stages=3)):
        variants.append(({}, dict(block_n=64, warps=4, stages=3), small, "conc"))
        variants.append(({}, dict(block_n=64, warps=4, stages=3), small, "small_only"))
    for plan_cfg, big, small, mode in variants:
        plan = plan_of(w, split_launches=True, **plan_cfg)
        label = f"{mode} {plan_cfg or ''} big={big['block_n']}/{big['warps']}w/{big['stages']}s small={small['block_n']}/{small['warps']}w/{small['stages']}s"
        try:
            fn = split_runner(plan, q, k, v, big, small, mode)
            got = fn()
            H.sync(dev)
            err = float((got.float() - ref.float()).abs().max()) if mode not in ("big_only", "small_only") else float("nan")
            t = H.bench(fn, dev, rep_ms=60)
        except Exception as e:
            print(f"{name:32s} {label}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
            continue
        results.append(dict(workload=name, variant=label, us=t["median_us"], err=err,
                            large_items=plan.num_large_items, items=plan.items.shape[1]))
        print(f"{name:32s} {label:80s} {t['median_us']:8.1f}  err {err:.1e}", flush=True)
json.dump(results, open(OUT, "w"), indent=1)
