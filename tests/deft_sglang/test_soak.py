"""benchmarks/soak.py: its workload, and whole soaks against test_examples' fake server (CPU)."""
import importlib
import json
import os
import time

import pytest

from . import test_examples
from .test_examples import FakeSGLang, server  # noqa: F401  (server: the fixture, reused)

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


class FakeSoak(FakeSGLang):
    """FakeSGLang plus what the soak uses (streaming, rids and /abort_request, /v1/loads), and two
    faults for the launch under test: ``shift`` (wrong tokens) and ``leak`` (KV left in use)."""

    shift = leak = served = 0
    aborted: set = set()

    def do_GET(self):
        if not self.path.startswith("/v1/loads"):
            return super().do_GET()
        used = FakeSoak.leak if FakeSoak.served else 0
        self._reply({"loads": [{"num_used_tokens": used, "token_usage": used / 1e4,
                                "num_running_reqs": 0, "num_waiting_reqs": 0}]})

    def do_POST(self):
        if self.path not in ("/generate", "/abort_request"):
            return super().do_POST()
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeSoak.calls.append((self.path, data))
        if self.path == "/abort_request":
            FakeSoak.aborted.add(data["rid"])
            return self._reply({})
        params = data["sampling_params"]
        if data.get("stream"):
            return self._stream(int(params["max_new_tokens"]))
        if data.get("rid"):
            time.sleep(1.0)  # longer than the soak's abort delay (<= 0.5 s): it lands mid-request
        out = [self._result(i, params) for i in range(len(data["input_ids"]))]
        for j, result in enumerate(out):
            meta = result["meta_info"]
            meta["output_token_logprobs"] = [[lp, t + FakeSoak.shift, None]
                                             for lp, t, _ in meta["output_token_logprobs"]]
            if (data.get("rid") or [None] * len(out))[j] in FakeSoak.aborted:
                meta["finish_reason"] = {"type": "abort", "message": "Abort in waiting queue"}
        FakeSoak.served += 1
        self._reply(out)

    def _stream(self, tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for j in range(tokens):
                self.wfile.write(b'data: {"text": "%d", "index": 0}\n\n' % j)
                self.wfile.flush()
                time.sleep(0.002)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client hung up mid-stream, as the soak's disconnects do
            pass


@pytest.fixture
def fake(monkeypatch, request):
    """test_examples' server fixture, serving FakeSoak; yields (soak module, url)."""
    monkeypatch.setattr(test_examples, "FakeSGLang", FakeSoak)
    # The soak opens connections from many threads at once: a deeper listen backlog than 5.
    monkeypatch.setattr(test_examples.ThreadingHTTPServer, "request_queue_size", 128)
    url = request.getfixturevalue("server")
    FakeSoak.aborted, FakeSoak.shift, FakeSoak.leak = set(), 0, 0
    monkeypatch.syspath_prepend(BENCHMARKS)
    yield importlib.import_module("soak"), url


def model_dir(tmp_path, max_positions=131072):
    (tmp_path / "config.json").write_text(json.dumps(
        {"vocab_size": 1000, "max_position_embeddings": max_positions}))
    return str(tmp_path)


def no_server(monkeypatch, soak, url, faults=None):
    """Replace the server start (as test_examples replaces with_client); ``faults``:
    launch name -> (token shift, leaked KV tokens) for that launch."""
    def start(name, args):
        FakeSoak.shift, FakeSoak.leak = (faults or {}).get(name, (0, 0))
        FakeSoak.served = 0
        return url, {"command": f"fake {name}"}, lambda: True, lambda: None
    monkeypatch.setattr(soak, "start_launch", start)


SMALL = ["--programs", "40", "--concurrency", "8", "--fanout-width", "16", "--fanout-prefix", "64",
         "--long-context", "600", "--pressure-width", "12", "--pressure-tokens", "20",
         "--drain-timeout", "2"]


def test_workload_is_deterministic_with_the_required_mix(fake, tmp_path):
    soak, _ = fake
    args = soak.parse_args(["--model-path", model_dir(tmp_path), "--out", str(tmp_path / "o")])
    assert args.programs == 1000 and "--max-total-tokens 60000" in args.extra_server_args
    programs = soak.make_workload(args, 1000, 131072)
    again = soak.make_workload(args, 1000, 131072)
    assert [(p.describe(), p.prompts()) for p in programs if p.kind != "fanout"] == \
        [(p.describe(), p.prompts()) for p in again if p.kind != "fanout"]
    summary = soak.workload_summary(programs)
    assert summary["kinds"] == {"fork": 900, "stream_disconnect": 50, "abort": 50, "fanout": 1,
                                "long_context": 1, "pressure": 1}
    burst = next(p for p in programs if p.kind == "pressure")
    assert len(burst.prompts()) == 256 and burst.max_new_tokens == 400
    assert 256 * (96 + 400) > 2 * 60000  # twice the default pool: retractions must happen
    assert all(summary["depths"][d] > 200 for d in (1, 2, 3))
    assert 100 < summary["splitting_prompts"] < 500
    fanout, long = (next(p for p in programs if p.kind == k) for k in ("fanout", "long_context"))
    assert len(fanout.prompts()) == 1024 and fanout.describe()["prompt_tokens"] == 2048 + 4
    assert len({tuple(p) for p in fanout.prompts()}) == 1024  # distinct branches
    assert len(long.prompts()[0]) == 32000 and 300 < programs.index(fanout) < 400
    forks = [p.describe() for p in programs[:100] if p.kind == "fork"]
    assert {d["width"] for d in forks} <= set(range(1, 17)) and \
        sum(d["width"] for d in forks) / len(forks) < 5
    # Programs on one base share its token list: their prompts start alike.
    by_base = {}
    for p in programs[:200]:
        by_base.setdefault(id(p.parts[0][0]), []).append(p.prompts()[0][:16])
    assert len(by_base) == 8 and all(len({tuple(x) for x in v}) == 1 for v in by_base.values())
    assert all(0.02 <= p.abort_after_s <= 0.5 and 1 <= p.chunks_before_close <= 4
               for p in programs if p.kind in ("fork", "abort", "stream_disconnect"))
    capped = soak.make_workload(args, 1000, 4096)
    assert len(next(p for p in capped if p.kind == "long_context").prompts()[0]) == 4096 - 17
    seed1 = soak.parse_args(["--model-path", "m", "--out", "o", "--seed", "1"])
    other = soak.make_workload(seed1, 1000, 131072)
    assert other[0].prompts() != programs[0].prompts()


def test_soak_against_a_fake_server_passes_with_counts(fake, tmp_path, monkeypatch):
    soak, url = fake
    no_server(monkeypatch, soak, url)
    out = tmp_path / "out"
    code = soak.main(["--model-path", model_dir(tmp_path), "--out", str(out), *SMALL])
    report = json.loads((out / "soak.json").read_text())
    assert code == 0 and report["pass"] and set(report["launches"]) == {"stock", "deft"}
    for name in ("stock", "deft"):
        counts = report["launches"][name]["counts"]
        assert counts["fork"]["ok"] == counts["fork"]["programs"] == 36
        assert counts["stream_disconnect"]["disconnected"] == 2
        assert counts["abort"]["aborted"] == 2 and counts["fanout"]["requests"] == 16
        assert counts["long_context"]["ok"] == 1 and counts["total"]["programs"] == 43
        assert counts["pressure"]["ok"] == 1 and counts["pressure"]["requests"] == 12
        assert counts["total"]["error"] == counts["total"]["skipped"] == 0
        rec = json.loads((out / f"soak_{name}.json").read_text())
        assert len(rec["programs"]) == 43 and rec["leak"]["pass"] and rec["alive"]
    aborts = [d["rid"] for path, d in FakeSoak.calls if path == "/abort_request"]
    assert len(aborts) == 2 * sum(r["width"] for r in rec["programs"] if r["kind"] == "abort")
    comparison = report["comparisons"]["deft_vs_stock"]
    assert comparison["pass"] and comparison["token_equal_pct"] == 100.0
    assert comparison["programs"] == 36 + 3  # fork programs, fan-out, long prompt, burst
    md = (out / "soak.md").read_text()
    assert "SGLang soak: PASS" in md and "| deft | stream_disconnect | 2 |" in md
    assert "| deft_vs_stock | 39 |" in md
    # deft alone, compared with the stock outputs of the run above (a run per launch)
    code = soak.main(["--model-path", model_dir(tmp_path), "--out", str(tmp_path / "deft"),
                      "--launches", "deft", "--stock-outputs", str(out / "outputs_stock.json"),
                      *SMALL])
    again = json.loads((tmp_path / "deft" / "soak.json").read_text())
    assert code == 0 and again["comparisons"]["deft_vs_stock"] == comparison


@pytest.mark.parametrize("faults, problem", [
    ({"deft": (7, 0)}, None),  # wrong tokens: the comparison fails
    ({"deft": (0, 5)}, "KV not back to idle: 5 tokens"),
])
def test_soak_fails_on_wrong_tokens_or_leaked_kv(fake, tmp_path, monkeypatch, faults, problem):
    soak, url = fake
    no_server(monkeypatch, soak, url, faults)
    out = tmp_path / "out"
    code = soak.main(["--model-path", model_dir(tmp_path), "--out", str(out), *SMALL])
    report = json.loads((out / "soak.json").read_text())
    assert code == 1 and not report["pass"] and report["launches"]["stock"]["pass"]
    comparison = report["comparisons"]["deft_vs_stock"]
    if problem is None:
        assert not comparison["pass"] and comparison["token_equal_pct"] == 0.0
        assert report["launches"]["deft"]["pass"]
    else:
        assert comparison["pass"] and report["launches"]["deft"]["problems"] == [problem]
    assert "SGLang soak: FAIL" in (out / "soak.md").read_text()


def test_soak_time_limit_and_failed_start(fake, tmp_path, monkeypatch):
    soak, url = fake
    no_server(monkeypatch, soak, url)
    out = tmp_path / "out"
    code = soak.main(["--model-path", model_dir(tmp_path), "--out", str(out), "--launches",
                      "stock", "--time-limit", "0", *SMALL])
    rec = json.loads((out / "soak_stock.json").read_text())
    assert code == 0 and rec["time_limit_hit"] and rec["counts"]["total"]["skipped"] == 43
    monkeypatch.setattr(soak, "start_launch", lambda name, args: 1 / 0)
    assert soak.main(["--model-path", model_dir(tmp_path), "--out", str(out), *SMALL]) == 1
    report = json.loads((out / "soak.json").read_text())
    assert report["launches"]["deft"]["problems"][0].startswith("server did not start")
    with pytest.raises(SystemExit):
        soak.parse_args(["--model-path", "m", "--out", "o", "--launches", "stock,deft_engine"])
