#!/bin/bash
# Session 8, hold 6 (no SGLang): short private tails attended in the merge: GPU tests, then
# DeFT-only A/B of merge_tail_tokens.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128 unshared-128x4096"

for t in 0 4 8; do
  step ab_tail$t 200 python3 benchmarks/bench_kernels.py --out $W/ab_tail$t --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor --deft-config merge_tail_tokens=$t --workloads $KW
done
echo "$(date -u +%T) chain done" >> $W/progress
