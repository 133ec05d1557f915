#!/bin/bash
# Session 9, hold 2 (no SGLang): 16-row tail packs as the default; packs / shared-node items
# spread among the rest (mix_tail_packs, mix_item_rows): GPU kernel tests, DeFT-only A/Bs,
# graph form.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-* tot-*-it* tot-*-batch6 mixed* fewshot-4000xb50-g400@16/1/d128"
AB="python3 benchmarks/bench_kernels.py --server-shapes --time-budget 150 --skip-sglang --skip-flashinfer --skip-floor"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step ab_base 200 $AB --out $W/ab_base --workloads $KW
step ab_nopack 200 $AB --out $W/ab_nopack --deft-config pack_tail_tokens=0 --workloads $KW
step ab_mixpacks 200 $AB --out $W/ab_mixpacks --deft-config mix_tail_packs=true --workloads $KW
step ab_mixrows 200 $AB --out $W/ab_mixrows --deft-config mix_item_rows=true --workloads $KW
step ab_mixboth 200 $AB --out $W/ab_mixboth --deft-config mix_item_rows=true mix_tail_packs=true --workloads $KW
step ab_rows64mix 200 $AB --out $W/ab_rows64mix --deft-config tail_pack_rows=64 mix_tail_packs=true --workloads $KW
step ab_base2 200 $AB --out $W/ab_base2 --workloads $KW
GW="srv* fewshot-4000xb50-g40? fanout-2048x1024-g32 tree3-1600x16x1? tot-keyword-tree82-it19? tot-set128-batch? spec-star-t12? spec-medusa-t6? unshared-128x409?"
step graph-nopack 200 python3 benchmarks/bench_graph.py --out $W/graph-nopack --server-shapes --deft-config pack_tail_tokens=0 --workloads $GW
step graph-base 200 python3 benchmarks/bench_graph.py --out $W/graph-base --server-shapes --workloads $GW
step graph-mixboth 200 python3 benchmarks/bench_graph.py --out $W/graph-mixboth --server-shapes --deft-config mix_item_rows=true mix_tail_packs=true --workloads $GW
step tests 300 python3 -m pytest tests/kernels -q -p no:cacheprovider -n 8 -x -k "not fuzz"
echo "$(date -u +%T) chain done" >> $W/progress
