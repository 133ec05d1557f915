"""GPU end to end: stock SGLang (Triton backend) vs DeFT on one model, outputs and decode speed.

For each launch in ``--launches`` a server (or, for ``deft_engine``, an in-process engine) is
started on ``--model-path`` with ``--load-format dummy``, then:

* correctness: ``--groups`` x ``--width`` forked requests (each group: a random-token prefix
  run once to cache it, then ``width`` branches = prefix + 4 distinct tokens, all groups' branches
  in one batch), greedy, ``return_logprob`` with ``top_logprobs_num=2``; every DeFT launch is
  compared with ``stock`` (see ``_e2e_metrics``);
* throughput: prefix ~1k / 8k / 16k x width 16 / 32 / 64 x 256 new tokens (``ignore_eos``),
  decode tokens per second of the branch batch (prefix cached first), its latency and time per
  output token; also parallel sampling (one ~1k prompt, ``n = 32``) and unshared traffic
  (256 ~1k prompts, cached first, then 256 new tokens each), and a tree-of-thought program
  whose branching follows the DeFT reasoning traces (``--tot``, ``examples/_tot_program.py``).
  ``throughput.png`` and ``tpot.png`` plot the rows per launch (with matplotlib).

Launches (decode CUDA graphs on, SGLang's default, unless said): ``stock`` (``--attention-backend
triton``), ``stock_flashinfer`` (``--attention-backend flashinfer``), ``deft`` (``python -m
sglang.launch_server --attention-backend deft``), ``deft_module`` (``python -m
deft_sglang.launch_server``), ``deft_engine`` (``deft_sglang.enable()`` + ``sgl.Engine``),
``deft_eager`` (``deft`` with ``DEFT_CUDA_GRAPH=disable``: decode graphs off), ``deft_shadow``
(``deft`` with ``DEFT_SHADOW_CHECK=1``: every decode layer also runs the stock kernel; the report
gets the largest difference seen, from the server log), ``deft_host_advance`` (``deft`` with
``DEFT_GRAPH_TAIL_ADVANCE=host``: the host advances reused plans, not the graph). DeFT servers
log their host time per decode step (``DEFT_STATS_INTERVAL``); the report keeps the last such line.

    python examples/e2e_compare.py --model-path /tmp/sglang-0.5.17/models/llama-1b-shape \\
        --out benchmarks/results/e2e-llama-1b [--quick]

Writes ``e2e.json`` (+ server logs, raw outputs) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EngineClient, HTTPClient  # noqa: E402
from _e2e_metrics import Generation, compare  # noqa: E402
from _e2e_plots import write_plots  # noqa: E402
from _server import LAUNCH_ENV, free_port, start_server, stop, wait_healthy  # noqa: E402
from _tot_program import run_tot  # noqa: E402

LAUNCHES = ("stock", "stock_flashinfer", "deft", "deft_module", "deft_engine", "deft_eager",
            "deft_shadow", "deft_host_advance")
LOG_MARKERS = {"deft_active_logged": "DeFT tree attention active",
               "deft_graphs_logged": "DeFT decodes inside CUDA graphs",
               "deft_verify_logged": "DeFT verifies speculative draft trees",
               "host_time_line": "DeFT host time per decode step",
               "shadow_check_line": "DeFT shadow check"}
THROUGHPUT_LAUNCHES = ("stock", "stock_flashinfer", "deft", "deft_eager", "deft_host_advance")
DEFAULT_EXTRA = "--sampling-backend pytorch --skip-server-warmup"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--quick", action="store_true", help="short outputs, one throughput point")
    p.add_argument("--launches", default="stock,stock_flashinfer,deft,deft_module,deft_engine")
    p.add_argument("--grid", default="1024,8192,16384:16,32,64",
                   help="throughput grid 'prefixes:widths' (256 new tokens each)")
    p.add_argument("--examples", action="store_true",
                   help="also run every example program against each server launch")
    p.add_argument("--parallel-n", type=int, default=32,
                   help="also time one ~1k-token prompt sampled n times (0: no)")
    p.add_argument("--unshared", type=int, default=256,
                   help="also time this many unshared ~1k-token prompts x 256 new tokens (0: no)")
    p.add_argument("--tot", default="keywordToT:6", metavar="TRACE:TREES",
                   help="also replay TREES tree-of-thought traces of TRACE side by side "
                        "(examples/_tot_program.py; '' for none)")
    p.add_argument("--tot-max-new", type=int, default=0,
                   help="cap each ToT branch's new tokens (0: the trace's own lengths)")
    p.add_argument("--extra-server-args", default=DEFAULT_EXTRA,
                   help=f"appended to every launch (default: {DEFAULT_EXTRA!r})")
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--width", type=int, default=20)
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--launch-timeout", type=float, default=1200.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.launches = [x.strip() for x in args.launches.split(",") if x.strip()]
    unknown = set(args.launches) - set(LAUNCHES)
    if unknown:
        p.error(f"unknown launches {sorted(unknown)}; choose from {', '.join(LAUNCHES)}")
    if args.quick:
        args.new_tokens, args.prefix_len = min(args.new_tokens, 24), min(args.prefix_len, 256)
    if args.tot:
        trace, _, trees = args.tot.partition(":")
        if not trees.isdigit() or int(trees) < 1:
            p.error(f"--tot must be TRACE:TREES (e.g. keywordToT:6), got {args.tot!r}")
        args.tot = (trace, int(trees))
    prefixes, widths = (part.split(",") for part in args.grid.split(":"))
    args.grid = ([(1024, 16, 64)] if args.quick else
                 [(int(p_), int(w), 256) for p_ in prefixes for w in widths])
    return args


def vocab_size(model_path: str) -> int:
    with open(os.path.join(model_path, "config.json")) as f:
        return int(json.load(f).get("vocab_size", 32000))


def random_ids(rng: random.Random, n: int, vocab: int) -> list:
    return [rng.randrange(3, vocab) for _ in range(n)]


def correctness_requests(args, vocab: int) -> tuple[list, list]:
    """(prefixes, branches): ``groups`` prefixes and ``groups*width`` forked branch prompts."""
    rng = random.Random(args.seed)
    prefixes = [random_ids(rng, args.prefix_len, vocab) for _ in range(args.groups)]
    branches = [p + random_ids(rng, 4, vocab) for p in prefixes for _ in range(args.width)]
    return prefixes, branches


GREEDY = {"temperature": 0.0, "ignore_eos": True}


def run_correctness(client, args, vocab: int) -> list:
    prefixes, branches = correctness_requests(args, vocab)
    client.generate(input_ids=prefixes, sampling_params={**GREEDY, "max_new_tokens": 1})
    results = client.generate(input_ids=branches,
                              sampling_params={**GREEDY, "max_new_tokens": args.new_tokens},
                              return_logprob=True, top_logprobs_num=2)
    return [Generation.from_result(r) for r in results]


def timed_row(client, kind: str, prompts: list, sampling: dict, **fields) -> dict:
    """Run one batch and time it: decode tokens/s, end-to-end latency and time per output
    token (the batch decodes in lockstep, so latency / new tokens)."""
    start = time.perf_counter()
    out = client.generate(input_ids=prompts, sampling_params=sampling)
    wall = time.perf_counter() - start
    tokens = sum(int(o["meta_info"]["completion_tokens"]) for o in out)
    row = {"kind": kind, **fields, "new_tokens": sampling["max_new_tokens"], "tokens": tokens,
           "wall_s": round(wall, 4), "decode_tok_s": round(tokens / wall, 2),
           "tpot_ms": round(1000 * wall / sampling["max_new_tokens"], 3)}
    print(f"    {kind:<9} prefix {row.get('prefix', 0):>5} x width {row.get('width', 0):>3}: "
          f"{row['decode_tok_s']:9.1f} tok/s, TPOT {row['tpot_ms']:.2f} ms", flush=True)
    return row


def run_throughput(client, args, vocab: int) -> list:
    rng = random.Random(args.seed + 1)
    warm = random_ids(rng, 64, vocab)
    client.generate(input_ids=[warm + [i + 3] for i in range(4)],
                    sampling_params={**GREEDY, "max_new_tokens": 16})
    rows = []
    for prefix_len, width, new_tokens in args.grid:
        client.flush_cache()
        prefix = random_ids(rng, prefix_len, vocab)
        client.generate(input_ids=[prefix], sampling_params={**GREEDY, "max_new_tokens": 1})
        rows.append(timed_row(client, "fork", [prefix + [3 + i] for i in range(width)],
                              {**GREEDY, "max_new_tokens": new_tokens},
                              prefix=prefix_len, width=width))
    if args.parallel_n and not args.quick:
        client.flush_cache()
        prompt = random_ids(rng, 1024, vocab)
        rows.append(timed_row(client, "n-sample", [prompt],
                              {"temperature": 0.8, "ignore_eos": True, "max_new_tokens": 256,
                               "n": args.parallel_n}, prefix=1024, width=args.parallel_n))
    if args.unshared and not args.quick:
        rows.append(run_unshared(client, args, vocab, rng))
    if args.tot and not args.quick:
        client.flush_cache()
        rows.append(run_tot(client, vocab, *args.tot, seed=args.seed,
                            max_new_cap=args.tot_max_new))
    return rows


def run_unshared(client, args, vocab: int, rng: random.Random) -> dict:
    """Decode speed of requests that share nothing: their prompts are prefilled (and cached)
    first, so the timed call is decode; each request's cached prompt is its own radix node."""
    client.flush_cache()
    prompts = [random_ids(rng, 1024 + rng.randrange(64), vocab) for _ in range(args.unshared)]
    client.generate(input_ids=prompts, sampling_params={**GREEDY, "max_new_tokens": 1})
    row = timed_row(client, "unshared", prompts, {**GREEDY, "max_new_tokens": 256},
                    prefix=1024, width=args.unshared)
    row["unshared"] = True
    return row


