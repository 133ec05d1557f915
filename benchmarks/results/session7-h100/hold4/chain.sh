#!/bin/bash
# Session 7, hold 4: final defaults (row groups, C planner, merge launched): GPU test suite,
# planning host time, phase-1 registers with/without the fused merge, the kernel table.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
step planprof 120 python3 /tmp/plan_prof.py
step tests 700 python3 -m pytest tests -q -p no:cacheprovider -n 8 --durations=10
wait
step kernels 500 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 300 --jit-reserve 60 --workloads $KW
echo "$(date -u +%T) chain done" >> $W/progress
