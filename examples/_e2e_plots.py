"""Plots of an ``e2e_compare`` report: decode throughput and time per output token per workload,
one bar per launch. Needs matplotlib; without it nothing is drawn (the JSON has every number)."""
from __future__ import annotations

import os


def workload_label(row: dict) -> str:
    if row["kind"] == "fork":
        return f"fork {row['prefix']}x{row['width']}"
    if row["kind"] == "tot":
        return f"ToT {row['trace']} x{row['trees']}"
    return f"{row['kind']} {row.get('width', '')}".strip()


def series(report: dict, key: str) -> tuple[list[str], dict[str, list]]:
    """(workload labels, launch -> values in label order; None where a launch lacks one)."""
    labels, values = [], {}
    for launch, record in report.get("launches", {}).items():
        for row in record.get("throughput", []) or []:
            label = workload_label(row)
            if label not in labels:
                labels.append(label)
            values.setdefault(launch, {})[label] = row.get(key)
    return labels, {launch: [v.get(label) for label in labels] for launch, v in values.items()}


def write_plots(report: dict, out_dir: str) -> list[str]:
    """PNG bar charts of decode tok/s and TPOT per workload (paths written; [] without
    matplotlib or throughput rows)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for key, title, name in (("decode_tok_s", "decode throughput (tok/s)", "throughput.png"),
                             ("tpot_ms", "time per output token (ms)", "tpot.png")):
        labels, by_launch = series(report, key)
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels)), 4.0))
        width = 0.8 / max(1, len(by_launch))
        for i, (launch, vals) in enumerate(by_launch.items()):
            xs = [j + i * width for j, v in enumerate(vals) if v is not None]
            ax.bar(xs, [v for v in vals if v is not None], width, label=launch)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
