#!/bin/bash
# Session 13, hold 3 (SGLang bundles installed): the whole kernel table in one command, every
# workload (72, the head configurations and server shapes included) with every peer, after the
# peers' JIT warm-up for every head configuration.
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv > $W/gpu.txt
step warm 500 python3 benchmarks/bench_kernels.py --out $W/warm --server-shapes --warm-only
step kernels 700 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 600
echo "$(date -u +%T) chain done" >> $W/progress
