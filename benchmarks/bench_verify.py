"""Speculative-decoding tree verification, per layer: DeFT's verify form against its peers.

    PYTHONUNBUFFERED=1 python benchmarks/bench_verify.py --out DIR [--quick] [--trees 64 256]
        [--batches paper shared unshared]
    python benchmarks/bench_verify.py --cpu-smoke --out /tmp/vsmoke   # CPU, TRITON_INTERPRET=1

Each request has a committed prefix (a path of the KV forest) and a Medusa draft tree of t tokens
(``data/spec_trees.json``) whose K/V already sit in the pool; draft token i attends to the prefix
and to its tree ancestors and itself.  On the same q/K/V and the same FULL_MASK mask tensor:

* ``deft_verify``: ``plan_tree_verify`` (prefix part planned before the draft exists) + ``run``;
* ``deft_nodes``: every draft token a one-token node (``draft_tree_as_nodes``), plain DeFT;
* ``sglang_triton``: SGLang's ``extend_attention_fwd`` as its Triton backend calls it for
  target verify (prefix page table + the draft K/V as the extend part, custom mask);
* ``flashinfer``: ``BatchPrefillWithPagedKVCacheWrapper`` (page size 1, prefix then draft slots,
  the same mask flattened per request), as SGLang's FlashInfer backend does for target verify.

Every output is checked against the float64 ``tree_verify_reference`` (sampled requests) and
against ``deft_verify`` (all queries).  Writes DIR/results.json (after every case) and
DIR/results.md; exit status 1 if a DeFT output is off or a case failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--quick", action="store_true", help="t = 64 and 256 only, shorter timing")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny shapes on CPU under TRITON_INTERPRET=1 (timings mean nothing)")
    p.add_argument("--batches", nargs="*", choices=list(BATCHES), default=list(BATCHES))
    p.add_argument("--trees", nargs="*", type=int, help="draft tree sizes (default 32 64 128 256)")
    p.add_argument("--skip-sglang", action="store_true")
    p.add_argument("--skip-flashinfer", action="store_true")
    p.add_argument("--rep-ms", type=float, default=None,
                   help="timed milliseconds per method (harness.bench)")
    p.add_argument("--time-budget", type=float, default=420.0,
                   help="seconds after start past which no new case starts (default 420)")
    p.add_argument("--tol", type=float, default=2e-2, help="max abs error vs the reference")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# batch config -> (requests, shared prefix tokens, private tokens per request); the paper's
# setting is one request with a 1016-token prefix.  --cpu-smoke scales them down, with ragged
# unshared lengths so the FULL_MASK offsets differ per request.
BATCHES = {"paper": (1, 0, 1016), "shared": (8, 4000, 200), "unshared": (8, 0, 2000)}
SMOKE_BATCHES = {"paper": (1, 0, 40), "shared": (3, 40, 10), "unshared": (3, 0, (30, 17, 25))}
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402

import baselines as BL  # noqa: E402
import harness as H  # noqa: E402
import workloads as WL  # noqa: E402
from verify_report import COLUMNS, METHODS, add_metrics, table_row, write_markdown  # noqa: E402


# ------------------------------------------------------------------------------------- cases
class Case:
    """One verify step: the committed forest, the requests' prefix nodes, the draft trees."""

    def __init__(self, batch: str, shape: tuple, draft_parent: list, heads: WL.Heads, seed: int):
        num_req, shared, private = shape
        self.batch, self.heads, self.R, self.T = batch, heads, num_req, len(draft_parent)
        self.name = f"{batch}-R{num_req}-t{self.T}"
        self.draft_parent = np.tile(np.asarray(draft_parent, np.int64), (num_req, 1))
        private = np.broadcast_to(np.asarray(private, np.int64), (num_req,))
        committed = (WL.fanout_tree(shared, num_req, int(private[0])) if shared
                     else WL.unshared_tree(private))
        # One extra root holding every draft token: materialize() then scatters the draft slots
        # over the same pool as the committed KV; the node is dropped again below.
        drafts = WL.Tree([-1], [num_req * self.T], [])
        wl = WL.Workload(self.name, batch, WL.Tree.forest([committed, drafts]), heads=heads)
        wl.materialize(seed)
        self.num_slots = wl.num_slots
        self.node_parent = wl.node_parent[:-1]
        self.node_kv_indptr = wl.node_kv_indptr[:-1]
        self.node_kv_indices = wl.node_kv_indices[:self.node_kv_indptr[-1]]
        self.draft_slots = wl.node_kv_indices[self.node_kv_indptr[-1]:].astype(np.int64)
        self.request_node = np.asarray(committed.query_node, np.int64)
        self.query_node = self.request_node  # one "query" per request for BL.flatten_requests
        self.seq_lens = shared + private  # committed tokens per request, drafts excluded
        self.unique_tokens = shared + int(private.sum()) + num_req * self.T  # each token once


