"""benchmarks/profile_server.py's trace summary on synthetic chrome traces (the server run itself
needs the GPU host)."""
import gzip
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..",
                                                "benchmarks")))
profile_server = pytest.importorskip("profile_server")


def _kernel(name, ts, dur):
    return {"cat": "kernel", "name": name, "ts": ts, "dur": dur}


def _call(name, ts, dur=5.0):
    return {"cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur}


def _three_steps():
    """Graph launches at 0, 1000, 2000, 3000 µs; per step 300 µs attention overlapping 100 µs
    of GEMM, then 200 µs of GEMM; one 400 µs stream sync per step."""
    events = [_call("cudaGraphLaunch", t) for t in (0.0, 1000.0, 2000.0, 3000.0)]
    for step in range(4):  # the fourth step lies past the last launch: outside the window
        t = 1000.0 * step
        events += [_kernel("_partial_attention_kernel", t + 10, 300),
                   _kernel("nvjet_tst_128x64", t + 210, 100),
                   _kernel("nvjet_tst_128x64", t + 400, 200),
                   _call("cudaStreamSynchronize", t + 600, 400)]
    events.append({"cat": "cpu_op", "name": "aten::mm", "ts": 5.0, "dur": 3.0})
    return events


def test_summary_per_step_busy_idle_and_categories():
    s = profile_server.summarize_trace(_three_steps())
    assert s["steps"] == 3
    assert s["wall_ms_per_step"] == pytest.approx(1.0)
    # union per step: [10, 310) + [400, 600) = 500 µs, overlap of the GEMM counted once
    assert s["gpu_busy_ms_per_step"] == pytest.approx(0.5)
    assert s["gpu_idle_pct"] == pytest.approx(50.0)
    assert s["kernel_ms_per_step"] == {"gemm": pytest.approx(0.3),
                                       "deft_attention": pytest.approx(0.3)}
    top = {k["name"]: k for k in s["top_kernels"]}
    assert top["nvjet_tst_128x64"]["calls_per_step"] == 2
    calls = {c["name"]: c for c in s["runtime_calls"]}
    assert calls["cudaStreamSynchronize"]["syncs"] and calls["cudaStreamSynchronize"][
        "us_per_step"] == pytest.approx(400)
    assert not calls["cudaGraphLaunch"]["syncs"]


def test_summary_without_graph_launches_spans_the_kernels():
    events = [_kernel("flashinfer::BatchDecodeWithPagedKVCacheKernel", 0, 50),
              _kernel("other_kernel", 100, 50)]
    s = profile_server.summarize_trace(events)
    assert s["steps"] == 0
    assert s["gpu_busy_ms_per_step"] == pytest.approx(0.1)
    assert s["gpu_idle_pct"] == pytest.approx(33.3, abs=0.1)
    assert s["kernel_ms_per_step"]["flashinfer_attention"] == pytest.approx(0.05)


@pytest.mark.parametrize("name, expected", [
    ("_fwd_kernel_stage1", "triton_attention"), ("_fwd_grouped_kernel_stage1", "triton_attention"),
    ("_merge_partials_kernel", "deft_attention"), ("_merge_sequential_kernel", "deft_attention"),
    ("sm90_xmma_gemm_bf16", "gemm"),
    ("FusedAddRMSNormKernel", "norm_act_rope"), ("elementwise_kernel", "other")])
def test_kernel_categories(name, expected):
    assert profile_server.category(name) == expected


def test_load_trace_reads_gzipped_chrome_traces(tmp_path):
    path = tmp_path / "x.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _three_steps()}, f)
    assert profile_server.load_trace(str(path)) == _three_steps()


def test_markdown_lists_each_launch():
    report = {"workload": "fork", "env": {"date": "d"},
              "launches": {"deft": profile_server.summarize_trace(_three_steps()),
                           "stock": {"error": "boom"}}}
    text = profile_server.markdown(report)
    assert "## deft" in text and "## stock" in text and "_partial_attention_kernel" in text
