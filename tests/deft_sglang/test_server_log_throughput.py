"""benchmarks/server_log_throughput.py on synthetic SGLang scheduler logs."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..",
                                                "benchmarks")))
import server_log_throughput as slt  # noqa: E402


def _line(running, tokens, tok_s):
    return (f"[2026-11-26 10:00:00] Decode batch, #running-req: {running}, #token: {tokens}, "
            f"token usage: 0.01, cuda graph: True, gen throughput (token/s): {tok_s:.2f}, "
            f"#queue-req: 0")


def _log(scale):
    """Three batches: 64 requests twice (the KV count drops between them), then 32; the first
    line of each batch includes its prefill (low); a stray 200-request line is too short."""
    return ["server started", _line(200, 9000, 500.0),
            _line(64, 1000, 900.0 * scale), *[_line(64, 2000 + i, (1000.0 + i) * scale)
                                              for i in range(4)],
            _line(64, 1500, 300.0 * scale), *[_line(64, 3000 + i, 500.0 * scale)
                                              for i in range(3)],
            _line(32, 100, 10.0), _line(32, 200, 700.0), _line(32, 300, 800.0)]


def test_batches_split_on_request_count_and_on_kv_drops(tmp_path):
    rows = slt.steady(_log(1.0))
    assert [(r["running"], r["lines"]) for r in rows] == [(64, 5), (64, 4), (32, 3)]
    # each batch's first line (prefill inside its interval) is left out of the median
    assert [r["median_tok_s"] for r in rows] == [1001.5, 500.0, 750.0]


def test_launches_side_by_side(tmp_path, capsys):
    for name, scale in (("stock", 1.0), ("deft", 3.0)):
        (tmp_path / f"{name}.log").write_text("\n".join(_log(scale)))
    out = tmp_path / "t.json"
    assert slt.main([str(tmp_path), "--launches", "stock,deft", "--json", str(out)]) == 0
    table = slt.json.loads(out.read_text())["phases"]
    assert [round(r.get("deft/stock", 0), 3) for r in table] == [3.0, 3.0, 1.0]
    assert "| 1 | 64 | 500 | 1500 | 3.00x |" in capsys.readouterr().out


def test_unmatched_phases_get_no_ratio(tmp_path):
    table = slt.compare({"a": slt.steady(_log(1.0)), "b": slt.steady(_log(1.0)[:-3])})
    assert table[2]["matched"] is False and "b/a" not in table[2]


def test_no_decode_lines_is_an_error(tmp_path):
    (tmp_path / "x.log").write_text("nothing here\n")
    assert slt.main([str(tmp_path)]) == 1
