#!/bin/bash
# Session 11, hold 4 (no SGLang): deeper K/V pipelining. At num_stages=3 (and 4) Triton gives
# phase 1's K/V one shared buffer and waits for every copy at the top of each block (the slot
# load before the gather takes a pipeline stage); num_stages=5 double-buffers them.
set -f
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
KW="srv8b* fewshot-4000xb??-g??? long-32000x16-g256 fanout-2048x1024-g32 unshared-128x4096 tree3* spec-star* tot-*-batch6 tot-docmerge-tree12* tot-keyword-tree82* mixed* fewshot-4000xb50-g400@16/1/d128"
for c in base "num_stages=5 block_n=32 small_block_n=32" "num_stages=5 block_n=32" "num_stages=5 block_n=32 small_block_n=32 stream_small_items=true" waves=2 "num_stages=5 block_n=32 small_block_n=32 waves=2"; do
  name=$(echo $c | tr ' =' '_-')
  extra=""; [ "$c" != base ] && extra="--deft-config $c"
  [ -d $W/ab_$name ] && name=${name}_2
  step ab_$name 150 python3 benchmarks/bench_kernels.py --server-shapes --time-budget 60 --skip-sglang --skip-flashinfer --skip-floor $extra --out $W/ab_$name --workloads $KW
done
echo "$(date -u +%T) chain done" >> $W/progress