def draft_trees(sizes, smoke: bool) -> dict[int, list]:
    """t -> parent list of the Medusa tree of that size; smoke: t = 6 (the 32-tree cut) and 32."""
    K = H.import_deft()
    spec = WL.load_spec_trees()
    if smoke:
        _, parent = K.token_tree_parents(spec["32"])
        # parents precede children, so any prefix of the token list is itself a tree
        return {6: parent[:6], 32: parent}
    return {t: K.token_tree_parents(spec[str(t)])[1] for t in sizes}


def make_inputs(case: Case, device, seed: int) -> dict:
    """q, caches and the FULL_MASK verify mask shared by every method (see kernels/verify.py)."""
    K, h = H.import_deft(), case.heads
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, h.dtype)  # noqa: E731
    tree_mask = torch.from_numpy(K.ancestor_mask(case.draft_parent[0]))
    rows = []
    for r in range(case.R):  # T rows of seq_len + T per request: prefix True, then the tree
        prefix = torch.ones(case.T, int(case.seq_lens[r]), dtype=torch.bool)
        rows.append(torch.cat([prefix, tree_mask], dim=1).reshape(-1))
    seq_lens = torch.from_numpy(case.seq_lens).to(device)
    offsets, strides = K.verify.full_mask_layout(seq_lens, case.T)
    mask_rows = case.T * (seq_lens + case.T)
    return dict(
        q=mk(case.R * case.T, h.num_qo_heads, h.head_dim),
        k=mk(case.num_slots, h.num_kv_heads, h.head_dim),
        v=mk(case.num_slots, h.num_kv_heads, h.head_dim),
        mask=torch.cat(rows).to(device), offsets=offsets, strides=strides, seq_lens=seq_lens,
        mask_indptr=torch.cat([mask_rows.new_zeros(1), torch.cumsum(mask_rows, 0)]),
        draft_slots=torch.from_numpy(case.draft_slots).to(device),
        draft_mask=tree_mask.expand(case.R, case.T, case.T).contiguous().to(device),
        sm_scale=BL.sm_scale_for(h.head_dim))


# ----------------------------------------------------------------------------------- methods
def _deft(case: Case, x: dict, plan_fn, call) -> BL.Prepared:
    """Plan (host time in ``info``), one checked call (shapes, devices; compiles), then
    ``call(plan, out, check=False)`` is what gets timed."""
    h, dev = case.heads, x["q"].device
    kwargs = dict(num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
                  device=dev, num_slots=case.num_slots, kv_elem_bytes=h.elem_bytes)
    plan = plan_fn(**kwargs)
    out = torch.empty_like(x["q"])
    call(plan, out, True)
    info = dict(H.time_host(lambda: plan_fn(**kwargs), dev, reps=3 if dev.type == "cpu" else 10),
                stats=plan.stats())
    return BL.Prepared(lambda: call(plan, out, False), lambda: out, info)


