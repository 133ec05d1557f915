#!/bin/bash
# Session 7, hold 2: row groups and the C planner core as defaults: kernel table, DRAM bytes,
# sweep, graph form, server host time, the 1B end to end, then the GPU test suite.
set -f  # patterns below are workload names, not files
W=$1; mkdir -p $W; M=/tmp/sglang-0.5.17/models
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
GW="srv* fewshot-4000xb50-g40? fewshot-4000xb20-g40? long-32000x16-g25? tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? fewshot-4000xb50-g400@16/1/d128 unshared-128x409?"
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
bash benchmarks/gpu_checks.sh $W host e2e1b
wait
step kernels 500 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 300 \
  --jit-reserve 60 --workloads 'srv8b*' 'fewshot-4000xb??-g???' long-32000x16-g256 fanout-2048x1024-g32 \
  unshared-128x4096 'tree3*' 'spec-*' 'tot-*-it*' 'tot-*-batch6' 'mixed*' 'fewshot-4000xb50-g400@16/1/d128'
bash benchmarks/gpu_checks.sh $W dram
step sweep 300 python3 benchmarks/sweep_config.py --out $W/sweep
step graph 300 python3 benchmarks/bench_graph.py --out $W/graph --server-shapes --workloads $GW
bash benchmarks/gpu_checks.sh $W tests
echo "$(date -u +%T) chain done" >> $W/progress
