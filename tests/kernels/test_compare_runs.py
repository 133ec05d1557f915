"""benchmarks/compare_runs.py: per-workload ratios of two kernel-table runs, unsteady timings
marked and left out of the steady geomean."""
import json
import os

import pytest

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


@pytest.fixture()
def compare_runs(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import compare_runs as module
    return module


def write_run(path, times):
    os.makedirs(path)
    workloads = [{"name": name, "times": {"deft": {"median_us": med, "p20_us": p20,
                                                   "p80_us": p80}}}
                 for name, (p20, med, p80) in times.items()]
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump({"workloads": workloads}, f)


def test_ratios_and_geomeans(tmp_path, compare_runs, capsys):
    base, other = str(tmp_path / "base"), str(tmp_path / "other")
    write_run(base, {"a": (9, 10, 11), "b": (19, 20, 21), "c": (10, 40, 90)})
    write_run(other, {"a": (4, 5, 6), "b": (39, 40, 41), "c": (10, 10, 10)})
    lines, [(all_, steady, count)] = compare_runs.compare(
        compare_runs.load_times(base, "deft"), [compare_runs.load_times(other, "deft")])
    assert count == 2 and steady == pytest.approx(1.0)  # 0.5 and 2.0; c is unsteady
    assert all_ == pytest.approx((0.5 * 2.0 * 0.25) ** (1 / 3))
    assert lines[2].rstrip().endswith("0.250*")
    compare_runs.main([base, other])
    assert "geomean 0.630 (all), 1.000 (2 steady)" in capsys.readouterr().out
