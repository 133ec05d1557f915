"""Metrics per workload, the console row, results.md (tables, targets) and the plots.

``python benchmarks/report.py DIR`` re-renders DIR/results.md and the PNGs from DIR/results.json
(e.g. on a machine with matplotlib when the GPU host has none).
"""
from __future__ import annotations

import math
import os

import harness as H

PEERS = ["sglang_triton", "flashinfer_decode", "flashinfer_cascade"]
SHORT = {"sglang_triton": "SGLang", "flashinfer_decode": "FI decode",
         "flashinfer_cascade": "FI cascade"}


def _t(rec, m):
    t = rec["times"].get(m)
    return t.get("median_us") if t else None


def add_metrics(rec: dict, copy_GBps: float, tol: float) -> None:
    s, st = rec["shape"], rec.get("stats", {})
    eb, hkv, hq, d = s["elem_bytes"], s["num_kv_heads"], s["num_qo_heads"], s["head_dim"]
    unique = int(st.get("unique_kv_tokens", rec["unique_tokens"]))
    io_min = unique * hkv * 2 * d * eb + rec["queries"] * hq * 2 * d * eb
    roof_us = io_min / (copy_GBps * 1e9) * 1e6
    deft = _t(rec, "deft")
    peers = {m: _t(rec, m) for m in PEERS if _t(rec, m)}
    best = min(peers, key=peers.get) if peers else None
    floor = _t(rec, "read_floor")
    pct = lambda us: 100.0 * roof_us / us if us else None  # noqa: E731
    checks = rec["check"]
    deft_err = max([v for k, v in checks.items() if k.startswith("deft_")] or [math.inf])
    loaded = st.get("loaded_kv_tokens")
    m = dict(
        unique_kv_tokens=unique, unique_matches_workload=unique == rec["unique_tokens"],
        io_min_bytes=io_min, unique_kv_MB=unique * hkv * 2 * d * eb / 1e6,
        roofline_us=roof_us, deft_us=deft, deft_pct_roofline=pct(deft),
        deft_effective_GBps=io_min / (deft * 1e-6) / 1e9 if deft else None,
        best_peer=best, best_peer_us=peers.get(best), best_peer_pct_roofline=pct(peers.get(best)),
        speedup_vs_best_peer=peers[best] / deft if best and deft else None,
        read_floor_us=floor, read_floor_pct_roofline=pct(floor),
        deft_over_floor=deft / floor if deft and floor else None,
        # the most any kernel that reads the unique KV once could beat the best peer by
        peer_over_floor=peers[best] / floor if best and floor else None,
        loaded_kv_tokens=loaded,
        loaded_over_unique=loaded / unique if loaded is not None and unique else None,
        partial_MB=st.get("partial_bytes", 0) / 1e6 if "partial_bytes" in st else None,
        max_err=deft_err, correct=deft_err <= tol,
        peer_mismatch=[k for k, v in checks.items()
                       if not k.startswith("deft_") and not v <= tol]
        + (["read_floor_sum"] if (rec["times"].get("read_floor") or {}).get("rel_err", 0) > 1e-3
           else []))
    for p, us in peers.items():
        m[f"speedup_vs_{p}"] = us / deft if deft else None
        m[f"{p}_pct_roofline"] = pct(us)
    rec["metrics"] = m


_ROW = ("{:<40s} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>7} {:>7} {:>8} {:>8}")


def header() -> str:
    return _ROW.format("workload", "B", "uniq MB", "DeFT us", "SGLang", "FI dec", "FI casc",
                       "floor", "%roof", "xpeer", "/floor", "max err", "plan us")


def row(rec: dict) -> str:
    m = rec["metrics"]
    f = H.fmt
    return _ROW.format(
        rec["name"][:40], rec["queries"], f(m["unique_kv_MB"]), f(m["deft_us"]),
        f(_t(rec, "sglang_triton")), f(_t(rec, "flashinfer_decode")),
        f(_t(rec, "flashinfer_cascade")), f(m["read_floor_us"]), f(m["deft_pct_roofline"]),
        f(m["speedup_vs_best_peer"], 2), f(m["deft_over_floor"], 2),
        _err(m).replace(" ✗", "!"), f(rec["plan"]["host_us"], 0))


def _geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


COLUMNS = [("workload", "name"), ("heads", "heads"), ("B", "queries"), ("depth", "depth"),
           ("unique KV MB", "mb"), ("roofline µs", "roof"), ("DeFT µs", "deft"),
           ("SGLang µs", "sgl"), ("FI decode µs", "fid"), ("FI cascade µs", "fic"),
           ("× best peer", "xbest"), ("× SGLang", "xsgl"), ("× FI dec", "xfid"),
           ("× FI casc", "xfic"), ("read floor µs", "floor"), ("DeFT / floor", "ovfloor"),
           ("DeFT % roof", "pct"), ("best peer % roof", "ppct"), ("floor % roof", "fpct"),
           ("loaded / unique", "lu"), ("partial MB", "part"), ("plan µs", "plan"),
           ("max err", "err")]


