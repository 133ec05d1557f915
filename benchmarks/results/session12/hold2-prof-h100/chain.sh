#!/bin/bash
# Session 12, hold 2 (no SGLang): Nsight Compute of the default kernels on the missed targets,
# stall reasons in detail: phase 1 and the merge of the ToT snapshots, a 3-level tree, the
# fan-out and few-shot b50 (one measured step each; -s skips the warm-up step's launches).
set -f
W=$1; mkdir -p $W/prof
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
for w in tot-keyword-tree82-it198 tot-docmerge-tree12-it2301 tot-sorting128-tree75-it2068 tree3-1600x16x16 fanout-2048x1024-g32 fewshot-4000xb50-g400; do
  step prof/ncu-$w 150 ncu --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section ComputeWorkloadAnalysis --print-details all \
    -k regex:'_partial_attention_kernel|_merge_partials' -s 2 -c 2 \
    python3 benchmarks/ncu_dram.py --workload $w
done
echo "$(date -u +%T) chain done" >> $W/progress
