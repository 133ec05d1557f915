#!/bin/bash
# Session 12, hold 3 (no SGLang; ran on an H200): planner knobs not yet swept, DeFT alone against the default:
# fewer programs per SM (waves=1.5, 1: longer chunks, fewer partials); shorter chunks for small
# trees (min_chunk_blocks=1, 2 against 4; with a lower partial-write floor), whose phase 1 ran
# at 0.4-0.6 waves in hold 2.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star* tot-*-batch6 tot-docmerge-tree12* tot-keyword-tree82* tot-sorting128-tree75* mixed* fewshot-4000xb50-g400@16/1/d128"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 50 --skip-sglang --skip-flashinfer --skip-floor --workloads $KW"
step ab_base 100 $AB --out $W/ab_base
RUNS=""
for cfg in waves=1.5 waves=1 min_chunk_blocks=1 min_chunk_blocks=2 min_chunk_blocks=1,min_chunk_partial_ratio=2; do
  step ab_$cfg 100 $AB --deft-config ${cfg//,/ } --out $W/ab_$cfg
  RUNS="$RUNS $W/ab_$cfg"
done
step compare 30 bash -c "python3 benchmarks/compare_runs.py $W/ab_base $RUNS > $W/sweep_compare.txt 2>&1"
echo "$(date -u +%T) chain done" >> $W/progress
