"""Merge variants micro-benchmark (scratch, not committed)."""
import sys, os, json, itertools
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import torch, triton, triton.language as tl
from kernels.merge import launch_merge, _merge_partials_kernel, merge_launch_shape



@triton.jit
def _merge_seq_kernel(partial_out_ptr, partial_lse_ptr, merge_indptr_ptr, merge_slots_ptr, out_ptr,
                      stride_pp, stride_ph, stride_lp, stride_ob, stride_oh, num_heads,
                      HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, STAGES: tl.constexpr,
                      CONTIG: tl.constexpr):
    query = tl.program_id(0)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < num_heads
    begin = tl.load(merge_indptr_ptr + query)
    end = tl.load(merge_indptr_ptr + query + 1)
    offs_d = tl.arange(0, HEAD_DIM)
    m_run = tl.full([BLOCK_H], -float("inf"), tl.float32)
    wsum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for i in tl.range(begin, end, num_stages=STAGES):
        if CONTIG:
            slot = i.to(tl.int64)
        else:
            slot = tl.load(merge_slots_ptr + i).to(tl.int64)
        lse = tl.load(partial_lse_ptr + slot * stride_lp + offs_h, mask=mask_h, other=-float("inf"))
        part = tl.load(partial_out_ptr + slot * stride_pp + offs_h[:, None] * stride_ph
                       + offs_d[None, :], mask=mask_h[:, None], other=0.0).to(tl.float32)
        m_new = tl.maximum(m_run, lse)
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        a = tl.exp2(m_run - m_safe)
        w = tl.exp2(lse - m_safe)
        wsum = wsum * a + w
        acc = acc * a[:, None] + part * w[:, None]
        m_run = m_new
    res = tl.where(wsum[:, None] > 0, acc / wsum[:, None], 0.0)
    tl.store(out_ptr + query.to(tl.int64) * stride_ob + offs_h[:, None] * stride_oh + offs_d[None, :],
             res.to(out_ptr.dtype.element_ty), mask=mask_h[:, None])


def case(nq, npart, H=32, D=128, dev="cuda", contig=False):
    P = nq * npart
    po = torch.randn(P, H, D, device=dev, dtype=torch.bfloat16)
    pl = torch.randn(P, H, device=dev) * 4
    indptr = torch.arange(0, P + 1, npart, device=dev, dtype=torch.int32)
    slots = torch.arange(P, device=dev, dtype=torch.int32) if contig else torch.randperm(P, device=dev).to(torch.int32)
    out = torch.empty(nq, H, D, device=dev, dtype=torch.bfloat16)
    return po, pl, indptr, slots, out


def ref(po, pl, indptr, slots, nq):
    s = slots.long().view(nq, -1)
    lse = pl[s]                     # nq, n, H
    w = torch.softmax(lse * 0.6931471805599453, dim=1)
    return (po[s].float() * w[..., None]).sum(1)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1000


def main():
    rows = []
    cases = [("srv8b-8k", 64, 20), ("tree3", 256, 7), ("spec128", 128, 7), ("fanout", 1024, 3), ("fewshot50", 50, 14), ("bs160x20", 160, 20), ("srv1b", 64, 4)]
    for name, nq, npart in cases:
        for contig in ((False, True) if name == "srv8b-8k" else (False,)):
            po, pl, indptr, slots, out = case(nq, npart, contig=contig)
            r = ref(po, pl, indptr, slots, nq)
            H, D = 32, 128
            def check():
                return float((out.float() - r).abs().max())
            # current kernel, shapes
            for bh, bp, nw in itertools.product((1, 2, 4, 8, 16), (2, 4, 8), (4, 8)):
                if bp * bh * D > 16384:
                    continue
                f = lambda: _merge_partials_kernel[(nq, triton.cdiv(H, bh))](po, pl, indptr, slots, out, po, pl,
                    po.stride(0), po.stride(1), pl.stride(0), out.stride(0), out.stride(1), po.stride(0), po.stride(1), pl.stride(0), H,
                    HEAD_DIM=D, BLOCK_D=D, BLOCK_H=bh, BLOCK_P=bp, EXTRA=False, num_warps=nw)
                f(); err = check(); t = bench(f)
                rows.append(dict(case=name, contig=contig, kernel="cur", bh=bh, bp=bp, nw=nw, us=round(t, 2), err=err))
            for bh, st, nw in itertools.product((1, 2, 4, 8), (1, 2, 3), (1, 2, 4)):
                f = lambda: _merge_seq_kernel[(nq, triton.cdiv(H, bh))](po, pl, indptr, slots, out,
                    po.stride(0), po.stride(1), pl.stride(0), out.stride(0), out.stride(1), H,
                    HEAD_DIM=D, BLOCK_H=bh, STAGES=st, CONTIG=contig, num_warps=nw)
                try:
                    f(); err = check(); t = bench(f)
                except Exception as e:
                    print("fail", bh, st, nw, repr(e)[:200]); continue
                rows.append(dict(case=name, contig=contig, kernel="seq", bh=bh, bp=st, nw=nw, us=round(t, 2), err=err))
            bh0, bp0 = merge_launch_shape(nq, H, D, npart, torch.cuda.get_device_properties(0).multi_processor_count)
            sub = [x for x in rows if x["case"] == name and x["contig"] == contig]
            cur_default = [x for x in sub if x["kernel"] == "cur" and x["bh"] == bh0 and x["bp"] == bp0 and x["nw"] == 4]
            best = sorted(sub, key=lambda x: x["us"])[:6]
            mb = nq * npart * H * D * 2 / 1e6
            print(f"== {name} nq={nq} npart={npart} contig={contig} {mb:.1f} MB; default {cur_default}")
            for b in best:
                print("   ", b, f"{mb / b['us'] * 1e6 / 1e9:.0f} GB/s... ")
            for k in ("cur", "seq"):
                bk = min((x for x in sub if x["kernel"] == k), key=lambda x: x["us"])
                print("   best", k, bk)
    json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "merge_bench.json"), "w"))


main()
