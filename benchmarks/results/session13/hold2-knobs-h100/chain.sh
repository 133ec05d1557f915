#!/bin/bash
# Session 13, hold 2 (no SGLang): planner knobs on the head configurations (few KV heads: 32/4,
# 16/1 sit 1.7-2.6x the read floor in hold 1), DeFT alone against the default, with 32/8
# workloads beside them to see what a change costs there.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
KW="fewshot-4000xb50-g400* tot-set128-batch6* srv8b* long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star-t256 tot-keyword-tree82*"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 50 --skip-sglang --skip-flashinfer --skip-floor --workloads $KW"
step ab_base 120 $AB --out $W/ab_base
RUNS=""
for cfg in waves=3 waves=4 min_chunk_blocks=2 reread_group_rows=128 reread_group_rows=32 block_m=32 small_block_n=32; do
  step ab_$cfg 120 $AB --deft-config ${cfg//,/ } --out $W/ab_$cfg
  RUNS="$RUNS $W/ab_$cfg"
done
step compare 30 bash -c "python3 benchmarks/compare_runs.py $W/ab_base $RUNS > $W/sweep_compare.txt 2>&1"
echo "$(date -u +%T) chain done" >> $W/progress