def with_client(name: str, args):
    """Context-free helper: (client, record, cleanup) for one launch."""
    if name == "deft_engine":
        from sglang.srt.server_args import prepare_server_args

        import deft_sglang
        deft_sglang.enable()
        server_args = prepare_server_args(["--model-path", args.model_path, "--load-format",
                                           "dummy", *shlex.split(args.extra_server_args)])
        client = EngineClient(args.model_path, deft=True, server_args=server_args)
        record = {"command": "deft_sglang.enable(); sgl.Engine(server_args=prepare_server_args("
                             f"{shlex.split(args.extra_server_args)}))",
                  "backends": list(server_args.get_attention_backends())}

        def cleanup():
            client.close()
            deft_sglang.disable()
        return client, record, cleanup
    port = free_port()
    proc, cmd, log_path = start_server(name, args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, args.launch_timeout)
    except Exception:
        stop(proc)
        raise
    record = {"command": shlex.join(cmd), "log": log_path, "env": LAUNCH_ENV.get(name, {}),
              "url": url}

    def cleanup():
        stop(proc)
        with open(log_path) as f:
            record.update(scan_log(f.read()))
    return HTTPClient(url, timeout=3600), record, cleanup


EXAMPLE_PROGRAMS = (
    ("tree_of_thought", ["--dsl", "--depth", "2", "--breadth", "3"]),
    ("tree_of_thought", ["--depth", "3", "--breadth", "4"]),
    ("few_shot_fanout", ["--width", "16"]),
    ("best_of_n", ["--n", "8"]),
    ("parallel_sampling", ["--n", "8", "--prompts", "2"]),
)


