"""Host time the DeFT backend spends per decode step, on SGLang's real scheduler objects.

    python benchmarks/bench_host.py --out DIR [--batch 256] [--steps 64] [--profile]

Drives SGLang's real ``RadixCache``, pools, ``Req``/``ScheduleBatch`` and ``ForwardBatch``
through the test suite's scheduler stand-in (``tests/deft_sglang/sim.py``: no model runs, new KV
slots get random values) and times what the backend does before each decode step:

* ``eager``: ``init_forward_metadata`` (read the tree and plan, or advance the last plan);
* ``graph``: ``deft_prepare_graph_replay`` + ``init_forward_metadata_out_graph``, what SGLang
  calls before replaying a decode CUDA graph (plan, then load or advance the graph workspace).

Workloads: ``fork`` (one cached prompt, ``--batch`` branches) and ``unshared`` (``--batch``
independent prompts). Every step is reported as fresh (tree read and planned), replanned (the
same batch with its tail slack used up: the kept forest planned again, no tree read) or
advanced (the last plan moved one token on). Runs on CPU (the Triton interpreter is never entered: no
attention runs) and on the GPU host, where the numbers that matter are measured.
Writes DIR/host.json and DIR/host.md.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness as H  # noqa: E402

if not torch.cuda.is_available():  # SGLang's cache bookkeeping launches Triton kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--tail-slack", type=int, default=None, help="DeftConfig.tail_slack")
    p.add_argument("--graph-tail-advance", choices=("host", "graph"), default="graph",
                   help="DeftConfig.graph_tail_advance (graph: the replay advances reused plans)")
    p.add_argument("--profile", action="store_true", help="cProfile the fork's advanced steps")
    return p.parse_args(argv)


def build(kind: str, args):
    """(SimScheduler with ``args.batch`` running requests, its model-runner stand-in, a DeFT
    backend over it)."""
    from deft_sglang.config import DeftConfig
    from tests.deft_sglang.sim import SimScheduler
    from tests.deft_sglang.test_backend import backends

    context = args.prompt + args.steps + 64
    sim = SimScheduler(max_reqs=args.batch + 8, num_tokens=args.batch * context + 4096,
                       max_context=context, num_layers=1)
    rng = np.random.default_rng(0)
    if kind == "fork":
        prompt = rng.integers(3, 8000, args.prompt).tolist()
        parent = sim.submit([prompt], max_new_tokens=2)
        sim.decode()
        sim.sample()
        sim.finish(parent)
        sim.submit([prompt + [1000 + i] for i in range(args.batch)],
                   max_new_tokens=args.steps + 8)
    else:
        sim.submit([rng.integers(3, 8000, args.prompt).tolist() for _ in range(args.batch)],
                   max_new_tokens=args.steps + 8)
    overrides = {} if args.tail_slack is None else dict(tail_slack=args.tail_slack)
    overrides["graph_tail_advance"] = args.graph_tail_advance
    runner, deft, _, _ = backends(sim, config=DeftConfig(**overrides))
    return sim, runner, deft


def timed_steps(sim, runner, deft, graph: bool, steps: int, profiler=None) -> list[dict]:
    from tests.deft_sglang.test_backend import forward_batch
    from tests.deft_sglang.test_graphs import replay_view

    from deft_sglang import backend as backend_module

    records, reads = [], []
    real_read = backend_module.read_decode_forest
    backend_module.read_decode_forest = lambda *a, **k: reads.append(1) or real_read(*a, **k)
    try:
        for _ in range(steps):
            sim.decode()
            fb = forward_batch(sim, runner)
            view = replay_view(fb, max_bs=fb.batch_size) if graph else None
            fresh_before = deft.reuse.fresh
            if profiler is not None and deft.reuse.fresh:
                profiler.enable()
            start = time.perf_counter()
            if graph:
                assert deft.deft_prepare_graph_replay(fb)
                deft.init_forward_metadata_out_graph(view)
            else:
                deft.init_forward_metadata(fb)
            H.sync(sim.device)
            spent = time.perf_counter() - start
            if profiler is not None:
                profiler.disable()
            planned = deft.reuse.fresh > fresh_before
            records.append(dict(us=spent * 1e6, fresh=planned and bool(reads),
                                replanned=planned and not reads,
                                monitor_us=deft.monitor.timer.samples[-1] * 1e6))
            reads.clear()
            sim.sample()
    finally:
        backend_module.read_decode_forest = real_read
    return records


def summarize(records: list[dict]) -> dict:
    out = {}
    for label, keep in (("all", lambda r: True), ("fresh", lambda r: r["fresh"]),
                        ("replanned", lambda r: r["replanned"]),
                        ("advanced", lambda r: not (r["fresh"] or r["replanned"]))):
        us = np.asarray([r["us"] for r in records if keep(r)])
        mon = np.asarray([r["monitor_us"] for r in records if keep(r)])
        if us.size:
            out[label] = dict(steps=int(us.size), p50_us=float(np.percentile(us, 50)),
                              p90_us=float(np.percentile(us, 90)), max_us=float(us.max()),
                              monitor_p50_us=float(np.percentile(mon, 50)))
    return out


def run_case(kind: str, graph: bool, args, profiler=None) -> dict:
    from tests.deft_sglang.test_backend import forward_batch

    sim, runner, deft = build(kind, args)
    if graph:  # capture: graph state for this batch size, an empty work list
        deft.init_cuda_graph_state(args.batch, args.batch)
        sim.decode()
        fb = forward_batch(sim, runner)
        deft.init_forward_metadata_out_graph(fb, in_capture=True)
        sim.sample()
    records = timed_steps(sim, runner, deft, graph, args.steps, profiler)
    return dict(kind=kind, mode="graph" if graph else "eager", batch=args.batch,
                prompt=args.prompt, **summarize(records))


def main(args) -> int:
    from sglang.srt.runtime_context import get_parallel

    from deft_sglang import patches
    from tests.deft_sglang.conftest import PARALLEL_ONE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = H.env_record(device)
    rows = []
    profiler = cProfile.Profile() if args.profile else None
    with get_parallel().override(**PARALLEL_ONE):
        patches.apply_all(owner="bench")
        for kind in ("fork", "unshared"):
            for graph in (False, True):
                row = run_case(kind, graph, args, profiler if kind == "fork" else None)
                H.log(f"{kind:9s} {row['mode']:5s} " + "  ".join(
                    f"{k}: p50 {v['p50_us']:.0f} us p90 {v['p90_us']:.0f} ({v['steps']} steps)"
                    for k, v in row.items() if isinstance(v, dict)))
                rows.append(row)
    table = []
    for r in rows:
        entry = dict(case=f"{r['kind']} {r['mode']}")
        for phase in ("fresh", "replanned", "advanced"):
            for stat in ("steps", "p50_us", "p90_us"):
                value = r.get(phase, {}).get(stat)
                entry[f"{phase}_{stat}"] = "" if value is None else round(value)
        table.append(entry)
    cols = [("case", "case")] + [(f"{p} {s.replace('_us', ' µs')}", f"{p}_{s}")
                                 for p in ("fresh", "replanned", "advanced")
                                 for s in ("steps", "p50_us",
                                                                          "p90_us")]
    md = (f"# DeFT host time per decode step ({args.batch} requests, {args.prompt}-token "
          f"prompts)\n\n{H.env_markdown(env)}\n\n{H.markdown_table(table, cols)}\n")
    os.makedirs(args.out, exist_ok=True)
    H.write_json(os.path.join(args.out, "host.json"), dict(env=env, rows=rows))
    with open(os.path.join(args.out, "host.md"), "w") as f:
        f.write(md)
    print(md)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
