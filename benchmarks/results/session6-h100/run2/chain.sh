#!/bin/bash
# Session 6, second hold: the new defaults (max_floor_over_want=2, blocked merge for small
# batches) against the old ones, then the 8B end to end and the kernel table with them.
set -f  # patterns below are workload names, not files
W=$1; mkdir -p $W; M=/tmp/sglang-0.5.17/models
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
EXTRA="--sampling-backend pytorch --skip-server-warmup --disable-piecewise-cuda-graph"
GW="srv* fewshot-4000xb50-g40? fewshot-4000xb20-g40? long-32000x16-g25? tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? fewshot-4000xb50-g400@16/1/d128 unshared-128x409?"
step graph-new 300 python3 benchmarks/bench_graph.py --out $W/graph-new --server-shapes --workloads $GW
step graph-old 300 python3 benchmarks/bench_graph.py --out $W/graph-old --server-shapes --workloads $GW \
  --deft-config max_floor_over_want=0 merge_blocked_max_rows=0
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
step e2e8b 900 python3 examples/e2e_compare.py --model-path $M/llama3-8b-shape --out $W/e2e8b \
  --launches stock,stock_flashinfer,deft --grid 1024,8192,16384:64 --unshared 0 --parallel-n 0 --tot '' \
  --extra-server-args "$EXTRA"
wait
step kernels 500 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 300 \
  --jit-reserve 60 --workloads 'srv8b*' 'fewshot-4000xb??-g???' long-32000x16-g256 fanout-2048x1024-g32 \
  unshared-128x4096 'tree3*' 'spec-*' 'tot-*-it*' 'tot-*-batch6' 'mixed*' 'fewshot-4000xb50-g400@16/1/d128'
echo "$(date -u +%T) all done" >> $W/progress