def run_examples(url: str, out_dir: str, name: str) -> list:
    """Each example program against the server at ``url``: exit status, wall time, log."""
    here = os.path.dirname(os.path.abspath(__file__))
    results = []
    for i, (module, extra) in enumerate(EXAMPLE_PROGRAMS):
        log_path = os.path.join(out_dir, f"example_{name}_{i}_{module}.log")
        cmd = [sys.executable, os.path.join(here, f"{module}.py"), "--url", url,
               "--max-new-tokens", "32", *extra]
        start = time.perf_counter()
        with open(log_path, "w") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=900).returncode
        results.append({"example": module, "args": extra, "returncode": code,
                        "wall_s": round(time.perf_counter() - start, 2), "log": log_path})
        print(f"    example {module} {' '.join(extra)}: exit {code}", flush=True)
    return results


def scan_log(text: str) -> dict:
    """What a server log says about DeFT: flags for one-time lines, the last periodic ones."""
    found = {}
    for key, marker in LOG_MARKERS.items():
        lines = [line[line.index(marker):] for line in text.splitlines() if marker in line]
        found[key] = (bool(lines) if key.endswith("_logged") else (lines[-1] if lines else None))
    return found


def run_launch(name: str, args, vocab: int) -> tuple[dict, list]:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    client, record, cleanup = with_client(name, args)
    outputs = []
    try:
        record["startup_s"] = round(time.perf_counter() - started, 1)
        if name != "stock_flashinfer":
            outputs = run_correctness(client, args, vocab)
            print(f"    correctness: {len(outputs)} requests", flush=True)
        if name in THROUGHPUT_LAUNCHES:
            record["throughput"] = run_throughput(client, args, vocab)
        if args.examples and record.get("url"):
            record["examples"] = run_examples(record["url"], args.out, name)
    finally:
        cleanup()
    with open(os.path.join(args.out, f"outputs_{name}.json"), "w") as f:
        json.dump([o.__dict__ for o in outputs], f)
    return record, outputs


