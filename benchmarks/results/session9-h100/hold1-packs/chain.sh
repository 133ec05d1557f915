#!/bin/bash
# Session 9, hold 1 (no SGLang): tail packs in phase 1 -- GPU kernel tests, DeFT-only A/Bs of
# pack_tail_tokens / tail_pack_rows / merge_tail_tokens, the graph form with and without packs.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step tests 300 python3 -m pytest tests/kernels/test_short_tails.py tests/kernels/test_gpu.py tests/kernels/test_static.py tests/kernels/test_tree_attention.py -q -p no:cacheprovider -n 8 -x
step ab_nopack 200 $AB --out $W/ab_nopack --deft-config pack_tail_tokens=0 --workloads $KW
step ab_pack64 200 $AB --out $W/ab_pack64 --workloads $KW
step ab_rows16 200 $AB --out $W/ab_rows16 --deft-config tail_pack_rows=16 --workloads $KW
step ab_rows32 200 $AB --out $W/ab_rows32 --deft-config tail_pack_rows=32 --workloads $KW
step ab_merge0 200 $AB --out $W/ab_merge0 --deft-config merge_tail_tokens=0 --workloads $KW
step ab_pack128 200 $AB --out $W/ab_pack128 --deft-config pack_tail_tokens=128 --workloads $KW
step ab_pack32 200 $AB --out $W/ab_pack32 --deft-config pack_tail_tokens=32 --workloads $KW
step ab_m128 200 $AB --out $W/ab_m128 --deft-config block_m=128 num_warps=8 --workloads fanout* tree3* fewshot-4000xb50-g400 srv8b*
step ab_nopack2 200 $AB --out $W/ab_nopack2 --deft-config pack_tail_tokens=0 --workloads $KW
GW="srv* fewshot-4000xb50-g40? fanout-2048x1024-g32 tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? spec-medusa-t6? unshared-128x409?"
step graph-nopack 200 python3 benchmarks/bench_graph.py --out $W/graph-nopack --server-shapes --deft-config pack_tail_tokens=0 --workloads $GW
step graph-pack 200 python3 benchmarks/bench_graph.py --out $W/graph-pack --server-shapes --workloads $GW
echo "$(date -u +%T) chain done" >> $W/progress
