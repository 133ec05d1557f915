"""Where a server's decode step goes: torch-profiler traces of stock and DeFT servers, summarised.

    python benchmarks/profile_server.py --model-path M --out DIR \\
        [--launches deft,stock] [--prefix 8192] [--width 64] [--steps 24]

For each launch (the server flags of ``examples/e2e_compare.py``) a server is started with dummy
weights, warmed up (a small fork, so JIT compiles happen outside the trace), then a fork batch is
decoded: one cached ``--prefix``-token prompt, ``--width`` branches, 256 new tokens. Once decode
is under way the server's own profiler (``POST /start_profile``, CPU and GPU activity) records
``--steps`` forward steps. The trace is summarised per decode step:

* ``wall_ms_per_step``: time between decode graph launches (``cudaGraphLaunch``) on the host;
* ``gpu_busy_ms_per_step``: the union of kernel intervals per step (the rest is GPU idle: the
  host, not the GPU, sets the pace when it is large);
* kernels by category (attention of each backend, GEMMs, other) and the top kernels by time;
* host runtime calls by total time, with synchronising calls marked (a sync on the scheduler's
  hot path defeats SGLang's overlap of host work with the GPU).

Writes DIR/profile.json, DIR/profile.md and the raw traces under DIR/<launch>/. Needs the GPU
host; ``summarize_trace`` is plain Python (tested on CPU with synthetic traces).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import sys
import threading
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import harness as H  # noqa: E402

# Kernel name fragments per category, first match wins (lower case; FlashInfer's norm kernels
# are norms, not attention).
KERNEL_CATEGORIES = (
    ("deft_attention", ("_partial_attention", "_merge_partials", "_merge_sequential", "_merge_two",
                        "_draft_attention")),
    ("triton_attention", ("_fwd_kernel_stage", "_fwd_grouped_kernel", "decode_att")),
    ("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul")),
    ("norm_act_rope", ("rmsnorm", "rms_norm", "silu", "act_and_mul", "rotary", "rope")),
    ("flashinfer_attention", ("batchdecode", "batchprefill", "flashinfer", "mergestate")),
)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cudaMemcpy ", "cudaMemcpy\0")


def category(kernel_name: str) -> str:
    lowered = kernel_name.lower()
    for name, fragments in KERNEL_CATEGORIES:
        if any(f in lowered for f in fragments):
            return name
    return "other"


def _union_us(intervals: list) -> float:
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def summarize_trace(events: list, top: int = 12) -> dict:
    """Per-decode-step summary of a chrome trace's events (see the module docstring).

    Parameters
    ----------
    events : the trace's ``traceEvents`` (dicts with ``cat``, ``name``, ``ts``, ``dur`` in µs).
    top : how many kernels and runtime calls to list.
    """
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    runtime = [e for e in events if e.get("cat") == "cuda_runtime" and "dur" in e]
    launches = sorted(e["ts"] for e in runtime if e["name"] == "cudaGraphLaunch")
    steps = max(len(launches) - 1, 0)
    if steps:  # the window between the first and last graph launch: whole steps only
        begin, end = launches[0], launches[-1]
        kernels = [e for e in kernels if begin <= e["ts"] < end]
        runtime = [e for e in runtime if begin <= e["ts"] < end]
    else:
        begin = min((e["ts"] for e in kernels), default=0.0)
        end = max((e["ts"] + e["dur"] for e in kernels), default=0.0)
    per_step = max(steps, 1)
    by_category, by_kernel = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for e in kernels:
        by_category[category(e["name"])] += e["dur"]
        by_kernel[e["name"]][0] += e["dur"]
        by_kernel[e["name"]][1] += 1
    calls = defaultdict(lambda: [0.0, 0])
    for e in runtime:
        calls[e["name"]][0] += e["dur"]
        calls[e["name"]][1] += 1
    busy = _union_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    return {
        "steps": steps,
        "wall_ms_per_step": round((end - begin) / per_step / 1e3, 4),
        "gpu_busy_ms_per_step": round(busy / per_step / 1e3, 4),
        "gpu_idle_pct": round(100.0 * (1.0 - busy / (end - begin)), 1) if end > begin else None,
        "kernel_ms_per_step": {k: round(v / per_step / 1e3, 4)
                               for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:120], "us_per_step": round(t / per_step, 2),
                         "calls_per_step": round(n / per_step, 2), "category": category(name)}
                        for name, (t, n) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])
                        [:top]],
        "runtime_calls": [{"name": name, "us_per_step": round(t / per_step, 2),
                           "calls_per_step": round(n / per_step, 2),
                           "syncs": name.startswith(SYNC_CALLS)}
                          for name, (t, n) in sorted(calls.items(), key=lambda kv: -kv[1][0])
                          [:top]],
    }


def load_trace(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def parse_args(argv=None) -> argparse.Namespace:
    from e2e_compare import DEFAULT_EXTRA, LAUNCHES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--launches", default="deft,stock")
    p.add_argument("--prefix", type=int, default=8192)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=24, help="forward steps the profiler records")
    p.add_argument("--delay", type=float, default=2.0,
                   help="seconds after sending the batch before the profiler starts")
    p.add_argument("--extra-server-args", default=DEFAULT_EXTRA)
    p.add_argument("--launch-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.launches = [x.strip() for x in args.launches.split(",") if x.strip()]
    unknown = set(args.launches) - (set(LAUNCHES) - {"deft_engine"})
    if unknown:
        p.error(f"unknown launches {sorted(unknown)} (servers only)")
    return args


def profile_launch(name: str, args, vocab: int) -> dict:
    """Start ``name``'s server, trace ``args.steps`` decode steps of the fork batch, summarise."""
    import random

    import requests
    from e2e_compare import GREEDY, random_ids, with_client

    trace_dir = os.path.join(args.out, name)
    os.makedirs(trace_dir, exist_ok=True)
    client, record, cleanup = with_client(name, args)
    try:
        rng = random.Random(args.seed)
        warm = random_ids(rng, 256, vocab)  # compiles every kernel the timed batch needs
        client.generate(input_ids=[warm + [3 + i] for i in range(args.width)],
                        sampling_params={**GREEDY, "max_new_tokens": 48})
        client.flush_cache()
        prefix = random_ids(rng, args.prefix, vocab)
        client.generate(input_ids=[prefix], sampling_params={**GREEDY, "max_new_tokens": 1})
        result = {}

        def decode():
            start = time.perf_counter()
            out = client.generate(input_ids=[prefix + [3 + i] for i in range(args.width)],
                                  sampling_params={**GREEDY, "max_new_tokens": args.new_tokens})
            result["wall_s"] = time.perf_counter() - start
            result["tokens"] = sum(int(o["meta_info"]["completion_tokens"]) for o in out)

        worker = threading.Thread(target=decode)
        worker.start()
        time.sleep(args.delay)
        requests.post(record["url"] + "/start_profile", timeout=60, json={
            "output_dir": trace_dir, "num_steps": args.steps, "activities": ["CPU", "GPU"],
            "with_stack": False, "record_shapes": False, "profile_prefix": name})
        worker.join()
        traces = _wait_for_traces(trace_dir, timeout=120)
    finally:
        cleanup()
    summary = summarize_trace(load_trace(traces[0])) if traces else {"error": "no trace written"}
    summary.update(trace=traces[0] if traces else None, command=record.get("command"),
                   decode_tok_s=round(result.get("tokens", 0) / result["wall_s"], 1)
                   if result.get("wall_s") else None,
                   host_time_line=record.get("host_time_line"))
    return summary


