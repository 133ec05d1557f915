"""Compile the DeFT kernels for an H100 (sm_90) without a GPU and print, as JSON, what the
checks in ``test_compiled_kernels.py`` look at.  Run in a child process without
``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` gives functions that cannot be
compiled).  Arguments get the 16-byte divisibility that Triton's launcher specializes real
strides and pointers to."""
import json
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deft_sglang.kernels.merge import _merge_partials_kernel
from deft_sglang.kernels.partial_attention import _partial_attention_kernel

H100 = GPUTarget("cuda", 90, 32)
PATTERNS = {"ttgir": ["ttg.async_copy_global_to_local"],
            "ptx": ["cp.async", "wgmma.mma_async", "griddepcontrol.launch_dependents",
                    "griddepcontrol.wait"]}


def compile_h100(kernel, constexprs, pointers, floats=(), num_warps=4, num_stages=3):
    """The compiled kernel for sm_90.  ``pointers`` {name: element type}; every other runtime
    argument an int32 divisible by 16, or an fp32 when named in ``floats``."""
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = f"*{pointers[name]}" if name in pointers else \
            "fp32" if name in floats else "i32"
        if name not in floats:
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=H100,
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def compile_for_h100(kernel, constexprs, pointers, floats=(), num_warps=4, num_stages=3):
    """What the checks look at in ``compile_h100``'s kernel: pattern counts, shared memory,
    registers and spills."""
    compiled = compile_h100(kernel, constexprs, pointers, floats, num_warps, num_stages)
    found = {pattern: len(re.findall(re.escape(pattern), compiled.asm[stage]))
             for stage, patterns in PATTERNS.items() for pattern in patterns}
    return dict(found, shared=compiled.metadata.shared, **registers(compiled.asm["ptx"]))


def registers(ptx: str) -> dict:
    """Registers per thread and spilled bytes, from Triton's own ``ptxas -v`` on the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        report = subprocess.run([getattr(ptxas, "path", ptxas), "-arch=sm_90a", "-v",
                                 source.name, "-o", "/dev/null"],
                                capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores", report)
    return dict(registers=int(re.search(r"Used (\d+) registers", report).group(1)),
                spill_bytes=int(spills.group(1)) if spills else 0)


def phase1(block_m, pdl_trigger=False, persistent=False, pack_m=0):
    pointers = dict(q_ptr="bf16", k_ptr="bf16", v_ptr="bf16", partial_out_ptr="bf16",
                    partial_lse_ptr="fp32", kv_indices_ptr="i32", query_order_ptr="i32",
                    items_ptr="i32", bounds_ptr="i32", work_counters_ptr="i32",
                    pack_info_ptr="i32", tail_indptr_ptr="i32", tail_slots_ptr="i32")
    constexprs = dict(HEAD_DIM=128, BLOCK_D=128, GROUP=4, SMALL_M=16, SMALL_N=64,
                      BLOCK_M=block_m, BLOCK_N=64, DOT_FP32=False, IEEE_FP32=False,
                      PERSISTENT=persistent, INTERLEAVE_HEADS=True, NUM_KV_HEADS=8,
                      PDL_TRIGGER=pdl_trigger, PACK_M=pack_m)
    return compile_for_h100(_partial_attention_kernel, constexprs, pointers,
                            floats=("qk_scale_log2",))


def merge(wait_prior):
    constexprs = dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_H=4, BLOCK_P=8, STAGES=0, EXTRA=False,
                      WAIT_PRIOR=wait_prior, TAIL=True, GROUP=4, PACKED=True)
    pointers = dict(partial_out_ptr="bf16", partial_lse_ptr="fp32", merge_indptr_ptr="i32",
                    merge_slots_ptr="i32", out_ptr="bf16", extra_out_ptr="bf16",
                    extra_lse_ptr="fp32", q_ptr="bf16", k_ptr="bf16", v_ptr="bf16",
                    tail_indptr_ptr="i32", tail_slots_ptr="i32", pack_slots_ptr="i32")
    return compile_for_h100(_merge_partials_kernel, constexprs, pointers,
                            floats=("qk_scale_log2",), num_warps=2)


if __name__ == "__main__":
    print(json.dumps({
        "phase1": phase1(64), "phase1_persistent": phase1(64, persistent=True),
        "phase1_small": phase1(16), "phase1_pdl": phase1(64, pdl_trigger=True),
        "phase1_packs": phase1(64, pack_m=16),
        "phase1_packs_persistent": phase1(64, persistent=True, pack_m=16),
        "phase1_small_packs_persistent": phase1(16, persistent=True, pack_m=16),
        "merge": merge(False), "merge_pdl": merge(True)}))
