#!/bin/bash
# Session 9, hold 5 (no SGLang): the final HEAD (gather_kv_block helper): GPU kernel tests and a
# DeFT-only timing of the table's workloads against hold 4's.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step ab_head 200 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor --out $W/ab_head --workloads $KW
step tests 300 python3 -m pytest tests/kernels -q -p no:cacheprovider -n 8 -x -k "not fuzz"
echo "$(date -u +%T) chain done" >> $W/progress