def _wait_for_traces(trace_dir: str, timeout: float) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(glob.glob(os.path.join(trace_dir, "*.trace.json*")))
        if found:
            time.sleep(2)  # let the exporter finish the file
            return found
        time.sleep(1)
    return []


def markdown(report: dict) -> str:
    lines = [f"# Server decode-step profile: {report['workload']}", "",
             H.env_markdown(report["env"]), ""]
    rows = [{"launch": name, **{k: s.get(k) for k in ("steps", "wall_ms_per_step",
                                                         "gpu_busy_ms_per_step", "gpu_idle_pct",
                                                         "decode_tok_s")},
             **{f"{c} ms": s.get("kernel_ms_per_step", {}).get(c)
                for c in ("deft_attention", "triton_attention", "flashinfer_attention", "gemm",
                          "other")}}
            for name, s in report["launches"].items()]
    if rows:
        lines += [H.markdown_table(rows, [(k, k) for k in rows[0]]), ""]
    for name, s in report["launches"].items():
        lines += [f"## {name}", "", "| kernel | µs/step | calls/step | category |",
                  "|---|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['us_per_step']} | {k['calls_per_step']} "
                  f"| {k['category']} |" for k in s.get("top_kernels", [])]
        lines += ["", "| runtime call | µs/step | calls/step | syncs |", "|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['us_per_step']} | {c['calls_per_step']} | {c['syncs']} |"
                  for c in s.get("runtime_calls", [])]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from e2e_compare import environment, vocab_size
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    env = {**H.env_record("cpu"), "gpu": environment().get("gpu")}  # no CUDA context here
    report = {"env": env, "workload": f"fork {args.prefix} x {args.width} x "
              f"{args.new_tokens} new tokens, {args.steps} profiled steps", "launches": {}}
    for name in args.launches:
        H.log(f"== {name}")
        try:
            report["launches"][name] = profile_launch(name, args, vocab_size(args.model_path))
        except Exception as exc:  # report and go on with the next launch
            report["launches"][name] = {"error": repr(exc)}
        H.log(json.dumps({k: v for k, v in report["launches"][name].items()
                          if k not in ("top_kernels", "runtime_calls")}))
        H.write_json(os.path.join(args.out, "profile.json"), report)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