def _md_row(rec):
    m, f = rec["metrics"], H.fmt
    return dict(name=rec["name"], heads=rec["heads"], queries=rec["queries"], depth=rec["depth"],
                mb=f(m["unique_kv_MB"]), roof=f(m["roofline_us"]), deft=f(m["deft_us"]),
                sgl=f(_t(rec, "sglang_triton")), fid=f(_t(rec, "flashinfer_decode")),
                fic=f(_t(rec, "flashinfer_cascade")),
                xbest=f(m["speedup_vs_best_peer"], 2, "×"),
                xsgl=f(m.get("speedup_vs_sglang_triton"), 2, "×"),
                xfid=f(m.get("speedup_vs_flashinfer_decode"), 2, "×"),
                xfic=f(m.get("speedup_vs_flashinfer_cascade"), 2, "×"),
                floor=f(m["read_floor_us"]), ovfloor=f(m["deft_over_floor"], 2),
                pct=f(m["deft_pct_roofline"], 1, "%"), ppct=f(m["best_peer_pct_roofline"], 1, "%"),
                fpct=f(m["read_floor_pct_roofline"], 1, "%"), lu=f(m["loaded_over_unique"], 3),
                part=f(m["partial_MB"], 2), plan=f(rec["plan"]["host_us"], 0),
                err=_err(m))


def _err(m):
    e = m.get("max_err")
    return ("–" if e is None else f"{e:.1e}") + ("" if m.get("correct") else " ✗")


def targets(recs: list[dict]) -> list[str]:
    """The issue's targets, each with the measured numbers (PASS / MISS / n/a)."""
    by = {r["name"]: r for r in recs}
    lines = []

    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    def cmp(v, op, bound):
        return None if v is None else (v <= bound if op == "<=" else v >= bound)

    for name, xpeer in [("fewshot-4000xb50-g400", 3.0), ("long-32000x16-g256", 3.0)]:
        m = by.get(name, {}).get("metrics", {})
        r = m.get("deft_over_floor")
        lines.append(f"- {name}: DeFT / read floor = {H.fmt(r, 2)} (≤ 1.15): "
                     f"{verdict(cmp(r, '<=', 1.15))}; × best peer = "
                     f"{H.fmt(m.get('speedup_vs_best_peer'), 2)} (≥ {xpeer:g}): "
                     f"{verdict(cmp(m.get('speedup_vs_best_peer'), '>=', xpeer))}")
    m = by.get("fanout-2048x1024-g32", {}).get("metrics", {})
    lines.append(f"- fanout-2048x1024-g32: × best peer = {H.fmt(m.get('speedup_vs_best_peer'), 2)}"
                 f" (≥ 5): {verdict(cmp(m.get('speedup_vs_best_peer'), '>=', 5.0))}")
    groups = sorted({r["group"] for r in recs if r["group"].startswith("tot")})
    for g in groups:
        xs = [r["metrics"]["speedup_vs_best_peer"] for r in recs if r["group"] == g]
        gm = _geomean(xs)
        ceiling = _geomean([r["metrics"].get("peer_over_floor") for r in recs if r["group"] == g])
        lines.append(f"- {g} ({len(xs)} workloads): geomean × best peer = {H.fmt(gm, 2)}, "
                     f"min {H.fmt(min([x for x in xs if x] or [None], key=lambda x: x or 0), 2)}"
                     f" (≥ 2): {verdict(cmp(gm, '>=', 2.0))}; at the read floor it would be "
                     f"{H.fmt(ceiling, 2)}")
    deep = [r for r in recs if r["depth"] >= 3 and r["heads"] == "32/8/d128"]
    gm = _geomean([r["metrics"]["speedup_vs_best_peer"] for r in deep])
    ceiling = _geomean([r["metrics"].get("peer_over_floor") for r in deep])
    lines.append(f"- 3+-level trees ({len(deep)} workloads, 32/8/d128): geomean × best peer = "
                 f"{H.fmt(gm, 2)} (≥ 2): {verdict(cmp(gm, '>=', 2.0))}; at the read floor it "
                 f"would be {H.fmt(ceiling, 2)}")
    r = by.get("unshared-128x4096")
    if r:
        fastest = [_t(r, m) for m in ("sglang_triton", "flashinfer_decode") if _t(r, m)]
        ratio = r["metrics"]["deft_us"] / min(fastest) if fastest else None
        lines.append(f"- unshared-128x4096: DeFT / fastest of SGLang, FI decode = "
                     f"{H.fmt(ratio, 3)} (≤ 1.05): {verdict(cmp(ratio, '<=', 1.05))}")
    r = by.get("tree3-1600x16x16")
    if r:
        p = r["plan"]
        lines.append(f"- planning 256 queries (tree3-1600x16x16, 273 nodes): host "
                     f"{H.fmt(p['host_us'], 0)} µs (validate=False: "
                     f"{H.fmt(p.get('novalidate_host_us'), 0)} µs; with device sync "
                     f"{H.fmt(p['sync_us'], 0)} µs) (≤ 100): {verdict(cmp(p['host_us'], '<=', 100))}"
                     f"; advancing a step in place instead: "
                     f"{H.fmt(p.get('advance_host_us'), 0)} µs")
    return lines


