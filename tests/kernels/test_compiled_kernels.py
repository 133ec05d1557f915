"""What the Triton compiler makes of the kernels for an H100 (sm_90), checked on any host (the
compile needs no GPU; ``_compile_h100.py`` runs it in a child process).  Guards what the
performance rests on: phase 1's K/V gathers are asynchronous copies (issued a block ahead; at
the default ``num_stages=3`` Triton gives them one buffer and waits for them before the block's
math, so it is the two programs per SM that overlap loads with math: double-buffering them at
``num_stages=5`` measured no faster, ``results/session11/pipeline_depth.txt``), the 64-row
tile's dots are Hopper warpgroup MMAs, two programs fit on one SM, and the PDL instructions are
where the merge launch needs them and nowhere else."""
import json
import os
import subprocess
import sys

import pytest
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
SM90_SHARED_BYTES = 227 * 1024  # usable shared memory per SM on Hopper


@pytest.fixture(scope="module")
def compiled():
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_compile_h100.py")], env=env,
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(HERE)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("form", ["phase1", "phase1_persistent", "phase1_packs",
                                  "phase1_packs_persistent"])
def test_phase1_gathers_are_pipelined_and_two_programs_fit_an_sm(compiled, form):
    kernel = compiled[form]
    # K and V of both row tiles (and of the tail packs' tile)
    assert kernel["ttg.async_copy_global_to_local"] >= (6 if "packs" in form else 4)
    assert kernel["cp.async"] > 0
    assert kernel["wgmma.mma_async"] > 0  # the 64-row tile on Hopper's tensor cores
    assert 2 * kernel["shared"] <= SM90_SHARED_BYTES
    # 2 programs of 4 warps per SM: 256 registers a thread at most, and none spilled (64-row
    # tail packs in the persistent kernel spilled 16 bytes and cost 7% in graphs, session 9)
    assert kernel["registers"] <= 256 and kernel["spill_bytes"] == 0
    assert kernel["griddepcontrol.launch_dependents"] == 0  # no PDL unless asked


def test_small_tile_only_kernel_pipelines_too(compiled):
    small = compiled["phase1_small"]  # plans without a shared node compile the 16-row tile alone
    assert small["ttg.async_copy_global_to_local"] >= 2
    assert small["shared"] <= compiled["phase1"]["shared"]
    assert small["registers"] < compiled["phase1"]["registers"] and small["spill_bytes"] == 0


def test_16_row_tail_packs_cost_the_small_kernel_no_registers(compiled):
    # the graph form runs the packs in its small-tile launch (kernels.static)
    packs = compiled["phase1_small_packs_persistent"]
    assert packs["registers"] == compiled["phase1_small"]["registers"]
    assert packs["spill_bytes"] == 0 and packs["ttg.async_copy_global_to_local"] >= 3


def test_pdl_instructions(compiled):
    assert compiled["phase1_pdl"]["griddepcontrol.launch_dependents"] >= 1
    assert compiled["merge_pdl"]["griddepcontrol.wait"] == 1
    assert compiled["merge"]["griddepcontrol.wait"] == 0
