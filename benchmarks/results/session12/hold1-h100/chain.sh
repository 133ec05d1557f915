#!/bin/bash
# Session 12, hold 1 (SGLang bundles installed): register-prefetched K/V gathers
# (DEFT_REG_PREFETCH=small|all) against the default, DeFT alone; the GPU kernel tests under the
# variant; Nsight Compute stall reasons of the tails (gpu_checks tailprof) and of the fan-out;
# then the kernel table with every peer at this commit.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star* tot-*-batch6 tot-docmerge-tree12* tot-keyword-tree82* mixed* fewshot-4000xb50-g400@16/1/d128"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 50 --skip-sglang --skip-flashinfer --skip-floor --workloads $KW"
step ab_base 100 $AB --out $W/ab_base
step ab_pf-small 100 env DEFT_REG_PREFETCH=small $AB --out $W/ab_pf-small
step ab_pf-all 100 env DEFT_REG_PREFETCH=all $AB --out $W/ab_pf-all
step compare 30 python3 benchmarks/compare_runs.py $W/ab_base $W/ab_pf-small $W/ab_pf-all
# SGLang's and FlashInfer's JIT warm-up beside the profiling steps (timings come after it)
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
step tests_pf-all 200 env DEFT_REG_PREFETCH=all python3 -m pytest -q -p no:cacheprovider -x tests/kernels/test_gpu.py tests/kernels/test_tree_attention.py tests/kernels/test_short_tails.py
bash benchmarks/gpu_checks.sh $W tailprof
for v in none all; do
  step ncu_fanout_$v 120 env DEFT_REG_PREFETCH=$v ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats -k regex:_partial_attention_kernel -s 1 -c 1 python3 benchmarks/ncu_dram.py --workload fanout-2048x1024-g32
done
wait
step kernels 400 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 300 \
  --jit-reserve 60 --workloads 'srv8b*' 'fewshot-4000xb??-g???' long-32000x16-g256 fanout-2048x1024-g32 \
  unshared-128x4096 'tree3*' 'spec-*' 'tot-*-it*' 'tot-*-batch6' 'mixed*' 'fewshot-4000xb50-g400@16/1/d128'
echo "$(date -u +%T) chain done" >> $W/progress
