#!/bin/bash
# Session 11, hold 3 (no SGLang): block streams for the small items (PlannerConfig.stream_small_items)
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
step tests 200 python3 -m pytest -q -p no:cacheprovider -x tests/kernels/test_block_streams.py
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star* tot-*-batch6 tot-docmerge-tree12* tot-keyword-tree82* mixed* fewshot-4000xb50-g400@16/1/d128"
for c in base stream_small_items=true "stream_small_items=true stream_programs_per_sm=4" "stream_small_items=true stream_programs_per_sm=1" "stream_small_items=true pack_tail_tokens=0" "stream_small_items=true waves=2"; do
  name=$(echo $c | tr ' =' '_-')
  extra=""; [ "$c" != base ] && extra="--deft-config $c"
  step ab_$name 150 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 60 --skip-sglang --skip-flashinfer --skip-floor $extra --out $W/ab_$name --workloads $KW
done
step proto 240 python3 /tmp/stream_proto.py fewshot-4000xb50-g400,fanout-2048x1024-g32 $W/proto.json
echo "$(date -u +%T) chain done" >> $W/progress
