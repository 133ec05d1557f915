#!/bin/bash
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 tree3* spec-* tot-*-it* tot-*-batch6 fewshot-4000xb50-g400@16/1/d128"
step ab_base 200 python3 benchmarks/bench_kernels.py --out $W/ab_base --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor --workloads $KW
for t in start end none; do
  DEFT_PDL_TRIGGER=$t step ab_$t 200 python3 benchmarks/bench_kernels.py --out $W/ab_$t --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor --deft-config merge_pdl=true --workloads $KW
done
echo "$(date -u +%T) chain done" >> $W/progress
