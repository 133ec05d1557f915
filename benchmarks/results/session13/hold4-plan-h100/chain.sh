#!/bin/bash
# Session 13, hold 4 (no SGLang): the planning target alone, tree3 (256 queries, 273 nodes),
# repeated, since hold 3's host planning times were bimodal (~65 and ~120-150 us for like trees
# in neighbouring workloads): five runs as the table runs it, three pinned to one core.
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $W/gpu.txt
lscpu > $W/lscpu.txt 2>&1
B="python3 benchmarks/bench_kernels.py --skip-sglang --skip-flashinfer --skip-floor --time-budget 60 --workloads tree3-1600x16x16 fewshot-4000xb50-g400 tot-sorting128-batch6"
for i in 1 2 3 4 5; do echo "$(date -u +%T) run p$i" >> $W/progress; timeout 120 $B --out $W/p$i > $W/p$i.log 2>&1; done
for i in 1 2 3; do echo "$(date -u +%T) run pin$i" >> $W/progress; timeout 120 taskset -c 3 $B --out $W/pin$i > $W/pin$i.log 2>&1; done
echo "$(date -u +%T) chain done" >> $W/progress
