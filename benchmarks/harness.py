"""Shared benchmark helpers: the one timing helper, environment record, copy bandwidth, writers.

Nothing here touches CUDA at import time.  On a CUDA device the timing helper follows
``triton.testing.do_bench`` (median of CUDA-event times, L2 flushed by a 256 MB write before
every repetition, so each timed call starts cold, as one layer of a real model would) and adds
a head start: the GPU sleeps ~500 µs after each flush, so that the host has queued all of the
call's launches before the GPU reaches the start event.  Without it a method whose launches
take the host longer than the flush takes the GPU (two Triton launches, 60-180 µs on the H100
hosts) is timed partly on host time in some repetitions: session 7's table showed such outliers
of +30-40 µs on small workloads (e.g. spec-medusa t32 at 62.9 µs next to 20.4 for t32 stars),
and with session 7's ~100 µs head start session 8's A/B runs still had 2-4x medians on about
one workload in twenty (p20 20 µs, p80 100-270 µs), on hosts where a call took 130-180 µs.
On CPU (``--cpu-smoke``, ``TRITON_INTERPRET=1``) it falls back to wall-clock medians.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_deft():
    """``deft_sglang.kernels`` if installed, else the repo's ``kernels/`` package directly."""
    try:
        import deft_sglang.kernels as kernels
    except Exception:  # not installed (or its package init failed): use the source tree
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        import kernels  # the same package, by its source directory
    return kernels


def log(msg: str) -> None:
    print(msg, flush=True)


def on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device) -> None:
    if on_cuda(device):
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------- timing
FLUSH_BYTES = 256 << 20     # L2 flush before each repetition (H100 L2: 50 MB)
HEAD_START_CYCLES = 1_000_000  # GPU sleep after the flush: ~500 µs at 1.98 GHz


def _cuda_quantiles(fn, warmup_ms: float, rep_ms: float, quantiles) -> list:
    """CUDA-event ms of ``fn()`` at ``quantiles`` (see the module docstring)."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(5):
        flush.zero_()
        fn()
    finish.record()
    torch.cuda.synchronize()
    estimate_ms = max(begin.elapsed_time(finish) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    begin.record()
    torch.cuda._sleep(HEAD_START_CYCLES)
    finish.record()
    torch.cuda.synchronize()
    reps = max(1, int(rep_ms / (estimate_ms + begin.elapsed_time(finish))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.zero_()
        torch.cuda._sleep(HEAD_START_CYCLES)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in zip(starts, ends))
    return [times[min(len(times) - 1, int(q * len(times)))] for q in quantiles]


def bench(fn, device, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
          cpu_reps: int = 3) -> dict:
    """Median (and 20th/80th percentile) time of ``fn()`` in microseconds.

    CUDA: event times after warm-up, L2 flushed and a GPU head start before each repetition
    (module docstring).  CPU: wall clock over ``cpu_reps`` calls after one warm-up call.
    """
    if on_cuda(device):
        p20, p50, p80 = _cuda_quantiles(fn, warmup_ms, rep_ms, [0.2, 0.5, 0.8])
        return {"median_us": p50 * 1e3, "p20_us": p20 * 1e3, "p80_us": p80 * 1e3}
    fn()
    times = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return {"median_us": statistics.median(times), "p20_us": min(times), "p80_us": max(times)}


def time_host(fn, device, reps: int = 10, warmup: int = 2, sync_each: bool = True) -> dict:
    """Host wall time of ``fn()`` (e.g. planning): median over ``reps`` calls, µs.

    ``host_us`` stops the clock when ``fn`` returns; ``sync_us`` also waits for the device
    (any work ``fn`` queued).  ``sync_each=False`` never waits between calls (launch cost)."""
    for _ in range(warmup):
        fn()
    sync(device)
    host, synced = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if sync_each:
            sync(device)
        t2 = time.perf_counter()
        host.append((t1 - t0) * 1e6)
        synced.append((t2 - t0) * 1e6)
    sync(device)
    return {"host_us": statistics.median(host), "sync_us": statistics.median(synced)}


def copy_bandwidth(device, nbytes: int = 2 << 30) -> dict:
    """Device-to-device copy bandwidth of one large tensor, counting read + write bytes."""
    n = nbytes // 2

    def measure():
        src = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
        dst = torch.empty_like(src)
        return bench(lambda: dst.copy_(src), device, warmup_ms=50, rep_ms=300)

    t = measure()
    if on_cuda(device):
        torch.cuda.empty_cache()
    moved = 2 * n * 2
    return {"tensor_bytes": n * 2, "bytes_moved": moved, "median_us": t["median_us"],
            "GBps": moved / (t["median_us"] * 1e-6) / 1e9}


# ------------------------------------------------------------------------------ environment
def _version(dist: str, module: str | None = None) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except Exception:
        pass
    if module:
        try:
            return getattr(__import__(module), "__version__", "?")
        except Exception as e:  # noqa: BLE001
            return f"unavailable ({type(e).__name__})"
    return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def env_record(device) -> dict:
    """GPU, library versions, command line, date, git state."""
    rec = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "triton": _version("triton", "triton"),
        "flashinfer": _version("flashinfer-python", "flashinfer"),
        "sglang": _version("sglang", "sglang"),
        "deft_sglang": _version("deft-sglang"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_files": len((_git("status", "--porcelain") or "").splitlines()),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    if on_cuda(device):
        props = torch.cuda.get_device_properties(device)
        rec.update(gpu=props.name, sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout
            rec["nvidia_smi"] = smi.strip().splitlines()[0] if smi.strip() else None
        except Exception:
            rec["nvidia_smi"] = None
    else:
        rec["gpu"] = "none (CPU)"
    return rec


# ---------------------------------------------------------------------------------- writers
def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _clean(obj.tolist())
    if isinstance(obj, float):
        return obj
    return str(obj)  # dtypes and anything else JSON can't hold


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=1)
    os.replace(tmp, path)


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(header, key)]; values are preformatted strings or numbers."""
    out = ["| " + " | ".join(h for h, _ in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(row.get(k, "")) for _, k in columns) + " |")
    return "\n".join(out)


def env_markdown(env: dict) -> str:
    keys = ["date", "gpu", "sm_count", "capability", "nvidia_smi", "torch", "cuda_runtime",
            "triton", "flashinfer", "sglang", "deft_sglang", "git_commit", "git_dirty_files",
            "command"]
    return "\n".join(f"- **{k}**: `{env.get(k)}`" for k in keys if k in env)


# ------------------------------------------------------------------------------------ plots
def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except Exception:
        return None


def plot_lines(path: str, series: dict[str, tuple[list, list]], *, title: str, xlabel: str,
               ylabel: str, hline: float | None = None) -> bool:
    """One line per series {label: (xs, ys)}; returns False (no file) without matplotlib."""
    plt = _pyplot()
    if plt is None or not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def plot_bars(path: str, labels: list[str], series: dict[str, list], *, title: str,
              ylabel: str, hline: float | None = None) -> bool:
    """Grouped horizontal-label bar chart, one group per label; False without matplotlib."""
    plt = _pyplot()
    if plt is None or not labels or not series:
        return False
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, min(30.0, 0.32 * len(labels) + 2)), 5.5))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def planner_config(K, overrides):
    """A ``PlannerConfig`` from ``KEY=VALUE`` strings (``PlannerConfig.from_overrides``), or
    None for no overrides."""
    return K.PlannerConfig.from_overrides(overrides) if overrides else None
