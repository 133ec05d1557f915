#!/bin/bash
# Session 8, hold 4: the graph form with and without PDL (same machine), then the 8B server
# against stock Triton and stock FlashInfer (hold 3 ran out of time during it).
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
GW="srv* fewshot-4000xb50-g40? fewshot-4000xb20-g40? long-32000x16-g25? tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? fewshot-4000xb50-g400@16/1/d128 unshared-128x409?"
step graph-plain 200 python3 benchmarks/bench_graph.py --out $W/graph-plain --server-shapes --deft-config merge_pdl=false --workloads $GW
step graph-pdl 200 python3 benchmarks/bench_graph.py --out $W/graph-pdl --server-shapes --workloads $GW
bash benchmarks/gpu_checks.sh $W e2e8b
echo "$(date -u +%T) chain done" >> $W/progress
