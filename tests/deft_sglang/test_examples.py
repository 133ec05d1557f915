"""The examples and the e2e comparison logic, against a fake /generate server (CPU only)."""
import importlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


class FakeSGLang(BaseHTTPRequestHandler):
    """Answers /generate like SGLang (deterministic tokens; logprobs when asked)."""

    calls: list = []

    def log_message(self, *args):
        pass

    def _reply(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply({"model_path": "fake-model"} if self.path == "/get_model_info" else {})

    def do_POST(self):
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        FakeSGLang.calls.append((self.path, data))
        if self.path != "/generate":
            return self._reply({})
        prompts = data.get("text") if data.get("text") is not None else data.get("input_ids")
        params = data.get("sampling_params") or {}
        if isinstance(prompts, str):  # the frontend language sends one prompt at a time
            return self._reply(self._result(len(FakeSGLang.calls), params))
        if isinstance(params, list):  # one dict per prompt, as SGLang accepts for a batch
            return self._reply([self._result(i, p) for i, p in enumerate(params)])
        n = int(params.get("n", 1))
        self._reply([self._result(i, params) for i in range(len(prompts) * n)])

    @staticmethod
    def _result(i: int, params: dict) -> dict:
        k = int(params.get("max_new_tokens", 4))
        tokens = [(i + j) % 50 + 3 for j in range(k)]
        meta = {"completion_tokens": k, "cached_tokens": 0,
                "output_token_logprobs": [[-0.1 * (1 + i % 3), t, None] for t in tokens],
                "output_top_logprobs": [[[-0.1, t, None], [-0.9, t + 1, None]] for t in tokens]}
        return {"text": " ".join(map(str, tokens)), "output_ids": tokens, "meta_info": meta}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(EXAMPLES))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeSGLang)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    FakeSGLang.calls = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("module, argv, expect", [
    ("few_shot_fanout", ["--width", "4", "--shots", "3"], "few-shot fan-out"),
    ("best_of_n", ["--n", "5"], "best-of-5"),
    ("parallel_sampling", ["--n", "3", "--prompts", "2"], "2 prompts x n=3 -> 6 samples"),
    ("tree_of_thought", ["--depth", "2", "--breadth", "3", "--beam", "2"], "nested forks"),
])
def test_examples_run_against_a_server(server, capsys, module, argv, expect):
    importlib.import_module(module).main(["--url", server, "--max-new-tokens", "5", *argv])
    out = capsys.readouterr().out
    assert expect in out and "tok/s" in out


def test_tree_of_thought_forks_nested_levels(server, capsys):
    importlib.import_module("tree_of_thought").main(
        ["--url", server, "--depth", "3", "--breadth", "2", "--beam", "2"])
    sizes = [len(data["text"]) for path, data in FakeSGLang.calls if path == "/generate"]
    assert sizes == [1, 2, 4, 4]  # question, then 2 thoughts x kept nodes per level
    prompts = [data["text"] for path, data in FakeSGLang.calls if path == "/generate"]
    assert all(p.startswith(prompts[0][0]) for level in prompts for p in level)
    assert "Step 1." in prompts[2][0] and "Step 2." in prompts[2][0]


def test_engine_args_parsing(server):
    common = importlib.import_module("_common")
    assert common.engine_kwargs(["load_format=dummy", "mem-fraction-static=0.5",
                                 "disable_cuda_graph=true"]) == {
        "load_format": "dummy", "mem_fraction_static": 0.5, "disable_cuda_graph": True}
    with pytest.raises(SystemExit):
        common.engine_kwargs(["oops"])


