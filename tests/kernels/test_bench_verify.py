"""benchmarks/bench_verify.py --cpu-smoke end to end (CPU, TRITON_INTERPRET=1): DeFT's verify
form, its node form and SGLang's Triton extend kernel against the float64 reference."""
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
FP32_TOL = 1e-4  # the smoke runs in fp32 (IEEE dots under the interpreter)


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available(),
    reason="a CPU check of the harness; on a GPU host the benchmark itself runs (and there the "
           "Triton 3.6 interpreter trips over the host's numpy: 'only 0-dimensional arrays can "
           "be converted to Python scalars', seen 2026-11-26)")
def test_cpu_smoke_runs_and_matches_reference(tmp_path):
    # The benchmark sets TRITON_INTERPRET itself for --cpu-smoke; set it here too so the child
    # never touches a GPU this host may have.
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "bench_verify.py"), "--cpu-smoke", "--out",
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert not results["failed"] and not results["skipped"]
    cases = results["cases"]
    assert sorted((c["batch"], c["t"]) for c in cases) == sorted(
        (b, t) for b in ("paper", "shared", "unshared") for t in (6, 32))
    sglang = importlib.util.find_spec("sglang") is not None
    for case in cases:
        assert case["deft_ok"], case["case"]
        assert {"deft_verify", "deft_nodes"} <= set(case["times"]), case["errors"]
        checks = case["check"]
        for key in ("deft_verify_vs_reference", "deft_nodes_vs_reference",
                    "deft_nodes_vs_deft_verify"):
            assert checks[key] < FP32_TOL, (case["case"], key, checks[key])
        if sglang:  # the interpreter runs SGLang's extend kernel in fp32: same mask, same answer
            assert checks["sglang_triton_vs_reference"] < FP32_TOL, (case["case"], checks)
        if case["batch"] != "shared":  # nothing shared: every committed and draft token once
            assert case["unique_kv_tokens"] == sum(case["prefix_tokens"]) + case["R"] * case["t"]
    assert "| batch | t | R |" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="in-process CPU run needs the Triton interpreter")
def test_wrong_deft_output_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    bench = importlib.import_module("bench_verify")
    nodes = bench.PREPARE["deft_nodes"]

    def corrupted(case, x):
        prep = nodes(case, x)
        prep.output()[0, 0, 0] += 1.0
        return prep

    monkeypatch.setitem(bench.PREPARE, "deft_nodes", corrupted)
    args = bench.parse_args(["--cpu-smoke", "--out", str(tmp_path), "--batches", "paper",
                             "--skip-sglang"])
    assert bench.main(args) == 1
    with open(tmp_path / "results.json") as f:
        cases = json.load(f)["cases"]
    assert cases and not any(c["deft_ok"] for c in cases)