def prepare_deft_verify(case: Case, x: dict) -> BL.Prepared:
    """``plan_tree_verify`` (the prefix part: known before the draft exists) + ``plan.run``
    with the FULL_MASK mask, offsets and strides (no host sync in ``run``)."""
    K = H.import_deft()
    plan_fn = lambda **kw: K.plan_tree_verify(  # noqa: E731
        case.node_parent, case.node_kv_indptr, case.node_kv_indices, case.request_node,
        draft_len=case.T, **kw)
    args = (x["q"], x["k"], x["v"], x["draft_slots"], x["mask"], x["offsets"], x["strides"])
    return _deft(case, x, plan_fn, lambda p, out, check: p.run(
        *args, sm_scale=x["sm_scale"], out=out, check=check))


def prepare_deft_nodes(case: Case, x: dict) -> BL.Prepared:
    """The node form: each draft token a one-token node under its request's prefix node."""
    K = H.import_deft()
    arrays = K.draft_tree_as_nodes(case.node_parent, case.node_kv_indptr, case.node_kv_indices,
                                   case.request_node, case.draft_slots, case.draft_parent)
    plan_fn = lambda **kw: K.plan_tree_attention(*arrays, **kw)  # noqa: E731
    return _deft(case, x, plan_fn, lambda p, out, check: p.run(
        x["q"], x["k"], x["v"], x["sm_scale"], out=out, check=check))


def prepare_sglang(case: Case, x: dict) -> BL.Prepared:
    """``TritonAttnBackend.forward_extend`` in target-verify mode: qo_indptr = arange step T,
    kv_indptr/kv_indices (int32/int64) = committed prefix slots, the draft tokens' K/V as
    k_extend/v_extend (the forward's new K/V, gathered here outside the timing), FULL_MASK
    custom mask with mask_indptr = cumsum T*(seq_len+T), causal=True (a decoder layer: it
    only stops each row tile at its diagonal block; the mask decides), max_extend_len = T,
    unit KV scales, page size 1."""
    try:  # 0.5.17 layout (what TritonAttnBackend imports)
        from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd
    except ImportError:  # older releases
        from sglang.srt.layers.attention.triton_ops.extend_attention import extend_attention_fwd
    dev, T, R = x["q"].device, case.T, case.R
    indptr, indices = BL.flatten_requests(case)  # per request: its committed slots, in order
    kv_indptr = torch.from_numpy(indptr).to(dev)
    kv_indices = torch.from_numpy(indices.astype(np.int64)).to(dev)
    qo_indptr = torch.arange(0, (R + 1) * T, T, dtype=torch.int32, device=dev)
    k_ext, v_ext = x["k"][x["draft_slots"]], x["v"][x["draft_slots"]]
    o = torch.empty_like(x["q"])

    def run():
        extend_attention_fwd(x["q"], k_ext, v_ext, o, x["k"], x["v"], qo_indptr, kv_indptr,
                             kv_indices, x["mask"], True, x["mask_indptr"], T, 1.0, 1.0,
                             x["sm_scale"], logit_cap=0.0, sliding_window_size=-1, sinks=None,
                             window_kv_offsets=None, xai_temperature_len=-1, page_size=1)
        return o

    run()
    return BL.Prepared(run, lambda: o, dict(loaded_kv_tokens=int(kv_indptr[-1]) + R * T))