def test_e2e_metrics(server):
    metrics = importlib.import_module("_e2e_metrics")
    gen = metrics.Generation

    same = gen([5, 6, 7], [-0.1, -0.2, -0.3], [[(-0.1, 5), (-0.5, 9)]] * 3)
    noisy = gen([5, 6, 7], [-0.1004, -0.2, -0.3], same.top2)
    s = metrics.compare([same, same], [same, noisy]).summary()
    assert s["token_equal_pct"] == 100.0 and s["identical_requests"] == 2
    assert s["logprob_abs_diff_before_divergence"]["max"] == pytest.approx(4e-4)
    tie = gen([5, 6, 7], [-0.1, -0.2, -0.3], [[(-0.1, 5), (-0.1003, 8)]] * 3)
    flipped = gen([5, 8, 1], [-0.1004, -0.2, -0.3], tie.top2)
    s = metrics.compare([same, tie], [noisy, flipped]).summary()
    assert s["divergences"] == 1 and s["divergence_swapped_top2"] == 1
    assert s["pass_divergences_are_noise"] and s["token_equal_pct"] == pytest.approx(400 / 6)
    bug = gen([9, 9, 9], [-3.0, -3.0, -3.0], same.top2)
    s = metrics.compare([same], [bug]).summary()
    assert not s["pass_divergences_are_noise"] and not s["pass_token_equality_99"]
    parsed = gen.from_result(FakeSGLang._result(0, {"max_new_tokens": 3}))
    assert parsed.tokens == [3, 4, 5] and parsed.top2[0] == [(-0.1, 3), (-0.9, 4)]


