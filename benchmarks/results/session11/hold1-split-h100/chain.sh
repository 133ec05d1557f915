#!/bin/bash
# Session 11, hold 1 (no SGLang): phase 1 split by item class, launches side by side on two
# streams (split_exp.py); longer chunks (waves=3, waves=2) DeFT-only A/B.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step split1 240 python3 /tmp/split_exp.py fewshot-4000xb50-g400,fanout-2048x1024-g32,tree3-1600x16x16 $W/split1.json
step split2 200 python3 /tmp/split_exp.py long-32000x16-g256,srv8b-fork-8192x64,tot-docmerge-tree12-it2301,spec-star-t256,fewshot-4000xb20-g400 $W/split2.json
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 tree3* spec-star* tot-*-batch6 mixed*"
for c in base waves=3 waves=2; do
  extra=""; [ $c != base ] && extra="--deft-config $c"
  step ab_$c 150 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 60 --skip-sglang --skip-flashinfer --skip-floor $extra --out $W/ab_$c --workloads $KW
done
echo "$(date -u +%T) chain done" >> $W/progress