def environment() -> dict:
    """Versions and GPU (read with nvidia-smi: no CUDA context in this process)."""
    info = {"python": sys.version.split()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        from importlib.metadata import version
        info.update(torch=version("torch"), sglang=version("sglang"),
                    deft_sglang=version("deft-sglang"), triton=version("triton"))
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except Exception as exc:  # report, do not fail the run
        info["env_error"] = repr(exc)
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    vocab = vocab_size(args.model_path)
    report = {"model_path": args.model_path, "argv": sys.argv, "environment": environment(),
              "quick": args.quick, "correctness_workload": {
                  "groups": args.groups, "width": args.width, "prefix_len": args.prefix_len,
                  "new_tokens": args.new_tokens, "greedy": True, "top_logprobs_num": 2},
              "cuda_graphs": "decode graphs on (SGLang's default) for every launch except "
                             "deft_eager",
              "launches": {}, "comparisons": {}}
    outputs = {}
    for name in args.launches:
        try:
            report["launches"][name], outputs[name] = run_launch(name, args, vocab)
        except Exception as exc:
            report["launches"][name] = {"error": repr(exc)}
            print(f"    FAILED: {exc!r}", flush=True)
        _write(args, report)
    for name in args.launches:
        if name.startswith("deft") and outputs.get(name) and outputs.get("stock"):
            summary = compare(outputs["stock"], outputs[name]).summary()
            report["comparisons"][f"{name}_vs_stock"] = summary
            print(f"{name} vs stock: {summary['token_equal_pct']}% tokens equal, "
                  f"logprob diff max {summary['logprob_abs_diff_before_divergence']['max']:.4g}, "
                  f"{summary['divergences']} divergences "
                  f"({summary['divergence_gaps_within_noise']} within noise)", flush=True)
    report["plots"] = write_plots(report, args.out)
    _write(args, report)
    ok = all(c["pass_token_equality_99"] and c["pass_divergences_are_noise"]
             for c in report["comparisons"].values())
    ok = ok and all(e["returncode"] == 0 for launch in report["launches"].values()
                    for e in launch.get("examples", []))
    print(f"wrote {os.path.join(args.out, 'e2e.json')}; {'PASS' if ok else 'CHECK'}")
    return 0 if ok and report["comparisons"] else 1


def _write(args, report: dict) -> None:
    with open(os.path.join(args.out, "e2e.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
