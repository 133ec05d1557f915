"""Session 11 prototype: phase 1's small items (<= 16 rows) as block streams.  Each program
walks a list of KV blocks that spans several items, one flat pipelined loop, so the loads of
the next item's blocks are in flight while the current one finishes (a program per item drains
its pipeline at every item's end).  Block table per block: kv position, tokens, q_begin,
slot_base, info = first | last << 1 | q_count << 2."""
import sys, json, heapq
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import numpy as np
import torch
import triton
import triton.language as tl
import harness as H
import workloads as WL
import deft_sglang.kernels as K
from deft_sglang.kernels.partial_attention import (launch_partial_attention, online_softmax_block,
                                                   gather_kv_block, LOG2E)
from deft_sglang.kernels.merge import launch_merge
from deft_sglang.kernels.config import SMALL_M, interpreter_active


@triton.jit
def _stream_kernel(q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, blocks_ptr, nb,
                   stream_indptr_ptr, partial_out_ptr, partial_lse_ptr,
                   stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                   stride_pp, stride_ph, stride_lp, qk_scale_log2,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                   NUM_STAGES: tl.constexpr, DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr):
    pid = tl.program_id(0)
    stream, kv_head = pid // NUM_KV_HEADS, pid % NUM_KV_HEADS
    b0 = tl.load(stream_indptr_ptr + stream)
    b1 = tl.load(stream_indptr_ptr + stream + 1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    local = offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in tl.range(b0, b1, num_stages=NUM_STAGES):
        kv_pos = tl.load(blocks_ptr + j)
        n = tl.load(blocks_ptr + nb + j)
        q_begin = tl.load(blocks_ptr + 2 * nb + j)
        slot_base = tl.load(blocks_ptr + 3 * nb + j)
        info = tl.load(blocks_ptr + 4 * nb + j)
        first = (info & 1) != 0
        last = (info & 2) != 0
        mask_m = local < (info >> 2)
        query = tl.load(query_order_ptr + q_begin + local, mask=mask_m, other=0)
        q = tl.load(q_ptr + query[:, None].to(tl.int64) * stride_qb + head[:, None] * stride_qh
                    + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        mask_n = offs_n < n
        k, v = gather_kv_block(k_ptr, v_ptr, kv_indices_ptr + kv_pos, offs_n, mask_n, kv_head,
                               offs_d, mask_d, stride_kn, stride_kh, stride_vn, stride_vh,
                               DOT_FP32)
        m_i = tl.where(first, -float("inf"), m_i)
        l_i = tl.where(first, 0.0, l_i)
        acc = tl.where(first, 0.0, acc)
        m_i, l_i, acc = online_softmax_block(q, k, v, mask_n[None, :], m_i, l_i, acc,
                                             qk_scale_log2, IEEE_FP32, False)
        slot = (slot_base + local).to(tl.int64)
        tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
                 + offs_d[None, :], acc / l_i[:, None],
                 mask=(mask_m & last)[:, None] & mask_d[None, :])
        tl.store(partial_lse_ptr + slot * stride_lp + head, m_i + tl.log2(l_i),
                 mask=mask_m & last)


@triton.jit
def _pick(sel, vec):
    return tl.sum(tl.where(sel, vec, 0), axis=0)


@triton.jit
def _stream_items_kernel(q_ptr, k_ptr, v_ptr, kv_indices_ptr, query_order_ptr, items_ptr,
                         items_stride, first_small, num_small, num_streams,
                         partial_out_ptr, partial_lse_ptr,
                         stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                         stride_pp, stride_ph, stride_lp, qk_scale_log2,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_KV_HEADS: tl.constexpr,
                         NUM_STAGES: tl.constexpr, MAX_ITEMS: tl.constexpr,
                         DOT_FP32: tl.constexpr, IEEE_FP32: tl.constexpr):
    """The block table built in the program: stream s takes the small items of ranks s,
    2S-1-s, 2S+s, ... (a snake over the heaviest-first order); block j of the stream is found
    from the running block counts held in registers."""
    pid = tl.program_id(0)
    stream, kv_head = pid // NUM_KV_HEADS, pid % NUM_KV_HEADS
    offs_i = tl.arange(0, MAX_ITEMS)
    rank = offs_i * num_streams + tl.where(offs_i % 2 == 0, stream, num_streams - 1 - stream)
    valid = rank < num_small
    item = first_small + rank
    kv_begin_v = tl.load(items_ptr + item, mask=valid, other=0)
    kv_len_v = tl.load(items_ptr + items_stride + item, mask=valid, other=0)
    q_begin_v = tl.load(items_ptr + 2 * items_stride + item, mask=valid, other=0)
    q_count_v = tl.load(items_ptr + 3 * items_stride + item, mask=valid, other=0)
    slot_base_v = tl.load(items_ptr + 4 * items_stride + item, mask=valid, other=0)
    nblk_v = (kv_len_v + BLOCK_N - 1) // BLOCK_N
    cum_end = tl.cumsum(nblk_v, axis=0)
    total = tl.sum(nblk_v, axis=0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    local = offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in tl.range(0, total, num_stages=NUM_STAGES):
        idx = tl.sum((cum_end <= j).to(tl.int32), axis=0)
        sel = offs_i == idx
        nblk = _pick(sel, nblk_v)
        b = j - (_pick(sel, cum_end) - nblk)
        kv_pos = _pick(sel, kv_begin_v) + b * BLOCK_N
        n = _pick(sel, kv_len_v) - b * BLOCK_N
        q_begin = _pick(sel, q_begin_v)
        slot_base = _pick(sel, slot_base_v)
        first = b == 0
        last = b == nblk - 1
        mask_m = local < _pick(sel, q_count_v)
        query = tl.load(query_order_ptr + q_begin + local, mask=mask_m, other=0)
        q = tl.load(q_ptr + query[:, None].to(tl.int64) * stride_qb + head[:, None] * stride_qh
                    + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        mask_n = offs_n < n
        k, v = gather_kv_block(k_ptr, v_ptr, kv_indices_ptr + kv_pos, offs_n, mask_n, kv_head,
                               offs_d, mask_d, stride_kn, stride_kh, stride_vn, stride_vh,
                               DOT_FP32)
        m_i = tl.where(first, -float("inf"), m_i)
        l_i = tl.where(first, 0.0, l_i)
        acc = tl.where(first, 0.0, acc)
        m_i, l_i, acc = online_softmax_block(q, k, v, mask_n[None, :], m_i, l_i, acc,
                                             qk_scale_log2, IEEE_FP32, False)
        slot = (slot_base + local).to(tl.int64)
        tl.store(partial_out_ptr + slot[:, None] * stride_pp + head[:, None] * stride_ph
                 + offs_d[None, :], acc / l_i[:, None],
                 mask=(mask_m & last)[:, None] & mask_d[None, :])
        tl.store(partial_lse_ptr + slot * stride_lp + head, m_i + tl.log2(l_i),
                 mask=mask_m & last)


class DeviceStreams:
    def __init__(self, plan, split, num_small, block_n, progs_per_sm, stages, warps, num_sms):
        hkv = plan.num_kv_heads
        self.num_streams = max(1, min(num_small, progs_per_sm * num_sms // hkv))
        self.max_items = max(2, triton.next_power_of_2(-(-num_small // self.num_streams)))
        self.split, self.num_small = split, num_small
        self.nb = num_small
        self.block_n, self.stages, self.warps, self.plan = block_n, stages, warps, plan

    def launch(self, q, k, v, po, pl, scale):
        if self.num_small == 0:
            return
        plan = self.plan
        interpret = interpreter_active()
        hd = plan.head_dim
        _stream_items_kernel[(self.num_streams * plan.num_kv_heads,)](
            q, k, v, plan.kv_indices, plan.query_order, plan.items, plan.items.stride(0),
            self.split, self.num_small, self.num_streams, po, pl,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            po.stride(0), po.stride(1), pl.stride(0), scale * LOG2E,
            HEAD_DIM=hd, BLOCK_D=triton.next_power_of_2(hd), GROUP=q.shape[1] // k.shape[1],
            BLOCK_M=SMALL_M, BLOCK_N=self.block_n, NUM_KV_HEADS=plan.num_kv_heads,
            NUM_STAGES=self.stages, MAX_ITEMS=self.max_items,
            DOT_FP32=interpret and q.dtype != torch.float16,
            IEEE_FP32=q.dtype == torch.float32 or (interpret and q.dtype == torch.bfloat16),
            num_warps=self.warps, num_stages=self.stages)


def build_streams(items: np.ndarray, block_n: int, num_streams: int):
    """items int [5, n] (kv_begin, kv_len, q_begin, q_count, slot_base): LPT-assign the items
    to ``num_streams`` streams by blocks, then expand each stream's items into blocks."""
    kv_begin, kv_len, q_begin, q_count, slot_base = items.astype(np.int64)
    nblk = -(-kv_len // block_n)
    num_streams = max(1, min(num_streams, items.shape[1]))
    heap = [(0, s) for s in range(num_streams)]
    owner = np.empty(items.shape[1], np.int64)
    for i in np.argsort(-nblk, kind="stable"):
        load, s = heapq.heappop(heap)
        owner[i] = s
        heapq.heappush(heap, (load + int(nblk[i]), s))
    order = np.lexsort((np.arange(items.shape[1]), owner))  # by stream, then item order
    counts = nblk[order]
    item = np.repeat(order, counts)
    starts = np.cumsum(counts) - counts
    b = np.arange(item.shape[0]) - np.repeat(starts, counts)
    first = b == 0
    last = b == nblk[item] - 1
    table = np.stack([kv_begin[item] + b * block_n,
                      np.minimum(block_n, kv_len[item] - b * block_n),
                      q_begin[item], slot_base[item],
                      first.astype(np.int64) | (last.astype(np.int64) << 1) | (q_count[item] << 2)])
    per_stream = np.bincount(owner[order].repeat(counts), minlength=num_streams)
    indptr = np.concatenate([[0], np.cumsum(per_stream)])
    return table.astype(np.int32), indptr.astype(np.int32), num_streams


class Streams:
    def __init__(self, plan, items_small_host, block_n, progs_per_sm, stages, warps, device, num_sms):
        hkv = plan.num_kv_heads
        want = max(1, progs_per_sm * num_sms // hkv)
        table, indptr, self.num_streams = build_streams(items_small_host, block_n, want)
        self.table = torch.from_numpy(np.ascontiguousarray(table)).to(device)
        self.indptr = torch.from_numpy(indptr).to(device)
        self.nb = table.shape[1]
        self.block_n, self.stages, self.warps, self.plan = block_n, stages, warps, plan

    def launch(self, q, k, v, po, pl, scale):
        if self.nb == 0:
            return
        plan = self.plan
        interpret = interpreter_active()
        hd = plan.head_dim
        _stream_kernel[(self.num_streams * plan.num_kv_heads,)](
            q, k, v, plan.kv_indices, plan.query_order, self.table, self.nb, self.indptr, po, pl,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            po.stride(0), po.stride(1), pl.stride(0), scale * LOG2E,
            HEAD_DIM=hd, BLOCK_D=triton.next_power_of_2(hd), GROUP=q.shape[1] // k.shape[1],
            BLOCK_M=SMALL_M, BLOCK_N=self.block_n, NUM_KV_HEADS=plan.num_kv_heads,
            NUM_STAGES=self.stages, DOT_FP32=interpret and q.dtype != torch.float16,
            IEEE_FP32=q.dtype == torch.float32 or (interpret and q.dtype == torch.bfloat16),
            num_warps=self.warps, num_stages=self.stages)


dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAMES = sys.argv[1].split(",")
OUT = sys.argv[2]
loads = {w.name: w for w in WL.full_workloads() + WL.server_workloads()}
if dev.type == "cpu":
    loads["cpu-fan"] = WL.Workload("cpu-fan", "x", WL.fanout_tree(64, 12, 150), heads=WL.Heads(8, 2, 32, torch.float32))
    loads["cpu-unshared"] = WL.Workload("cpu-unshared", "x", WL.unshared_tree([50, 130, 7, 64]), heads=WL.Heads(8, 2, 32, torch.float32))
side = torch.cuda.Stream() if dev.type == "cuda" else None
NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count if dev.type == "cuda" else 4


def tensors(w):
    h = w.heads
    g = torch.Generator(device=dev).manual_seed(0)
    mk = lambda *s: torch.randn(*s, device=dev, dtype=h.dtype, generator=g)
    return (mk(w.num_queries, h.num_qo_heads, h.head_dim), mk(w.num_slots, h.num_kv_heads, h.head_dim),
            mk(w.num_slots, h.num_kv_heads, h.head_dim))


def plan_of(w, **cfg):
    h = w.heads
    return K.plan_tree_attention(w.node_parent, w.node_kv_indptr, w.node_kv_indices, w.query_node,
        num_qo_heads=h.num_qo_heads, num_kv_heads=h.num_kv_heads, head_dim=h.head_dim,
        device=dev, num_slots=w.num_slots, config=K.PlannerConfig(**cfg))


def runner(plan, streams, q, k, v, mode):
    split = plan.num_large_items
    po, pl = plan._partials(q.dtype)
    out = torch.empty_like(q)
    scale = 1.0 / plan.head_dim ** 0.5
    cfg = plan.config
    assert plan.tail_packs is None

    def big():
        if split > 0:
            launch_partial_attention(q, k, v, plan.kv_indices, plan.query_order, plan.items[:, :split],
                po, pl, scale, SMALL_M, cfg.small_block_n, plan.block_m, plan.block_n, cfg.num_warps,
                cfg.num_stages, interleave_heads=cfg.interleave_heads)

    def small():
        streams.launch(q, k, v, po, pl, scale)

    def merge():
        tail = None if plan.short_tails is None else (q, k, v, *plan.short_tails, scale * LOG2E)
        launch_merge(po, pl, plan.merge_indptr, plan.merge_slots, out, *plan.merge_shape,
                     stages=cfg.merge_stages_for(q.shape[0] * q.shape[1]), num_warps=cfg.merge_warps,
                     tail=tail)

    def run():
        if mode == "conc" and side is not None:
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            big()
            with torch.cuda.stream(side):
                small()
            main.wait_stream(side)
        elif mode == "stream_only":
            small()
        else:
            big(); small()
        if mode != "stream_only":
            merge()
        return out
    return run


results = []
for name in NAMES:
    w = loads[name].materialize(0)
    q, k, v = tensors(w)
    for label, cfgd in (("default", {}), ("nopack", dict(pack_tail_tokens=0))):
        base = plan_of(w, **cfgd)
        ref = base.run(q, k, v).clone()
        t = H.bench(lambda: base.run(q, k, v), dev, rep_ms=60)
        results.append(dict(workload=name, variant=label, us=t["median_us"]))
        print(f"{name:28s} {label:40s} {t['median_us']:8.1f}", flush=True)
    plan = plan_of(w, split_launches=True, pack_tail_tokens=0)
    split = plan.num_large_items
    items_host = plan.items.cpu().numpy()
    small_items = items_host[:, split:]
    # the existing kernel on the same small items, for reference
    po, pl = plan._partials(q.dtype)
    old_small = lambda: launch_partial_attention(q, k, v, plan.kv_indices, plan.query_order,
        plan.items[:, split:], po, pl, 1.0 / plan.head_dim ** 0.5, SMALL_M, 64, SMALL_M, 64, 4, 3,
        interleave_heads=True)
    t = H.bench(old_small, dev, rep_ms=60)
    print(f"{name:28s} {'small items, item kernel':40s} {t['median_us']:8.1f}  ({small_items.shape[1]} small items, {split} large)", flush=True)
    results.append(dict(workload=name, variant="small_items_item_kernel", us=t["median_us"]))
    for bn, pps, st, wp in ((64, 2, 3, 4), (64, 2, 2, 4), (64, 1, 3, 4), (64, 2, 4, 4), (32, 3, 4, 4),
                            (32, 2, 3, 4), (64, 2, 3, 2), (128, 1, 2, 4), (64, 4, 3, 4)):
        for kind in ("table", "device"):
            lab = f"{kind} bn{bn} pps{pps} st{st} w{wp}"
            try:
                streams = (Streams(plan, small_items, bn, pps, st, wp, dev, NUM_SMS) if kind == "table"
                           else DeviceStreams(plan, split, small_items.shape[1], bn, pps, st, wp, NUM_SMS))
                for mode in ("stream_only", "seq", "conc"):
                    fn = runner(plan, streams, q, k, v, mode)
                    got = fn(); H.sync(dev)
                    err = float((got.float() - ref.float()).abs().max()) if mode != "stream_only" else float("nan")
                    t = H.bench(fn, dev, rep_ms=60)
                    results.append(dict(workload=name, variant=f"{mode} {lab}", us=t["median_us"], err=err,
                                        streams=streams.num_streams, blocks=streams.nb))
                    print(f"{name:28s} {mode + ' ' + lab:46s} {t['median_us']:8.1f}  err {err:.1e}  streams {streams.num_streams} blocks {streams.nb}", flush=True)
            except Exception as e:
                print(f"{name:28s} {lab}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        if dev.type == "cpu":
            break
json.dump(results, open(OUT, "w"), indent=1)
