"""The embedded demo: a forked prefix tree through the DeFT kernels, checked against the reference.

``python -m deft_sglang.demo`` builds a two-level tree (a long prompt shared by every branch, each
branch forked again), runs DeFT tree attention and the pure-PyTorch reference on the same inputs,
and prints the error and the KV tokens read per layer by per-request decode versus DeFT.  It uses
CUDA when present and the Triton interpreter (small shapes) otherwise.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def build_tree(prompt: int, branches: int, branch_tokens: int, forks: int, fork_tokens: int):
    """Root prompt -> ``branches`` children -> ``forks`` grandchildren each; queries at leaves."""
    parent, tokens = [-1], [prompt]
    for b in range(branches):
        parent.append(0)
        tokens.append(branch_tokens)
        branch = len(parent) - 1
        for _ in range(forks):
            parent.append(branch)
            tokens.append(fork_tokens)
    indptr = [0]
    for t in tokens:
        indptr.append(indptr[-1] + t)
    slots = torch.randperm(indptr[-1] + 1000)[:indptr[-1]].to(torch.int32)
    leaves = [n for n in range(len(parent)) if n not in set(parent)]
    return parent, indptr, slots, leaves


def main(argv=None) -> int:
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from deft_sglang.kernels import plan_tree_attention, tree_attention_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=4000 if on_gpu else 1024)
    parser.add_argument("--branches", type=int, default=16 if on_gpu else 6)
    parser.add_argument("--branch-tokens", type=int, default=200 if on_gpu else 48)
    parser.add_argument("--forks", type=int, default=4 if on_gpu else 2)
    parser.add_argument("--fork-tokens", type=int, default=50 if on_gpu else 16)
    parser.add_argument("--heads", default="32,8" if on_gpu else "8,2", help="Hq,Hkv")
    parser.add_argument("--head-dim", type=int, default=128 if on_gpu else 64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float16
    hq, hkv = (int(x) for x in args.heads.split(","))
    parent, indptr, slots, leaves = build_tree(args.prompt, args.branches, args.branch_tokens,
                                               args.forks, args.fork_tokens)
    num_slots = int(slots.max()) + 1
    q = torch.randn(len(leaves), hq, args.head_dim, dtype=dtype, device=device)
    k = torch.randn(num_slots, hkv, args.head_dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    print(f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU (Triton interpreter)'}, "
          f"{dtype}, heads {hq}/{hkv}, head_dim {args.head_dim}")
    print(f"tree: prompt {args.prompt} -> {args.branches} branches x {args.branch_tokens} -> "
          f"{args.forks} forks x {args.fork_tokens}; {len(leaves)} decoding queries")

    start = time.perf_counter()
    plan = plan_tree_attention(parent, indptr, slots, leaves, num_qo_heads=hq, num_kv_heads=hkv,
                               head_dim=args.head_dim, device=device, num_slots=num_slots)
    plan_ms = (time.perf_counter() - start) * 1e3
    out = plan.run(q, k, v)
    if on_gpu:
        torch.cuda.synchronize()
    ref = tree_attention_reference(q, k, v, parent, indptr, slots, leaves)
    err = (out.double() - ref.double()).abs().max().item()
    stats = plan.stats()
    per_token_bytes = hkv * 2 * args.head_dim * q.element_size()
    rows = [("per-request decode (stock)", stats["per_request_kv_tokens"]),
            ("DeFT, unique KV in the tree", stats["unique_kv_tokens"]),
            ("DeFT, loaded from memory", stats["loaded_kv_tokens"])]
    print(f"\nmax |DeFT - reference| = {err:.2e}   (plan: {plan_ms:.2f} ms host, "
          f"{stats['num_work_items']} work items, {stats['num_partials']} partials)")
    print(f"\n{'KV read per layer':32s} {'tokens/head':>12s} {'MB':>9s}")
    for name, tokens in rows:
        print(f"{name:32s} {tokens:12d} {tokens * per_token_bytes / 1e6:9.2f}")
    print(f"{'DeFT partial results':32s} {'':12s} {stats['partial_bytes'] / 1e6:9.2f}")
    saved = stats["per_request_kv_tokens"] / max(stats["loaded_kv_tokens"], 1)
    print(f"\nDeFT reads {saved:.1f}x fewer KV bytes than per-request decode on this tree.")
    ok = err <= (2e-2 if dtype == torch.bfloat16 else 2e-3)
    print("result: OK" if ok else "result: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
