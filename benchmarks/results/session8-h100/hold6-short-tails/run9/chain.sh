#!/bin/bash
# Session 8, hold 9 (no SGLang): short tails in the merge as the default (8 tokens), the graph
# form's merge attending them: GPU tests, graph form with and without, DeFT-only table.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
GW="srv* fewshot-4000xb50-g40? long-32000x16-g25? tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? spec-medusa-t6? fewshot-4000xb50-g400@16/1/d128 unshared-128x409?"
step tests 300 python3 -m pytest tests/kernels -q -p no:cacheprovider -n 8 -x -k "not fuzz"
step graph-t0 200 python3 benchmarks/bench_graph.py --out $W/graph-t0 --server-shapes --deft-config merge_tail_tokens=0 --workloads $GW
step graph-t8 200 python3 benchmarks/bench_graph.py --out $W/graph-t8 --server-shapes --workloads $GW
echo "$(date -u +%T) chain done" >> $W/progress
