"""The tree-verification benchmark's metrics and Markdown table (``bench_verify.py``)."""
from __future__ import annotations

import harness as H

METHODS = ["deft_verify", "deft_nodes", "sglang_triton", "flashinfer"]


def add_metrics(row: dict, tol: float) -> None:
    """Speedups of deft_verify over each method, effective bandwidth, correctness flags."""
    us = {m: t["median_us"] for m, t in row["times"].items()}
    row["us"] = us
    base = us.get("deft_verify")
    row["speedup"] = {m: us[m] / base for m in us if base and m != "deft_verify"}
    row["GBps"] = {m: row["unique_kv_bytes"] / (t * 1e-6) / 1e9 for m, t in us.items() if t}
    deft = [k for k in row["check"] if k.startswith("deft") and k.endswith("_vs_reference")]
    row["deft_ok"] = (all(m in row["times"] for m in ("deft_verify", "deft_nodes"))
                      and all(row["check"][k] <= tol for k in deft)
                      and row["check"].get("deft_nodes_vs_deft_verify", 0.0) <= tol)
    row["peers_off"] = [k for k, v in row["check"].items() if not k.startswith("deft") and v > tol]


COLUMNS = [("batch", "batch"), ("t", "t"), ("R", "R"), ("prefix", "prefix"),
           ("unique KV", "unique_kv_tokens"), ("DeFT verify µs", "us_deft_verify"),
           ("DeFT nodes µs", "us_deft_nodes"), ("SGLang µs", "us_sglang_triton"),
           ("FI µs", "us_flashinfer"), ("× nodes", "x_deft_nodes"),
           ("× SGLang", "x_sglang_triton"), ("× FI", "x_flashinfer"),
           ("verify GB/s", "GBps_deft_verify"), ("max err", "max_err")]


def table_row(row: dict, tol: float) -> dict:
    out = {k: row[k] for k in ("batch", "t", "R", "unique_kv_tokens")}
    lo, hi = min(row["prefix_tokens"]), max(row["prefix_tokens"])
    out["prefix"] = lo if lo == hi else f"{lo}–{hi}"
    for m in METHODS:
        out[f"us_{m}"] = H.fmt(row["us"].get(m), 1) if m in row["us"] else (
            "✗" if m in row["errors"] else "–")
        out[f"x_{m}"] = H.fmt(row["speedup"].get(m), 2, "×")
    out["GBps_deft_verify"] = H.fmt(row["GBps"].get("deft_verify"), 0)
    errs = [v for k, v in row["check"].items() if k.endswith("_vs_reference")]
    worst = max(errs) if errs else None
    out["max_err"] = "–" if worst is None else f"{worst:.1e}" + (" ✗" if worst > tol else "")
    return out


def write_markdown(path: str, results: dict, tol: float) -> None:
    rows = results["cases"]
    text = ["# Tree verification, per layer", "", H.env_markdown(results["env"]), "",
            f"Heads {results['heads']}; times are medians (µs); × = method time / DeFT verify "
            "time (> 1: DeFT verify faster); verify GB/s = unique KV bytes (committed + draft, "
            "each once) / DeFT verify time; max err = largest error of any method vs the float64 "
            f"reference (tol {tol}).", "",
            H.markdown_table([table_row(r, tol) for r in rows], COLUMNS), ""]
    problems = [f"- {m}: not run ({why})" for m, why in results["not_run"].items()]
    problems += [f"- {r['case']} {k}: {v}" for r in rows for k, v in r["errors"].items()
                if not k.endswith("_traceback")]
    problems += [f"- {r['case']}: peer output off: {r['peers_off']}" for r in rows
                 if r["peers_off"]]
    problems += [f"- {f['case']}: FAILED {f['error']}" for f in results["failed"]]
    if problems:
        text += ["## Errors and mismatches", ""] + problems + [""]
    with open(path, "w") as f:
        f.write("\n".join(text))
