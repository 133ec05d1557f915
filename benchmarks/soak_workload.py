"""The soak's workload and clients (see ``soak.py``): seeded fork programs and their requests.

A program is one /generate call: a fork (``width`` greedy branches of a shared prompt), a stream
the client drops after a few chunks, a call aborted through /abort_request, the 1024-way fan-out,
the 32k-token context, or the pressure burst (many long generations at once, more KV than the
pool holds: the scheduler must retract requests and recompute them). ``run_workload`` runs them on a thread pool, each bounded by a timeout,
and returns per-program records and the greedy outputs of those that finished.
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import e2e_compare as e2e  # noqa: E402
from _common import HTTPClient  # noqa: E402
from _e2e_metrics import Generation  # noqa: E402

KINDS = ("fork", "stream_disconnect", "abort", "fanout", "long_context", "pressure")
STATUSES = ("ok", "aborted", "disconnected", "error", "skipped")
WIDTHS, WIDTH_WEIGHTS = (1, 2, 3, 4, 6, 8, 12, 16), (30, 20, 12, 12, 8, 8, 5, 5)
N_BASES, N_MIDS = 8, 4


@dataclass
class Program:
    """One /generate call: ``width`` branches, each the prefix levels + its own suffix."""

    pid: str
    kind: str
    parts: list  # (tokens, length used) per prefix level, outermost first; tokens are shared
    suffixes: list  # per branch
    max_new_tokens: int
    abort_after_s: float = 0.0
    chunks_before_close: int = 0

    def prompts(self) -> list:
        prefix = [t for tokens, n in self.parts for t in tokens[:n]]
        return [prefix + s for s in self.suffixes]

    def sampling(self) -> dict:
        return {**e2e.GREEDY, "max_new_tokens": self.max_new_tokens}

    def describe(self) -> dict:
        return {"pid": self.pid, "kind": self.kind, "width": len(self.suffixes),
                "depth": len(self.parts), "splits": any(n < len(t) for t, n in self.parts),
                "prompt_tokens": sum(n for _, n in self.parts) + len(self.suffixes[0]),
                "max_new_tokens": self.max_new_tokens}


def fork_program(rng: random.Random, i: int, bases: list, mids: list, vocab: int) -> Program:
    b = rng.randrange(len(bases))
    depth = rng.choice((1, 2, 3))
    parts = [(bases[b], len(bases[b]))]
    if depth >= 2:
        mid = mids[b][rng.randrange(N_MIDS)]
        parts.append((mid, len(mid)))
    if rng.random() < 0.3:
        # A prompt that stops inside a cached node splits it while other branches decode below.
        tokens = parts[-1][0]
        parts[-1] = (tokens, rng.randrange(16, len(tokens)))
    if depth == 3:
        own = e2e.random_ids(rng, rng.randrange(16, 129), vocab)
        parts.append((own, len(own)))
    kind = {7: "stream_disconnect", 17: "abort"}.get(i % 20, "fork")  # exactly 5% each
    width = rng.choices(WIDTHS, WIDTH_WEIGHTS)[0]
    return Program(f"p{i:05d}", kind, parts, [e2e.random_ids(rng, 4, vocab) for _ in range(width)],
                   rng.randrange(8, 65), abort_after_s=round(rng.uniform(0.02, 0.5), 3),
                   chunks_before_close=rng.randrange(1, 5))


def make_workload(args, vocab: int, max_positions: int) -> list:
    """The soak's programs, a function of the arguments only (every launch gets the same).

    Parameters
    ----------
    args : parsed arguments (``programs``, ``seed``, ``fanout_*``, ``long_context``).
    vocab : token ids are drawn from ``[3, vocab)``.
    max_positions : the model's context; caps the long prompt.

    Returns
    -------
    list of Program: the fork programs, with the fan-out, the pressure burst and the long
    prompt inserted at 1/3, 1/2 and 2/3, so they meet the evictions and retractions the fork
    programs cause.
    """
    rng = random.Random(args.seed)
    bases = [e2e.random_ids(rng, rng.randrange(256, 2049), vocab) for _ in range(N_BASES)]
    mids = [[e2e.random_ids(rng, rng.randrange(32, 257), vocab) for _ in range(N_MIDS)]
            for _ in bases]
    programs = [fork_program(rng, i, bases, mids, vocab) for i in range(args.programs)]
    fan = e2e.random_ids(rng, args.fanout_prefix, vocab)
    programs.insert(len(programs) // 3, Program(
        "fanout", "fanout", [(fan, len(fan))],
        [e2e.random_ids(rng, 4, vocab) for _ in range(args.fanout_width)], 8))
    burst = e2e.random_ids(rng, 32, vocab)
    programs.insert(len(programs) // 2, Program(
        "pressure", "pressure", [(burst, len(burst))],
        [e2e.random_ids(rng, 64, vocab) for _ in range(args.pressure_width)],
        args.pressure_tokens))
    long_len = min(args.long_context, max_positions - 16 - 1)  # room for its 16 new tokens
    programs.insert(2 * len(programs) // 3, Program(
        "long_context", "long_context", [(e2e.random_ids(rng, long_len, vocab), long_len)],
        [[]], 16))
    return programs


def max_positions(model_path: str) -> int:
    with open(os.path.join(model_path, "config.json")) as f:
        return int(json.load(f).get("max_position_embeddings") or 1 << 30)


def send_aborts(url: str, rids: list) -> None:
    for rid in rids:
        try:
            requests.post(url + "/abort_request", json={"rid": rid}, timeout=30)
        except requests.RequestException:
            pass  # what counts is the outcome of the aborted /generate call


def generate(url: str, prog: Program, timeout: float) -> list:
    extra, timer = {}, None
    if prog.kind == "abort":
        extra["rid"] = [f"soak-{prog.pid}-{j}" for j in range(len(prog.suffixes))]
        timer = threading.Timer(prog.abort_after_s, send_aborts, (url, extra["rid"]))
        timer.start()
    client = HTTPClient(url, timeout=timeout)  # a Session per call: they are not thread-safe
    try:
        return client.generate(input_ids=prog.prompts(), sampling_params=prog.sampling(),
                               return_logprob=True, top_logprobs_num=2, **extra)
    finally:
        client.close()
        if timer is not None:
            timer.join()  # no abort may land on the next launch


def stream_and_disconnect(url: str, prog: Program, timeout: float) -> str:
    payload = {"input_ids": prog.prompts(), "sampling_params": prog.sampling(), "stream": True}
    # Leaving the with-block mid-stream closes this call's own connection: SGLang takes it for a
    # client disconnect and aborts the requests.
    with requests.post(url + "/generate", json=payload, stream=True,
                       timeout=(30, timeout)) as resp:
        resp.raise_for_status()
        chunks = 0
        for line in resp.iter_lines():
            if line == b"data: [DONE]":
                return "ok"
            if line.startswith(b'data: {"error"'):
                raise RuntimeError(line[:300].decode(errors="replace"))
            chunks += line.startswith(b"data:")
            if chunks >= prog.chunks_before_close:
                return "disconnected"
    return "ok"


def run_program(url: str, prog: Program, args, deadline: float) -> tuple[dict, dict]:
    """Send one program unless past ``deadline`` (``time.monotonic()``).

    Returns
    -------
    record : ``prog.describe()``, ``status`` (STATUSES), ``message`` if aborted/error, ``seconds``.
    outputs : ``{"pid/branch": Generation}`` if every branch finished (status ok, not streamed).
    """
    record, outputs = {**prog.describe(), "status": "skipped"}, {}
    if time.monotonic() >= deadline:
        return record, outputs
    start = time.perf_counter()
    try:
        if prog.kind == "stream_disconnect":
            record["status"] = stream_and_disconnect(url, prog, args.request_timeout)
        else:
            results = generate(url, prog, args.request_timeout)
            reasons = [(r.get("meta_info") or {}).get("finish_reason") for r in results]
            aborts = [f for f in reasons if isinstance(f, dict) and f.get("type") == "abort"]
            if aborts:
                record.update(status="aborted", message=str(aborts[0].get("message"))[:300])
            else:
                record["status"] = "ok"
                outputs = {f"{prog.pid}/{j:04d}": Generation.from_result(r)
                           for j, r in enumerate(results)}
    except requests.HTTPError as exc:
        text = exc.response.text[:300] if exc.response is not None else ""
        # An abort that lands while the request waits is answered with an HTTP error.
        aborted = prog.kind == "abort" and "abort" in text.lower()
        record.update(status="aborted" if aborted else "error", message=f"{exc}: {text}")
    except Exception as exc:  # a timeout (hang) or a dropped connection (crash)
        record.update(status="error", message=repr(exc)[:300])
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record, outputs


def count(records: list) -> dict:
    """Programs, requests (branches) and programs per status, by kind and in total."""
    table = {}
    for key in (*KINDS, "total"):
        rows = [r for r in records if key in (r["kind"], "total")]
        if rows or key == "total":
            table[key] = {"programs": len(rows), "requests": sum(r["width"] for r in rows),
                          **{s: sum(r["status"] == s for r in rows) for s in STATUSES}}
    return table


def run_workload(url: str, programs: list, args) -> tuple[dict, dict]:
    deadline = time.monotonic() + args.time_limit
    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        done = list(pool.map(lambda p: run_program(url, p, args, deadline), programs))
    records = [r for r, _ in done]
    errors = [r for r in records if r["status"] == "error"]
    return {"wall_s": round(time.perf_counter() - start, 1), "time_limit_s": args.time_limit,
            "time_limit_hit": any(r["status"] == "skipped" for r in records),
            "counts": count(records), "errors": errors[:100],
            "timeouts": sum("Timeout" in r["message"] for r in errors),
            "programs": records}, {k: g for _, out in done for k, g in out.items()}


def workload_summary(programs: list) -> dict:
    info = [p.describe() for p in programs]
    return {"programs": len(info), "requests": sum(d["width"] for d in info),
            "kinds": {k: sum(d["kind"] == k for d in info) for k in KINDS},
            "depths": {n: sum(d["depth"] == n for d in info) for n in (1, 2, 3)},
            "splitting_prompts": sum(d["splits"] for d in info),
            "max_width": max(d["width"] for d in info),
            "max_prompt_tokens": max(d["prompt_tokens"] for d in info)}
