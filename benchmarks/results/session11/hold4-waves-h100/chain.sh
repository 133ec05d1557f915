#!/bin/bash
# Session 11, hold 5 (no SGLang): waves=2 against the default (waves=4), eager and graph form.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star* tot-*-batch6 tot-docmerge-tree12* tot-keyword-tree82* mixed* fewshot-4000xb50-g400@16/1/d128"
GW="srv* fewshot-4000xb50-g400 fanout-2048x1024-g32 tree3* tot-*-batch6 spec-star-t256 long-32000x16-g256"
step ab_base 100 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 60 --skip-sglang --skip-flashinfer --skip-floor --out $W/ab_base --workloads $KW
step ab_waves-2 100 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 60 --skip-sglang --skip-flashinfer --skip-floor --deft-config waves=2 --out $W/ab_waves-2 --workloads $KW
step graph_base 100 python3 benchmarks/bench_graph.py --server-shapes --time-budget 50 --out $W/graph_base --workloads $GW
step graph_waves-2 100 python3 benchmarks/bench_graph.py --server-shapes --time-budget 50 --deft-config waves=2 --out $W/graph_waves-2 --workloads $GW
echo "$(date -u +%T) chain done" >> $W/progress
