#!/bin/bash
# Session 9, hold 3 (no SGLang): pack partials folded by the merge (no merge-list rewrite),
# planning host time on the GPU host, large row tiles in their own launch: GPU kernel tests,
# DeFT-only A/Bs.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step planprof 200 python3 /tmp/plan_prof.py
step ab_base 200 $AB --out $W/ab_base --workloads $KW
step ab_nopack 200 $AB --out $W/ab_nopack --deft-config pack_tail_tokens=0 --workloads $KW
step ab_split 200 $AB --out $W/ab_split --deft-config split_launches=true --workloads $KW
step ab_split128 200 $AB --out $W/ab_split128 --deft-config split_launches=true block_m=128 large_num_warps=8 reread_group_rows=128 --workloads $KW
step ab_rg128 200 $AB --out $W/ab_rg128 --deft-config reread_group_rows=128 --workloads $KW
step ab_bn128 200 $AB --out $W/ab_bn128 --deft-config block_n=128 num_stages=2 --workloads $KW
step ab_base2 200 $AB --out $W/ab_base2 --workloads $KW
step tests 300 python3 -m pytest tests/kernels -q -p no:cacheprovider -n 8 -x -k "not fuzz"
echo "$(date -u +%T) chain done" >> $W/progress
