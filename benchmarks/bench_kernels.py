"""DeFT kernel benchmark: every workload through DeFT, the peers and the read floor, one command.

    PYTHONUNBUFFERED=1 python benchmarks/bench_kernels.py --out DIR [--quick] [--workloads PAT ...]
    python benchmarks/bench_kernels.py --cpu-smoke --out /tmp/bsmoke    # CPU, TRITON_INTERPRET=1

Per workload: build the tree, random K/V caches in a scattered pool, plan DeFT (host time),
check DeFT against the float64 reference (sampled queries) and FlashInfer decode (all queries),
time DeFT, SGLang's Triton decode, FlashInfer decode and cascade, and the read floor.  A row is
printed as each workload finishes and DIR/results.json is rewritten every time; at the end
DIR/results.md and DIR/*.png.  See benchmarks/README.md for the columns.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
import traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--quick", action="store_true", help="fewer workloads, shorter timing")
    p.add_argument("--workloads", nargs="*", help="fnmatch patterns or substrings of names")
    p.add_argument("--list", action="store_true", help="list workload names and exit")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny workloads on CPU with TRITON_INTERPRET=1, DeFT + reference only")
    p.add_argument("--skip-sglang", action="store_true")
    p.add_argument("--skip-flashinfer", action="store_true", help="skip decode and cascade")
    p.add_argument("--skip-cascade", action="store_true")
    p.add_argument("--skip-floor", action="store_true")
    p.add_argument("--time-budget", type=float, default=420.0,
                   help="seconds after start past which no new workload starts (default 420)")
    p.add_argument("--jit-reserve", type=float, default=240.0,
                   help="don't start a FlashInfer JIT compile with less budget left (s)")
    p.add_argument("--warm-only", action="store_true",
                   help="only JIT-compile the peers for every head config, then exit")
    p.add_argument("--rep-ms", type=float, default=None,
                   help="timed milliseconds per method (harness.bench)")
    p.add_argument("--tol", type=float, default=2e-2, help="max abs error vs reference / FI")
    p.add_argument("--deft-config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="PlannerConfig overrides, e.g. --deft-config max_chunk_tokens=512")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-shapes", action="store_true",
                   help="also the end-to-end runs' decode batches (workloads.server_workloads)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import baselines as BL  # noqa: E402
import harness as H  # noqa: E402
import report  # noqa: E402
import workloads as WL  # noqa: E402

PEERS = ["sglang_triton", "flashinfer_decode", "flashinfer_cascade"]
PREPARE = {"sglang_triton": BL.prepare_sglang, "flashinfer_decode": BL.prepare_flashinfer_decode,
           "flashinfer_cascade": BL.prepare_flashinfer_cascade}


def make_planner(K, wl, device, config, **extra):
    """``planner(validate=True)`` -> a plan of ``wl``; ``extra``: more keyword arguments."""
    accepted = inspect.signature(K.plan_tree_attention).parameters
    kwargs = dict(num_qo_heads=wl.heads.num_qo_heads, num_kv_heads=wl.heads.num_kv_heads,
                  head_dim=wl.heads.head_dim, device=device, num_slots=wl.num_slots)
    if "kv_elem_bytes" in accepted:
        kwargs["kv_elem_bytes"] = wl.heads.elem_bytes
    if config is not None:
        kwargs["config"] = config
    arrays = (wl.node_parent, wl.node_kv_indptr, wl.node_kv_indices, wl.query_node)
    return lambda validate=True: K.plan_tree_attention(*arrays, validate=validate, **kwargs,
                                                       **extra)


def advance_host_us(K, wl, device, config, reps: int):
    """Host µs to advance a plan one decode step in place (``extend_tails``: what a server
    step whose batch only grew costs instead of planning afresh); None when the tree's queries
    are not private tails (then every step plans afresh)."""
    if "tail_slack" not in inspect.signature(K.plan_tree_attention).parameters:
        return None
    plan = make_planner(K, wl, device, config, tail_slack=reps + 4)(validate=False)
    if plan.tails is None:
        return None
    slots = torch.arange(wl.num_queries, device=device) % wl.num_slots
    return H.time_host(lambda: plan.extend_tails(slots), device, reps=reps, warmup=2,
                       sync_each=False)["host_us"]


class Runner:
    def __init__(self, args, device, K):
        self.args, self.device, self.K = args, device, K
        self.cuda = H.on_cuda(device)
        self.rep_ms = args.rep_ms or (40.0 if args.quick else 60.0)
        self.t_start = time.perf_counter()
        self.warmed: set = set()  # (method, head_dim, dtype) compiled
        # CPU smoke: only SGLang's Triton kernel can run (interpreted); FlashInfer needs CUDA
        self.enabled = [m for m in PEERS if self.cuda or m == "sglang_triton"]
        self.enabled = [
            m for m in self.enabled
            if not (m == "sglang_triton" and args.skip_sglang)
            and not (m.startswith("flashinfer") and args.skip_flashinfer)
            and not (m == "flashinfer_cascade" and args.skip_cascade)]
        self.failed: dict[tuple, str] = {}  # fail_key -> error: don't retry a failed JIT
        self.config = H.planner_config(K, args.deft_config)

    def bench(self, fn):
        t = H.bench(fn, self.device, warmup_ms=25.0, rep_ms=self.rep_ms, cpu_reps=1)
        if self.cuda:  # host cost of one call (launch overhead), GPU not awaited
            t["host_call_us"] = H.time_host(fn, self.device, reps=10, warmup=1,
                                            sync_each=False)["host_us"]
        return t

    @staticmethod
    def fail_key(m, heads):
        """FlashInfer compiles per (head_dim, dtype); SGLang's Triton kernels per head shape."""
        return (m, heads.head_dim, heads.dtype) if m.startswith("flashinfer") else (m, heads)

    def left_s(self) -> float:
        return self.args.time_budget - (time.perf_counter() - self.t_start)

    def warm_jit(self, heads_list) -> dict:
        """Compile every peer once per head config on a small tree, outside any timing."""
        info = {}
        for heads in heads_list:
            wl = WL.Workload("jit-warmup", "warmup", WL.fanout_tree(256, 4, 16),
                             heads=heads).materialize()
            q, k, v = self.tensors(wl)
            for m in self.enabled:
                t0 = time.perf_counter()
                try:
                    PREPARE[m](wl, q, k, v, BL.sm_scale_for(heads.head_dim)).run()
                    H.sync(self.device)
                    self.warmed.add((m, heads.head_dim, heads.dtype))
                    info[f"{m}@{heads.label}"] = round(time.perf_counter() - t0, 1)
                except Exception as e:  # noqa: BLE001
                    err = f"{type(e).__name__}: {e}"[:400]
                    self.failed[self.fail_key(m, heads)] = err
                    info[f"{m}@{heads.label}"] = err
                H.log(f"  warm-up {m:18s} {heads.label:11s} {info[f'{m}@{heads.label}']}"
                      + ("" if isinstance(info[f"{m}@{heads.label}"], str) else " s"))
                self.check_cuda_alive()
        return info

    def check_cuda_alive(self):
        if self.cuda:
            H.sync(self.device)  # raises on a sticky CUDA error

    def tensors(self, wl):
        g = torch.Generator(device=self.device).manual_seed(self.args.seed)
        h = wl.heads
        shape_kv = (wl.num_slots, h.num_kv_heads, h.head_dim)
        mk = lambda *s: torch.randn(*s, generator=g, device=self.device,  # noqa: E731
                                    dtype=torch.float32).to(h.dtype)
        return mk(wl.num_queries, h.num_qo_heads, h.head_dim), mk(*shape_kv), mk(*shape_kv)

    def run_workload(self, wl) -> dict:
        args, dev, K = self.args, self.device, self.K
        h = wl.heads
        wl.materialize(args.seed)
        rec = dict(name=wl.name, group=wl.group, **wl.describe(), times={}, errors={},
                   check={}, info={}, shape=dict(
                       num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads,
                       head_dim=h.head_dim, dtype=str(h.dtype), elem_bytes=h.elem_bytes))
        q, k, v = self.tensors(wl)
        sm_scale = BL.sm_scale_for(h.head_dim)
        # --- DeFT: plan (host time), stats, run
        planner = make_planner(K, wl, dev, self.config)
        reps = 3 if args.cpu_smoke else (5 if args.quick else 10)
        # Back to back, as a server's host plans while the GPU runs the previous step; the
        # synced time (each plan's upload waited for) separately.
        plan_reps = reps if args.cpu_smoke else max(reps, 50)
        rec["plan"] = H.time_host(planner, dev, reps=plan_reps, sync_each=False)
        rec["plan"]["sync_us"] = H.time_host(planner, dev, reps=reps)["sync_us"]
        rec["plan"]["novalidate_host_us"] = H.time_host(
            lambda: planner(validate=False), dev, reps=plan_reps, sync_each=False)["host_us"]
        rec["plan"]["advance_host_us"] = advance_host_us(K, wl, dev, self.config, reps)
        plan = planner()
        rec["stats"] = dict(plan.stats())
        out = torch.empty_like(q)
        plan.run(q, k, v, sm_scale, out=out)  # checked call (shapes, dtypes), compiles
        hot = {"check": False} if "check" in inspect.signature(plan.run).parameters else {}
        deft = lambda: plan.run(q, k, v, sm_scale, out=out, **hot)  # noqa: E731
        deft()
        H.sync(dev)
        sample, ref = BL.reference_sample(wl, q, k, v, sm_scale,
                                          max_queries=10**9 if args.cpu_smoke else 48)
        sample_t = torch.from_numpy(sample).to(dev)
        rec["check"]["deft_vs_reference"] = BL.max_abs_err(out[sample_t], ref)
        rec["times"]["deft"] = self.bench(deft)
        # --- peers
        for m in self.enabled:
            if self.fail_key(m, h) in self.failed:
                rec["errors"][m] = "skipped, failed before: " + self.failed[self.fail_key(m, h)]
                continue
            jit_key = (m, h.head_dim, h.dtype)
            if m.startswith("flashinfer") and self.cuda and jit_key not in self.warmed \
                    and self.left_s() < args.jit_reserve:
                rec["errors"][m] = (f"not run: its JIT compile for head_dim {h.head_dim} was not "
                                    f"done and only {self.left_s():.0f} s of budget were left "
                                    "(run --warm-only first)")
                continue
            try:
                prep = PREPARE[m](wl, q, k, v, sm_scale)
                H.sync(dev)
                peer_out = prep.output()
                rec["check"][f"{m}_vs_reference"] = BL.max_abs_err(peer_out[sample_t], ref)
                if m == "flashinfer_decode":
                    rec["check"]["deft_vs_flashinfer_decode"] = BL.max_abs_err(out, peer_out)
                self.warmed.add(jit_key)
                rec["times"][m] = self.bench(prep.run)
                rec["info"][m] = prep.info
                del prep, peer_out
            except Exception as e:  # noqa: BLE001
                rec["errors"][m] = f"{type(e).__name__}: {e}"[:400]
                if jit_key not in self.warmed:  # first use failed: likely the JIT, don't retry
                    self.failed[self.fail_key(m, h)] = rec["errors"][m]
                if "CUDA" in str(e) or "illegal" in str(e):
                    raise
        # --- PyTorch reference (small cases only: a per-query float64 loop)
        if args.cpu_smoke or (wl.num_queries <= 16 and int(wl.path_tokens().sum()) <= 60000):
            try:
                prep = BL.prepare_reference_full(wl, q, k, v, sm_scale)
                rec["check"]["reference_full_vs_sample"] = BL.max_abs_err(
                    prep.output()[sample_t], ref)
                rec["times"]["reference"] = {"median_us": H.time_host(
                    prep.run, dev, reps=1, warmup=0)["sync_us"]}
            except Exception as e:  # noqa: BLE001
                rec["errors"]["reference"] = f"{type(e).__name__}: {e}"[:400]
        # --- read floor over the same unique slots
        if not args.skip_floor:
            try:
                import read_floor as RF
                floor = RF.ReadFloor(unique_slots(wl), k, v)
                big = floor.bytes >= 32e6  # all configs only where bandwidth is the story
                configs = RF.SMOKE_CONFIGS if args.cpu_smoke else (
                    RF.CONFIGS if big and not args.quick else RF.CONFIGS[:3])
                rec["times"]["read_floor"] = floor.tune(self.bench, configs)
            except Exception as e:  # noqa: BLE001
                rec["errors"]["read_floor"] = f"{type(e).__name__}: {e}"[:400]
        self.check_cuda_alive()
        return rec  # q/k/v/plan are freed here; main() empties the allocator cache