def write_all(results: dict, out: str) -> list[str]:
    recs = results["workloads"]
    files = ["results.json"]
    env, bw = results["env"], results["copy_bandwidth"]
    md = [f"# DeFT kernel benchmark — {env.get('gpu')}", "", H.env_markdown(env), "",
          f"Device-to-device copy bandwidth (read + write, {bw['tensor_bytes'] / 2**30:.1f} GiB "
          f"tensor): **{bw['GBps']:.0f} GB/s**. Roofline = (unique KV + Q/O bytes) / that.", "",
          f"Peers: {', '.join(results.get('peers', [])) or 'none'}; JIT warm-up: "
          f"`{results.get('jit_warmup_s', {})}`", "", "## Targets (issue 3)", ""]
    md += targets(recs) if recs else ["(no workload ran)"]
    md += ["", "## All workloads", "", H.markdown_table([_md_row(r) for r in recs], COLUMNS), ""]
    md += ["## Per group", "",
           "| group | workloads | geomean × best peer | min | max | geomean DeFT % roof |",
           "|---|---|---|---|---|---|"]
    for g in sorted({r["group"] for r in recs}):
        rs = [r["metrics"] for r in recs if r["group"] == g]
        xs = [m["speedup_vs_best_peer"] for m in rs if m["speedup_vs_best_peer"]]
        md.append(f"| {g} | {len(rs)} | {H.fmt(_geomean(xs), 2)} | "
                  f"{H.fmt(min(xs) if xs else None, 2)} | {H.fmt(max(xs) if xs else None, 2)} | "
                  f"{H.fmt(_geomean([m['deft_pct_roofline'] for m in rs]), 1)} |")
    problems = [(r["name"], k, v) for r in recs for k, v in r["errors"].items()]
    problems += [(f["name"], "workload", f["error"]) for f in results.get("failed", [])]
    mism = [(r["name"], r["metrics"]["peer_mismatch"]) for r in recs
            if r["metrics"]["peer_mismatch"]]
    if problems or mism or results.get("skipped"):
        md += ["", "## Errors, mismatches, skipped", ""]
        md += [f"- {n}: {k}: `{v[:300]}`" for n, k, v in problems]
        md += [f"- {n}: peer output off the reference by more than tol: {ks}" for n, ks in mism]
        if results.get("skipped"):
            md.append(f"- skipped (time budget): {', '.join(results['skipped'])}")
    plots = plot(recs, out)
    md += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return files + ["results.md"] + plots


def plot(recs: list[dict], out: str) -> list[str]:
    made = []
    few = [r for r in recs if r["group"] == "fewshot"]
    series = {}
    for g in sorted({r.get("gen") for r in few}):
        rs = sorted((r for r in few if r.get("gen") == g), key=lambda r: r["branches"])
        for key, label in [("speedup_vs_best_peer", "best peer"),
                           ("speedup_vs_flashinfer_decode", "FI decode"),
                           ("speedup_vs_sglang_triton", "SGLang"),
                           ("speedup_vs_flashinfer_cascade", "FI cascade")]:
            pts = [(r["branches"], r["metrics"].get(key)) for r in rs if r["metrics"].get(key)]
            if pts:
                series[f"vs {label}, +{g} tokens"] = ([p[0] for p in pts], [p[1] for p in pts])
    if H.plot_lines(os.path.join(out, "speedup_fewshot.png"), series,
                    title="DeFT speedup, few-shot 4000-token prompt", xlabel="branches",
                    ylabel="speedup (peer time / DeFT time)", hline=1.0):
        made.append("speedup_fewshot.png")
    labels = [r["name"] for r in recs]
    bars = {"DeFT": [r["metrics"]["deft_pct_roofline"] for r in recs],
            "best peer": [r["metrics"]["best_peer_pct_roofline"] for r in recs],
            "read floor": [r["metrics"]["read_floor_pct_roofline"] for r in recs]}
    bars = {k: v for k, v in bars.items() if any(x is not None for x in v)}
    if H.plot_bars(os.path.join(out, "roofline_pct.png"), labels, bars,
                   title="% of copy-bandwidth roofline (unique KV + Q/O bytes)",
                   ylabel="% of roofline", hline=100.0):
        made.append("roofline_pct.png")
    xs = {"× best peer": [r["metrics"]["speedup_vs_best_peer"] for r in recs]}
    if any(x is not None for x in xs["× best peer"]) and H.plot_bars(
            os.path.join(out, "speedup_all.png"), labels, xs,
            title="DeFT speedup over the fastest peer", ylabel="speedup", hline=1.0):
        made.append("speedup_all.png")
    return made


if __name__ == "__main__":  # re-render results.md and the plots from a results.json
    import json
    import sys
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/report.py DIR   (DIR holds results.json)")
    with open(os.path.join(sys.argv[1], "results.json")) as f:
        res = json.load(f)
    print(", ".join(write_all(res, sys.argv[1])))