def prepare_flashinfer(case: Case, x: dict) -> BL.Prepared:
    """``BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2")`` as SGLang's
    FlashInfer backend plans target verify: page size 1, each request's prefix slots then its
    draft slots, ``custom_mask`` = the FULL_MASK tensor (per request T x (seq_len+T), packed by
    ``plan``), q/kv bf16; planned outside the timing."""
    import flashinfer
    dev, T, R, h = x["q"].device, case.T, case.R, case.heads
    indptr, indices = BL.flatten_requests(case)
    drafts = case.draft_slots.reshape(R, T)
    slots = [np.concatenate([indices[indptr[r]:indptr[r + 1]], drafts[r]]) for r in range(R)]
    kv_indptr = torch.tensor(np.cumsum([0] + [len(s) for s in slots]), dtype=torch.int32,
                             device=dev)
    kv_indices = torch.from_numpy(np.concatenate(slots).astype(np.int32)).to(dev)
    qo_indptr = torch.arange(0, (R + 1) * T, T, dtype=torch.int32, device=dev)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(BL._workspace(dev), "NHD",
                                                             backend="fa2")
    wrapper.plan(qo_indptr, kv_indptr, kv_indices, torch.ones(R, dtype=torch.int32, device=dev),
                 h.num_qo_heads, h.num_kv_heads, h.head_dim, 1, custom_mask=x["mask"],
                 sm_scale=x["sm_scale"], q_data_type=h.dtype, kv_data_type=h.dtype)
    kv, o = BL._paged(x["k"], x["v"]), torch.empty_like(x["q"])
    run = lambda: wrapper.run(x["q"], kv, out=o)  # noqa: E731
    run()
    return BL.Prepared(run, lambda: o, dict(loaded_kv_tokens=int(kv_indptr[-1])))


PREPARE = {"deft_verify": prepare_deft_verify, "deft_nodes": prepare_deft_nodes,
           "sglang_triton": prepare_sglang, "flashinfer": prepare_flashinfer}


def reference(case: Case, x: dict, requests) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``tree_verify_reference`` for the given requests: (query rows, outputs)."""
    K, T = H.import_deft(), case.T
    rows = torch.cat([torch.arange(r * T, (r + 1) * T) for r in requests]).to(x["q"].device)
    slots = torch.cat([x["draft_slots"][r * T:(r + 1) * T] for r in requests])
    # q in float64 so the reference output stays float64 (it is returned in q's dtype)
    ref = K.tree_verify_reference(
        x["q"][rows].double(), x["k"], x["v"], case.node_parent, case.node_kv_indptr,
        case.node_kv_indices, case.request_node[list(requests)], slots,
        x["draft_mask"][list(requests)], sm_scale=x["sm_scale"])
    return rows, ref


# -------------------------------------------------------------------------------------- run
class Runner:
    def __init__(self, args, device):
        self.args, self.device, self.cuda = args, device, H.on_cuda(device)
        self.rep_ms = args.rep_ms or (40.0 if args.quick else 100.0)
        self.methods = [m for m in METHODS
                        if not (m == "sglang_triton" and args.skip_sglang)
                        and not (m == "flashinfer" and (args.skip_flashinfer or not self.cuda))]
        self.failed: dict[str, str] = {}  # peer -> first error: a failed JIT is not retried
        self.ok: set = set()  # peers that ran once (a later failure is that case's alone)
        self.not_run = {} if self.cuda else {"flashinfer": "needs CUDA"}

    def time(self, fn) -> dict:
        if not self.cuda:  # interpreter: one call, just to exercise the path (time is noise)
            return {"median_us": H.time_host(fn, self.device, reps=1, warmup=0)["sync_us"]}
        return H.bench(fn, self.device, warmup_ms=25.0, rep_ms=self.rep_ms)

    def run_case(self, case: Case) -> dict:
        """Prepare, check and time every method on one case; a peer's failure is recorded."""
        x = make_inputs(case, self.device, self.args.seed)
        h = case.heads
        kv_bytes = case.unique_tokens * h.num_kv_heads * h.head_dim * 2 * h.elem_bytes
        row = dict(case=case.name, batch=case.batch, t=case.T, R=case.R,
                   prefix_tokens=case.seq_lens.tolist(), unique_kv_tokens=case.unique_tokens,
                   unique_kv_bytes=kv_bytes, times={}, errors={}, check={}, info={})
        requests = range(case.R) if case.R * case.T <= 512 else (0, case.R - 1)
        rows, ref = reference(case, x, requests)
        outputs = {}
        for m in self.methods:
            if m in self.failed:
                row["errors"][m] = "skipped, failed before: " + self.failed[m]
                continue
            try:
                prep = PREPARE[m](case, x)
                H.sync(self.device)
                outputs[m] = prep.output().clone()
                row["check"][f"{m}_vs_reference"] = BL.max_abs_err(outputs[m][rows], ref)
                row["times"][m] = self.time(prep.run)
                row["info"][m] = prep.info
                self.ok.add(m)
                del prep
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {e}"[:400]
                row["errors"][m] = msg
                if m.startswith("deft"):
                    row["errors"][m + "_traceback"] = traceback.format_exc()[-2000:]
                elif m not in self.ok:  # never ran here (likely its JIT): don't retry each case
                    self.failed[m] = msg
                H.sync(self.device)  # raises if the CUDA context is gone (nothing more can run)
        for m in METHODS[1:]:
            if m in outputs and "deft_verify" in outputs:
                row["check"][f"{m}_vs_deft_verify"] = BL.max_abs_err(outputs[m],
                                                                     outputs["deft_verify"])
        add_metrics(row, self.args.tol)
        return row


