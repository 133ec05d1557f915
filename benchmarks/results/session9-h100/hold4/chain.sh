#!/bin/bash
# Session 9, hold 4 (with SGLang): tail packs and the C short-tails split as the defaults: the 1B
# server (deft, deft_module, deft_engine vs stock), the kernel table with every peer, the GPU
# test suite, the graph form, planning host time.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
GW="srv* fewshot-4000xb50-g40? fanout-2048x1024-g32 long-32000x16-g25? tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? spec-medusa-t6? fewshot-4000xb50-g400@16/1/d128 unshared-128x409?"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
bash benchmarks/gpu_checks.sh $W e2e1b
wait
step kernels 500 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 400 \
  --jit-reserve 60 --workloads 'srv8b*' 'fewshot-4000xb??-g???' long-32000x16-g256 fanout-2048x1024-g32 \
  unshared-128x4096 'tree3*' 'spec-*' 'tot-*-it*' 'tot-*-batch6' 'mixed*' 'fewshot-4000xb50-g400@16/1/d128'
bash benchmarks/gpu_checks.sh $W tests
step graph 300 python3 benchmarks/bench_graph.py --out $W/graph --server-shapes --workloads $GW
step planprof 200 python3 /tmp/plan_prof.py
echo "$(date -u +%T) chain done" >> $W/progress
