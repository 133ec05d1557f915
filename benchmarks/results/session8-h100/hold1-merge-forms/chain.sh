#!/bin/bash
# Session 8, hold 1 (no SGLang): GPU tests of the merge forms, DeFT-only A/B of merge forms.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step tests 400 python3 -m pytest tests/kernels/test_fused_merge.py tests/kernels/test_gpu.py tests/kernels/test_static.py -q -p no:cacheprovider -n 8 -x
for cfg in "merge_pdl=false" "merge_pdl=true" "fused_merge=true" ; do
  n=$(echo $cfg | tr '=' '_')
  step ab_$n 200 python3 benchmarks/bench_kernels.py --out $W/ab_$n --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor --deft-config $cfg --workloads $KW
done
echo "$(date -u +%T) chain done" >> $W/progress