def test_e2e_workloads_against_a_server(server, tmp_path):
    e2e = importlib.import_module("e2e_compare")
    args = e2e.parse_args(["--model-path", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--quick"])
    assert args.grid == [(1024, 16, 64)] and args.launches[0] == "stock"
    prefixes, branches = e2e.correctness_requests(args, 32000)
    assert len(branches) == 200 and all(b[:args.prefix_len] == prefixes[i // args.width]
                                        for i, b in enumerate(branches))
    client = importlib.import_module("_common").HTTPClient(server)
    outputs = e2e.run_correctness(client, args, 32000)
    assert len(outputs) == 200 and len(outputs[0].tokens) == args.new_tokens
    rows = e2e.run_throughput(client, args, 32000)
    assert rows[0]["tokens"] == 16 * 64 and rows[0]["decode_tok_s"] > 0
    with pytest.raises(SystemExit):
        e2e.parse_args(["--model-path", "m", "--out", "o", "--launches", "stock,nope"])


def test_tree_of_thought_dsl_nested_forks(server, capsys):
    pytest.importorskip("sglang")
    importlib.import_module("tree_of_thought").main(
        ["--url", server, "--dsl", "--depth", "2", "--breadth", "2", "--max-new-tokens", "3"])
    gens = [d["text"] for p, d in FakeSGLang.calls
            if p == "/generate" and d["sampling_params"].get("max_new_tokens") == 3]
    assert len(gens) == 6  # 2 thoughts, then 2 below each
    level2 = [t for t in gens if "Step 2." in t]
    assert len(level2) == 4 and all("Step 1." in t for t in level2)
    assert "6 forked thought requests" in capsys.readouterr().out


def test_e2e_main_writes_a_report(server, tmp_path, monkeypatch):
    e2e = importlib.import_module("e2e_compare")
    common = importlib.import_module("_common")
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    monkeypatch.setattr(e2e, "with_client", lambda name, args: (
        common.HTTPClient(server), {"command": f"fake {name}"}, lambda: None))
    out = tmp_path / "out"
    code = e2e.main(["--model-path", str(tmp_path), "--out", str(out), "--quick",
                     "--launches", "stock,deft,stock_flashinfer"])
    report = json.loads((out / "e2e.json").read_text())
    assert code == 0 and set(report["launches"]) == {"stock", "deft", "stock_flashinfer"}
    summary = report["comparisons"]["deft_vs_stock"]
    assert summary["requests"] == 200 and summary["token_equal_pct"] == 100.0
    assert report["launches"]["deft"]["throughput"][0]["width"] == 16
    assert (out / "outputs_deft.json").exists()


def test_e2e_scans_server_logs_for_deft_lines():
    e2e = importlib.import_module("e2e_compare")
    log = ("[x] DeFT tree attention active for decode\n"
           "[x] DeFT shadow check after 20 steps: max |deft - stock| = 0.001 (max |stock| = 1)\n"
           "[y] DeFT shadow check after 40 steps: max |deft - stock| = 0.002 (max |stock| = 1)\n")
    found = e2e.scan_log(log)
    assert found["deft_active_logged"] and not found["deft_graphs_logged"]
    assert found["shadow_check_line"].startswith("DeFT shadow check after 40 steps")
    assert found["host_time_line"] is None


def test_e2e_throughput_rows_cover_fork_parallel_and_unshared(server):
    e2e = importlib.import_module("e2e_compare")
    common = importlib.import_module("_common")
    args = e2e.parse_args(["--model-path", "m", "--out", "o", "--grid", "64,128:2,3",
                           "--parallel-n", "4", "--unshared", "3", "--tot", "keywordToT:2",
                           "--tot-max-new", "5"])
    rows = e2e.run_throughput(common.HTTPClient(server), args, vocab=1000)
    assert [r["kind"] for r in rows] == ["fork"] * 4 + ["n-sample", "unshared", "tot"]
    assert [(r["prefix"], r["width"]) for r in rows[:4]] == [(64, 2), (64, 3), (128, 2), (128, 3)]
    assert rows[4]["tokens"] == 4 * 256 and rows[5]["tokens"] == 3 * 256
    assert all(r["tpot_ms"] > 0 and r["decode_tok_s"] > 0 for r in rows)


def test_e2e_runs_every_example_against_a_server(server, tmp_path):
    e2e = importlib.import_module("e2e_compare")
    results = e2e.run_examples(server, str(tmp_path), "deft")
    assert [r["example"] for r in results] == [m for m, _ in e2e.EXAMPLE_PROGRAMS]
    assert all(r["returncode"] == 0 for r in results), [open(r["log"]).read() for r in results]


def test_tot_program_follows_the_trace(server):
    """Level by level: each expanding node's children in one batch, prompts extending the path
    (parent's prompt + its own output), the trace's token counts as max_new_tokens."""
    tot = importlib.import_module("_tot_program")
    common = importlib.import_module("_common")
    tree = tot.load_trees("keywordToT", 1)[0]
    kids = tot.children_of(tree)
    row = tot.run_tot(common.HTTPClient(server), 1000, "keywordToT", 1)
    gens = [d for p, d in FakeSGLang.calls if p == "/generate"]
    root = gens[0]["input_ids"][0]
    assert len(root) == tree["value"][0]                      # the prompt, prefilled first
    expanding = [n for n in sorted(kids) if n != 0]            # BFS order: one per level
    assert row["levels"] == len(gens) - 1 == 1 + len(expanding)
    assert row["requests"] == sum(len(k) for k in kids.values())
    level1 = gens[1]
    assert [p[:-1] for p in level1["input_ids"]] == [root] * len(kids[0])
    assert [sp["max_new_tokens"] for sp in level1["sampling_params"]] == [
        tree["value"][c] for c in kids[0]]
    # the next level extends the expanding child's own prompt and output tokens
    child = expanding[0]
    i = kids[0].index(child)
    produced = FakeSGLang._result(i, {"max_new_tokens": tree["value"][child]})["output_ids"]
    assert all(p[:-1] == root + [3 + i] + produced for p in gens[2]["input_ids"])
    assert row["tokens"] == sum(tree["value"][n] for k in kids.values() for n in k)


def test_tot_program_rejects_unknown_traces_and_counts(monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(EXAMPLES))
    tot = importlib.import_module("_tot_program")
    with pytest.raises(ValueError, match="unknown ToT trace"):
        tot.load_trees("nopeToT", 1)
    with pytest.raises(ValueError, match="asks for 99 trees"):
        tot.load_trees("keywordToT", 99)


def test_e2e_plots_one_bar_per_launch(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(os.path.abspath(EXAMPLES))
    plots = importlib.import_module("_e2e_plots")
    rows = [{"kind": "fork", "prefix": 1024, "width": 16, "decode_tok_s": 10.0, "tpot_ms": 2.0},
            {"kind": "tot", "trace": "keywordToT", "trees": 6, "decode_tok_s": 5.0}]
    report = {"launches": {"stock": {"throughput": rows}, "deft": {"throughput": rows[:1]}}}
    labels, by_launch = plots.series(report, "decode_tok_s")
    assert labels == ["fork 1024x16", "ToT keywordToT x6"]
    assert by_launch == {"stock": [10.0, 5.0], "deft": [10.0, None]}
    written = plots.write_plots(report, str(tmp_path))
    assert [os.path.basename(p) for p in written] == ["throughput.png", "tpot.png"]
