#!/bin/bash
# Session 10, hold 1 (no SGLang): one-call planning. Planning host time (one call vs steps), the
# DeFT-only kernel table (plan host time included), the GPU kernel tests.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
lscpu > $W/lscpu.txt; (cc --version; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)") > $W/versions.txt 2>&1
step planprof 300 python3 /tmp/plan_prof.py  # ../plan_prof.py
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
step ab_base 300 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --out $W/ab_base --workloads $KW
step tests 420 python3 -m pytest tests/kernels -q -p no:cacheprovider -n 8 -x -k "not fuzz"
echo "$(date -u +%T) chain done" >> $W/progress
