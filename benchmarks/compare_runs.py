"""DeFT's time in one kernel-table run against another: the A/B of a config change.

``python benchmarks/compare_runs.py BASE_DIR OTHER_DIR [OTHER_DIR ...] [--method deft]`` reads
each DIR/results.json (``bench_kernels.py --out DIR``; runs made with ``--skip-flashinfer
--skip-sglang --skip-floor`` time DeFT alone in a few seconds a variant) and prints, per
workload, the other runs' median time over the base's, then the geometric means.  A timing is
*unsteady* when its 80th percentile exceeds 1.5x its 20th (in session 8's runs, repetitions
timed partly on host launch time; see ``harness``): such workloads are marked and left out of
the second geomean.
"""
from __future__ import annotations

import argparse
import json
import math
import os

UNSTEADY_SPREAD = 1.5


def load_times(run_dir: str, method: str) -> dict:
    """{workload: (median_us, steady)} of ``method`` in ``run_dir/results.json``."""
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    times = {}
    for record in results["workloads"]:
        t = record["times"].get(method)
        if t:
            times[record["name"]] = (t["median_us"],
                                     t["p80_us"] <= UNSTEADY_SPREAD * t["p20_us"])
    return times


def geomean(ratios: list) -> float:
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")


def compare(base: dict, others: list[dict]) -> tuple[list[str], list[tuple[float, float, int]]]:
    """Table lines, and per other run (geomean of all, geomean of steady, steady count)."""
    lines, ratios, steady = [], [[] for _ in others], [[] for _ in others]
    for name, (base_us, base_ok) in base.items():
        cells = []
        for i, other in enumerate(others):
            if name not in other:
                cells.append(f"{'-':>8s}")
                continue
            us, ok = other[name]
            ratios[i].append(us / base_us)
            if ok and base_ok:
                steady[i].append(us / base_us)
            cells.append(f"{us / base_us:7.3f}{'' if ok and base_ok else '*'}")
        lines.append(f"{name:44s} {base_us:8.1f} " + " ".join(cells))
    summary = [(geomean(r), geomean(s), len(s)) for r, s in zip(ratios, steady)]
    return lines, summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--method", default="deft")
    args = parser.parse_args(argv)
    base = load_times(args.base, args.method)
    others = [load_times(d, args.method) for d in args.others]
    lines, summary = compare(base, others)
    print(f"{'workload':44s} {'base us':>8s} " + " ".join(
        f"{os.path.basename(os.path.normpath(d))[:8]:>8s}" for d in args.others))
    print("\n".join(lines))
    print("* unsteady timing (p80 > 1.5 x p20) in either run")
    for d, (all_, steady, n) in zip(args.others, summary):
        print(f"{d}: geomean {all_:.3f} (all), {steady:.3f} ({n} steady)")


if __name__ == "__main__":
    main()
