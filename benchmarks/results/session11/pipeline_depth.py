"""Session 11: how deep Triton pipelines phase 1's K/V gathers, compiled for an H100 (sm_90)
without a GPU (run from the repo root with TRITON_INTERPRET unset).  For each (num_stages,
BLOCK_M, BLOCK_N, SMALL_N): shared memory, registers per thread, and the `num` of the
ttg.async_wait at the top of each K/V loop (0: every copy waited for before the block's math,
so one K/V buffer and no copy in flight during it; 3: the next block's K, V and slot copies
stay in flight)."""
import re
import sys

sys.path.insert(0, "tests/kernels")
import _compile_h100 as C  # noqa: E402

from deft_sglang.kernels.partial_attention import _partial_attention_kernel  # noqa: E402

POINTERS = dict(q_ptr="bf16", k_ptr="bf16", v_ptr="bf16", partial_out_ptr="bf16",
                partial_lse_ptr="fp32", kv_indices_ptr="i32", query_order_ptr="i32",
                items_ptr="i32", bounds_ptr="i32", work_counters_ptr="i32",
                pack_info_ptr="i32", tail_indptr_ptr="i32", tail_slots_ptr="i32")


def compile_one(stages, block_m, block_n, small_n):
    constexprs = dict(HEAD_DIM=128, BLOCK_D=128, GROUP=4, SMALL_M=16, SMALL_N=small_n,
                      BLOCK_M=block_m, BLOCK_N=block_n, DOT_FP32=False, IEEE_FP32=False,
                      PERSISTENT=False, INTERLEAVE_HEADS=True, NUM_KV_HEADS=8,
                      PDL_TRIGGER=False, PACK_M=0)
    compiled = C.compile_h100(_partial_attention_kernel, constexprs, POINTERS,
                              floats=("qk_scale_log2",), num_stages=stages)
    waits = re.findall(r"async_wait %k\S*, %v\S*, %slots\S* \{num = (\d+)", compiled.asm["ttgir"])
    return compiled.metadata.shared, C.registers(compiled.asm["ptx"]), waits


for cfg in [(3, 64, 64, 64), (4, 64, 64, 64), (5, 64, 64, 64), (5, 64, 32, 32), (5, 64, 32, 64),
            (3, 16, 64, 64), (4, 16, 64, 64), (5, 16, 64, 64), (5, 16, 32, 32)]:
    shared, regs, waits = compile_one(*cfg)
    print(f"num_stages={cfg[0]} BLOCK_M={cfg[1]} BLOCK_N={cfg[2]} SMALL_N={cfg[3]}: "
          f"shared {shared} B, {regs['registers']} registers, K/V loop waits num={waits}",
          flush=True)