def cases(args, heads: WL.Heads) -> list[Case]:
    shapes = SMOKE_BATCHES if args.cpu_smoke else BATCHES
    sizes = args.trees or ((64, 256) if args.quick else (32, 64, 128, 256))
    trees = draft_trees(sizes, args.cpu_smoke)
    return [Case(b, shapes[b], parent, heads, args.seed)
            for b in args.batches for parent in trees.values()]


def main(args) -> int:
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu_smoke:
        H.log("no CUDA device: use --cpu-smoke for a CPU check of the harness")
        return 2
    # smoke: fp32, since the interpreter runs SGLang's kernel in fp32/fp16 only
    heads = WL.Heads(4, 2, 32, torch.float32) if args.cpu_smoke else WL.LLAMA3_8B
    K = H.import_deft()
    H.log(f"DeFT kernels from {os.path.dirname(K.__file__)}")
    runner = Runner(args, device)
    results = dict(env=H.env_record(device), args=vars(args), heads=heads.label,
                   dtype=str(heads.dtype), methods=runner.methods, not_run=runner.not_run,
                   cases=[], failed=[], skipped=[])
    json_path = os.path.join(args.out, "results.json")
    todo = cases(args, heads)
    for i, case in enumerate(todo):
        if time.perf_counter() - t_start > args.time_budget:
            results["skipped"] = [c.name for c in todo[i:]]
            H.log(f"time budget spent: skipping {results['skipped']}")
            break
        try:
            row = runner.run_case(case)
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}"
            results["failed"].append(dict(case=case.name, error=msg[:1000],
                                          traceback=traceback.format_exc()[-3000:]))
            H.log(f"{case.name}: FAILED {msg[:300]}")
            if "CUDA" in msg or "illegal memory" in msg:
                break  # the context is unusable
            continue
        finally:
            if runner.cuda:
                torch.cuda.empty_cache()
        results["cases"].append(row)
        t = table_row(row, args.tol)
        H.log(" | ".join(f"{label} {t[key]}" for label, key in COLUMNS))
        for method, error in row["errors"].items():
            if not method.endswith("_traceback"):
                H.log(f"  {method}: {error}")
        H.write_json(json_path, results)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    H.write_json(json_path, results)
    write_markdown(os.path.join(args.out, "results.md"), results, args.tol)
    bad = [r["case"] for r in results["cases"] if not r["deft_ok"]]
    H.log(f"done in {results['wall_s']} s: {args.out}/results.md"
          + (f"; DeFT OUTPUT OFF: {bad}" if bad else ""))
    return 1 if bad or results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
