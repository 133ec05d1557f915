"""Bounded reliability soak of SGLang servers (stock and DeFT) under mixed fork traffic.

Each launch (``examples/e2e_compare.py``'s names: ``stock``, ``deft``, ...) is a loopback server
with dummy weights and a KV pool too small for the load (``--max-total-tokens``: radix eviction,
retractions). All get the same seeded workload from ``--concurrency`` client threads:
``--programs`` fork programs (a shared base prefix, then up to two more levels, one shared; 30%
stop inside a shared level, splitting a radix node others decode below; 1-16 greedy branches in
one /generate call, 8-64 new tokens, top-2 logprobs), every 20th streamed and disconnected after
1-4 chunks, every 20th (other offset) aborted through /abort_request; mid-traffic, a 1024-way
fan-out of a 2k prefix, one 32000-token prompt (capped to ``max_position_embeddings``) and a
pressure burst (256 requests x 400 new tokens at once, ~127k KV tokens against a 60k pool, so
that the scheduler retracts and recomputes requests).

No program starts after ``--time-limit`` s; every call has a timeout. Then: wait until nothing
runs or waits, flush the cache, check the used KV tokens (/v1/loads ``num_used_tokens``) are back
to their level after start-up and the server lives and answers /health_generate; count
retractions and SGLang's idle leak warnings in its log; compare greedy outputs of programs
finished in both launches with stock's (``examples/_e2e_metrics``).

    python3 benchmarks/soak.py --model-path /tmp/sglang-0.5.17/models/llama-1b-shape \\
        --out /tmp/soak --launches stock,deft

(or one launch per run: ``--launches stock``, then ``--launches deft --stock-outputs
/tmp/soak/outputs_stock.json --out /tmp/soak-deft``, same seed and workload flags).

Writes ``soak_<launch>.json``, ``outputs_<launch>.json``, ``<launch>.log``, ``soak.json`` and
``soak.md`` under ``--out``; exit status 0 only if no launch crashed, hung, failed a request or
leaked KV and every comparison with stock passed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import _server as server  # noqa: E402
import e2e_compare as e2e  # noqa: E402
from _e2e_metrics import Generation, compare  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak_workload import (STATUSES, make_workload, max_positions, run_workload,  # noqa: E402
                           workload_summary)

DEFAULT_EXTRA = "--max-total-tokens 60000 " + e2e.DEFAULT_EXTRA
LOG_COUNTS = {"retractions": "KV cache pool is full. Retract requests",
              "leak_warnings": "memory leak detected", "use_after_free": "use-after-free",
              "tracebacks": "Traceback (most recent call last)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--launches", default="stock,deft")
    p.add_argument("--extra-server-args", default=DEFAULT_EXTRA,
                   help=f"appended to every launch (default: {DEFAULT_EXTRA!r})")
    p.add_argument("--stock-outputs", help="compare with this outputs_stock.json of an earlier "
                   "run (same seed and workload flags) instead of running stock here")
    for flag, default, what in (
            ("--programs", 1000, "fork programs (+ 3 specials)"), ("--concurrency", 32, "threads"),
            ("--time-limit", 1800.0, "no program starts after this many seconds"),
            ("--request-timeout", 600.0, "s"), ("--launch-timeout", 1200.0, "s"),
            ("--drain-timeout", 300.0, "s for the server to go idle after (<= 60 for its KV)"),
            ("--fanout-width", 1024, "branches"), ("--fanout-prefix", 2048, "tokens"),
            ("--long-context", 32000, "tokens"),
            ("--pressure-width", 256, "requests of the pressure burst"),
            ("--pressure-tokens", 400, "new tokens each (with 96-token prompts: > the pool)"),
            ("--seed", 0, "workload seed")):
        p.add_argument(flag, type=type(default), default=default, help=what)
    args = p.parse_args(argv)
    args.launches = [x.strip() for x in args.launches.split(",") if x.strip()]
    unknown = set(args.launches) - set(server.SERVER_FLAGS)
    if unknown:
        p.error(f"unknown launches {sorted(unknown)}; choose from {', '.join(server.SERVER_FLAGS)}")
    return args


def read_usage(url: str) -> dict:
    """Used KV tokens and requests, summed over DP ranks, from SGLang's /v1/loads.

    ``num_used_tokens`` is the pool size minus free and evictable (radix cache) tokens, so it
    is the KV held by requests, locked radix nodes, or leaked.
    """
    resp = requests.get(url + "/v1/loads", params={"include": "core"}, timeout=30)
    resp.raise_for_status()
    loads = resp.json()["loads"]
    if not loads:  # no snapshot published: "0 used" would mean nothing
        raise RuntimeError("/v1/loads answered without a load snapshot")
    return {"num_used_tokens": sum(int(x.get("num_used_tokens", 0)) for x in loads),
            "token_usage": max((float(x.get("token_usage", 0)) for x in loads), default=0.0),
            "running": sum(int(x.get("num_running_reqs", 0)) for x in loads),
            "waiting": sum(int(x.get("num_waiting_reqs", 0)) for x in loads)}


def poll(probe, done, timeout: float) -> tuple:
    """Call ``probe()`` every 2 s until ``done(value)`` or ``timeout``: (done, last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return done(value), value
        time.sleep(2)


def wait_drained(url: str, timeout: float) -> dict:
    """Wait until nothing runs or waits (disconnected and aborted requests included)."""
    start = time.perf_counter()
    idle, usage = poll(lambda: read_usage(url), lambda u: u["running"] == u["waiting"] == 0,
                       timeout)
    return {**usage, "idle": idle, "waited_s": round(time.perf_counter() - start, 1)}


def leak_check(url: str, idle: dict, timeout: float) -> dict:
    """Flush the radix cache; pass when the used KV tokens are back to ``idle``'s."""
    # SGLang refuses the flush (400) while requests run or wait.
    flushed, _ = poll(lambda: requests.post(url + "/flush_cache", timeout=60).ok, bool, 20)
    # The idle scheduler publishes its load a moment after the last request finished.
    back, after = poll(lambda: read_usage(url),
                       lambda u: u["num_used_tokens"] <= idle["num_used_tokens"], timeout)
    return {"idle_at_start": idle, "after": after, "flushed": flushed,
            "leaked_tokens": max(after["num_used_tokens"] - idle["num_used_tokens"], 0),
            "pass": back}


def scan_soak_log(path: str) -> dict:
    with open(path, errors="replace") as f:
        text = f.read()
    found = {key: text.count(marker) for key, marker in LOG_COUNTS.items()}
    usage = [line for line in text.splitlines() if "token usage:" in line]
    found["last_token_usage_line"] = usage[-1].strip() if usage else None
    return {**found, **e2e.scan_log(text)}


def start_launch(name: str, args) -> tuple:
    """Start one loopback server: (url, record, alive(), cleanup()), as e2e.with_client does."""
    port = server.free_port()
    proc, cmd, log_path = server.start_server(name, args, port)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_healthy(url, proc, args.launch_timeout)
    except Exception:
        server.stop(proc)
        raise
    record = {"command": shlex.join(cmd), "log": log_path, "env": server.LAUNCH_ENV.get(name, {})}
    return url, record, (lambda: proc.poll() is None), (lambda: server.stop(proc))


def problems(rec: dict) -> list:
    """What failed in one launch's record (empty: it passed)."""
    if "start_error" in rec:
        return [f"server did not start: {rec['start_error']}"]
    errors = rec.get("counts", {}).get("total", {}).get("error", 0)
    drain, leak, scan = rec.get("drain"), rec.get("leak"), rec.get("log_scan", {})
    return [message for failed, message in (
        ("check_error" in rec, f"checks failed: {rec.get('check_error')}"),
        (errors > 0, f"{errors} programs failed ({rec.get('timeouts')} timed out)"),
        (drain and not drain["idle"], "requests still running or waiting after --drain-timeout"),
        (leak and not leak["pass"],
         f"KV not back to idle: {(leak or {}).get('leaked_tokens')} tokens"),
        (scan.get("leak_warnings") or scan.get("use_after_free"),
         "SGLang's idle check logged a KV leak or use-after-free"),
        (not rec.get("alive"), "server dead or /health_generate failing")) if failed]


def run_launch(name: str, args, programs: list) -> tuple[dict, dict]:
    """Start ``name``, run the workload, check drain, leak and liveness, stop it.

    Returns
    -------
    record : counts, timings, checks, ``problems`` (empty list: ``pass`` is True).
    outputs : ``{"pid/branch": Generation}`` of the programs that finished ok.
    """
    print(f"== {name}", flush=True)
    started, outputs = time.perf_counter(), {}
    try:
        url, record, alive, cleanup = start_launch(name, args)
    except Exception as exc:
        record = {"start_error": repr(exc)}
        return {**record, "problems": problems(record), "pass": False}, outputs
    try:
        record["startup_s"] = round(time.perf_counter() - started, 1)
        idle = read_usage(url)
        result, outputs = run_workload(url, programs, args)
        record.update(result)
        record["drain"] = wait_drained(url, args.drain_timeout)
        record["leak"] = leak_check(url, idle, min(60.0, args.drain_timeout))
        record["alive"] = bool(alive()) and requests.get(
            url + "/health_generate", timeout=60).status_code == 200
    except Exception as exc:  # the server went away under the checks: a crash
        record["check_error"] = repr(exc)
    finally:
        cleanup()
    if record.get("log"):
        record["log_scan"] = scan_soak_log(record["log"])
    record["problems"] = problems(record)
    record["pass"] = not record["problems"]
    print(f"    {record.get('counts', {}).get('total')}; problems: {record['problems']}",
          flush=True)
    return record, outputs


def compare_launches(stock: dict, candidate: dict) -> dict:
    """``_e2e_metrics.compare(...).summary()`` over the branches finished ok in both launches,
    plus ``programs``, ``divergence_keys`` and ``pass`` (false when nothing was compared)."""
    keys = sorted(set(stock) & set(candidate))
    summary = compare([stock[k] for k in keys], [candidate[k] for k in keys]).summary()
    summary["programs"] = len({k.split("/")[0] for k in keys})
    summary["divergence_keys"] = [keys[d["request"]] for d in summary["divergence_details"]]
    summary["pass"] = (bool(keys) and summary["pass_token_equality_99"]
                       and summary["pass_divergences_are_noise"])
    return summary


def _row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(report: dict) -> str:
    """soak.md: workload line, counts per launch and kind, checks per launch, comparisons."""
    w = report["workload"]
    lines = [f"# SGLang soak: {'PASS' if report['pass'] else 'FAIL'}", "",
             f"`{report['model_path']}`, seed {report['seed']}, server args "
             f"`{report['extra_server_args']}`: {w['programs']} programs, {w['requests']} "
             f"requests; kinds {w['kinds']}; depths {w['depths']}; {w['splitting_prompts']} "
             f"split a cached node; widest {w['max_width']}; longest prompt "
             f"{w['max_prompt_tokens']} tokens.", "",
             _row("launch", "kind", "programs", "requests", *STATUSES),
             "|---|---|" + "---:|" * (2 + len(STATUSES))]
    for name, rec in report["launches"].items():
        for kind, row in rec.get("counts", {}).items():
            lines.append(_row(name, kind, *(row[k] for k in ("programs", "requests", *STATUSES))))
    lines += ["", _row("launch", "wall s", "time limit hit", "drained", "used KV tokens: idle "
                       "-> after", "retractions logged", "alive", "problems"),
              "|---|---:|---|---|---|---:|---|---|"]
    for name, rec in report["launches"].items():
        leak = rec.get("leak")
        kv = (f"{leak['idle_at_start']['num_used_tokens']} -> {leak['after']['num_used_tokens']}"
              if leak else "-")
        lines.append(_row(name, rec.get("wall_s", "-"), rec.get("time_limit_hit", "-"),
                          rec.get("drain", {}).get("idle", "-"), kv,
                          rec.get("log_scan", {}).get("retractions", "-"), rec.get("alive", "-"),
                          "; ".join(rec["problems"]) or "none"))
    if report["comparisons"]:
        lines += ["", _row("comparison", "programs", "requests", "tokens", "token equal %",
                           "max logprob diff", "divergences (within noise)", "pass"),
                  "|---|" + "---:|" * 6 + "---|"]
    for name, c in report["comparisons"].items():
        lines.append(_row(name, c["programs"], c["requests"], c["tokens"], c["token_equal_pct"],
                          f"{c['logprob_abs_diff_before_divergence']['max']:.4g}",
                          f"{c['divergences']} ({c['divergence_gaps_within_noise']})", c["pass"]))
    return "\n".join(lines) + "\n"


def write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


def main(argv=None) -> int:
    """Run every launch, compare each with stock, write the reports; 0 if all passed."""
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    programs = make_workload(args, e2e.vocab_size(args.model_path), max_positions(args.model_path))
    report = {"model_path": args.model_path, "argv": sys.argv, "seed": args.seed,
              "extra_server_args": args.extra_server_args, "environment": e2e.environment(),
              "workload": workload_summary(programs), "launches": {}, "comparisons": {}}
    outputs = {}
    for name in args.launches:
        record, outputs[name] = run_launch(name, args, programs)
        write_json(os.path.join(args.out, f"soak_{name}.json"), record)
        write_json(os.path.join(args.out, f"outputs_{name}.json"),
                   {k: g.__dict__ for k, g in outputs[name].items()})
        report["launches"][name] = {k: v for k, v in record.items() if k != "programs"}
    if args.stock_outputs and "stock" not in outputs:
        with open(args.stock_outputs) as f:
            outputs["stock"] = {k: Generation(**g) for k, g in json.load(f).items()}
    for name in args.launches:
        if name != "stock" and "stock" in outputs:
            report["comparisons"][f"{name}_vs_stock"] = compare_launches(outputs["stock"],
                                                                         outputs[name])
    report["pass"] = (all(r["pass"] for r in report["launches"].values())
                      and all(c["pass"] for c in report["comparisons"].values()))
    write_json(os.path.join(args.out, "soak.json"), report)
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(markdown(report))
    print(f"wrote {os.path.join(args.out, 'soak.md')}: {'PASS' if report['pass'] else 'FAIL'}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
