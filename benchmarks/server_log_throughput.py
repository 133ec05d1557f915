"""Steady-state decode throughput from SGLang server logs, side by side per launch.

SGLang's scheduler logs a ``Decode batch`` line every ``decode_log_interval`` steps (40 by
default) with the running requests and the generation throughput over that interval. This tool
reads the logs ``examples/e2e_compare.py`` leaves (``OUT/<launch>.log``), cuts each into phases
(one workload's batch: consecutive lines with the same number of running requests whose KV token
count only grows; a drop means the next batch started), drops each phase's first line (its interval includes the batch's prefill), and reports the
median of the rest. The issues quote stock's decode throughput this way; the end-to-end driver's
own tok/s divides by the whole batch's wall time, prefill and ramp included, so it reads lower.

    python benchmarks/server_log_throughput.py OUT [--launches stock,stock_flashinfer,deft]
        [--min-lines 3] [--json OUT/server_log_throughput.json]

Phases are matched across launches by their order among phases of at least ``--min-lines``
lines; a phase whose running-request count differs between launches is reported unmatched.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

DECODE_LINE = re.compile(r"Decode batch.*?#running-req: (\d+), #token: (\d+).*?"
                         r"gen throughput \(token/s\): ([0-9.]+)")


def phases(lines) -> list[dict]:
    """[{"running": R, "tok_s": [..]}] per batch: consecutive decode lines with R requests and a
    growing KV token count."""
    out: list[dict] = []
    last_tokens = 0
    for line in lines:
        match = DECODE_LINE.search(line)
        if not match:
            continue
        running, tokens, tok_s = int(match.group(1)), int(match.group(2)), float(match.group(3))
        if not out or out[-1]["running"] != running or tokens < last_tokens:
            out.append({"running": running, "tok_s": []})
        out[-1]["tok_s"].append(tok_s)
        last_tokens = tokens
    return out


def steady(log_lines, min_lines: int = 3) -> list[dict]:
    """Phases of at least ``min_lines`` lines, each with the median of all but its first."""
    rows = []
    for phase in phases(log_lines):
        if len(phase["tok_s"]) >= min_lines:
            rest = phase["tok_s"][1:]
            rows.append({"running": phase["running"], "lines": len(phase["tok_s"]),
                         "median_tok_s": statistics.median(rest),
                         "min_tok_s": min(rest), "max_tok_s": max(rest)})
    return rows


def compare(per_launch: dict[str, list[dict]]) -> list[dict]:
    """One row per phase index: each launch's median and its ratio to the first launch's."""
    names = list(per_launch)
    count = max((len(rows) for rows in per_launch.values()), default=0)
    table = []
    for i in range(count):
        row = {"phase": i}
        running = {n: per_launch[n][i]["running"] for n in names if i < len(per_launch[n])}
        row["running"] = sorted(set(running.values()))
        row["matched"] = len(running) == len(names) and len(row["running"]) == 1
        for n in names:
            if i < len(per_launch[n]):
                row[n] = per_launch[n][i]["median_tok_s"]
        base = row.get(names[0])
        for n in names[1:]:
            if row["matched"] and base and n in row:
                row[f"{n}/{names[0]}"] = row[n] / base
        table.append(row)
    return table


def markdown(table: list[dict], names: list[str]) -> str:
    ratios = [f"{n}/{names[0]}" for n in names[1:]]
    head = ["phase", "running"] + [f"{n} tok/s" for n in names] + ratios
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row["phase"]), "/".join(map(str, row["running"]))
                 + ("" if row["matched"] else " (unmatched)")]
        cells += [f"{row[n]:.0f}" if n in row else "-" for n in names]
        cells += [f"{row[r]:.2f}x" if r in row else "-" for r in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="e2e_compare.py's output directory (holds <launch>.log)")
    p.add_argument("--launches", default="", help="comma list; default: every *.log, sorted")
    p.add_argument("--min-lines", type=int, default=3)
    p.add_argument("--json", default="", help="also write the table here")
    args = p.parse_args(argv)
    names = [n for n in args.launches.split(",") if n] or sorted(
        f[:-4] for f in os.listdir(args.out) if f.endswith(".log"))
    per_launch = {}
    for name in names:
        with open(os.path.join(args.out, f"{name}.log"), errors="replace") as f:
            per_launch[name] = steady(f, args.min_lines)
    if not any(per_launch.values()):
        print(f"no 'Decode batch' phases of >= {args.min_lines} lines in {args.out}",
              file=sys.stderr)
        return 1
    table = compare(per_launch)
    print(markdown(table, names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"launches": names, "min_lines": args.min_lines, "phases": table}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