def unique_slots(wl) -> np.ndarray:
    need = np.zeros(len(wl.node_parent), dtype=bool)
    for n in set(int(x) for x in wl.query_node):
        while n >= 0 and not need[n]:
            need[n] = True
            n = int(wl.node_parent[n])
    ip = wl.node_kv_indptr
    parts = [wl.node_kv_indices[ip[n]:ip[n + 1]] for n in np.nonzero(need)[0]]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def main(args) -> int:
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.list:
        for w in WL.smoke_workloads() if args.cpu_smoke else WL.full_workloads(args.quick):
            print(f"{w.name:45s} {w.group:14s} {w.describe()}")
        return 0
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu_smoke:
        H.log("no CUDA device: use --cpu-smoke for a CPU check of the harness")
        return 2
    K = H.import_deft()
    H.log(f"DeFT kernels from {os.path.dirname(K.__file__)}")
    env = H.env_record(device)
    H.log("environment: " + ", ".join(f"{k}={env.get(k)}" for k in
                                      ("gpu", "torch", "triton", "flashinfer", "sglang")))
    pool = WL.smoke_workloads() if args.cpu_smoke else (
        (WL.server_workloads() if args.server_shapes else []) + WL.full_workloads(args.quick))
    wls = WL.select(pool, args.workloads)
    if not wls:
        H.log("no workload matches")
        return 2
    runner = Runner(args, device, K)
    runner.t_start = t_start
    copy_bw = H.copy_bandwidth(device, nbytes=(64 << 20) if args.cpu_smoke else (2 << 30))
    H.log(f"device-to-device copy: {copy_bw['GBps']:.0f} GB/s (read+write) on "
          f"{copy_bw['tensor_bytes'] / 2**20:.0f} MiB")
    results = dict(env=env, copy_bandwidth=copy_bw, args=vars(args), workloads=[],
                   skipped=[], failed=[])
    if runner.enabled:
        # FlashInfer compiles one module per (head_dim, dtype): warm the first workload's now,
        # the rest when first needed (guarded by --jit-reserve); --warm-only warms them all.
        todo = list({(w.heads.head_dim, w.heads.dtype): w.heads for w in wls}.values())
        todo = todo if args.warm_only else todo[:1]
        H.log(f"warming peers (JIT) for {[h.label for h in todo]} ...")
        results["jit_warmup_s"] = runner.warm_jit(todo)
        if args.warm_only:
            H.write_json(os.path.join(args.out, "warmup.json"), results)
            H.log(f"warm-up done in {time.perf_counter() - t_start:.0f} s")
            return 0
    results["peers"] = runner.enabled
    json_path = os.path.join(args.out, "results.json")
    H.log(report.header())
    for i, wl in enumerate(wls):
        elapsed = time.perf_counter() - t_start
        if elapsed > args.time_budget:
            results["skipped"] = [w.name for w in wls[i:]]
            H.log(f"time budget ({args.time_budget:.0f} s) spent: skipping {len(wls) - i} "
                  f"workloads ({', '.join(results['skipped'][:6])} ...)")
            break
        try:
            rec = runner.run_workload(wl)
            if runner.cuda:
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}"
            results["failed"].append(dict(name=wl.name, error=msg[:1000],
                                          traceback=traceback.format_exc()[-3000:]))
            H.log(f"{wl.name}: FAILED {msg[:300]}")
            H.write_json(json_path, results)
            if "CUDA" in msg or "illegal memory" in msg:
                H.log("CUDA error: the context is unusable, stopping here")
                break
            continue
        report.add_metrics(rec, copy_bw["GBps"], args.tol)
        results["workloads"].append(rec)
        H.log(report.row(rec))
        H.write_json(json_path, results)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    H.write_json(json_path, results)
    files = report.write_all(results, args.out)
    H.log(f"done in {results['wall_s']} s: " + ", ".join(files))
    bad = [w["name"] for w in results["workloads"] if not w["metrics"]["correct"]]
    if bad:
        H.log(f"CORRECTNESS FAILURES: {bad}")
    return 1 if bad or results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
