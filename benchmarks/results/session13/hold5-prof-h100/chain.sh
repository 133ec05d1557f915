#!/bin/bash
# Session 13, hold 5 (no SGLang): Nsight Compute of phase 1 and the merge on few-shot b50 at
# 32/8, 32/4 and 16/1 heads (one measured step each), to check what hold 1's head rows were
# bound by: speed of light, occupancy, launch statistics, memory (L2 and DRAM), stall reasons.
set -f
W=$1; mkdir -p $W/prof
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
for w in fewshot-4000xb50-g400@16/1/d128 fewshot-4000xb50-g400@32/4/d128 fewshot-4000xb50-g400; do
  step prof/ncu-${w//\//_} 120 ncu --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis --section WarpStateStats \
    -k regex:'_partial_attention_kernel|_merge_partials' -s 2 -c 2 \
    python3 benchmarks/ncu_dram.py --workload $w
done
echo "$(date -u +%T) chain done" >> $W/progress
