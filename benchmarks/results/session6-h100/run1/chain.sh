#!/bin/bash
# Session 6 GPU chain (run from the /tmp/snap snapshot): WORK/progress lists the steps.
W=$1; mkdir -p $W; M=/tmp/sglang-0.5.17/models
export PYTHONUNBUFFERED=1
cd /tmp/snap
step() { local name=$1 lim=$2; shift 2; echo "$(date -u +%T) start $name" >> $W/progress
  timeout $lim "$@" > $W/$name.log 2>&1; local rc=$?; echo "$(date -u +%T) done $name rc=$rc" >> $W/progress; }
EXTRA="--sampling-backend pytorch --skip-server-warmup --disable-piecewise-cuda-graph"
# FlashInfer's JIT for bench_kernels' 32/8/d128 peers overlaps the first server's start-up.
(echo "$(date -u +%T) start warm" >> $W/progress; timeout 500 python3 benchmarks/bench_kernels.py --out $W/warm --warm-only --workloads fewshot-4000xb50-g400 > $W/warm.log 2>&1; echo "$(date -u +%T) done warm rc=$?" >> $W/progress) &
step e2e8b 1500 python3 examples/e2e_compare.py --model-path $M/llama3-8b-shape --out $W/e2e8b \
  --launches stock,stock_flashinfer,deft_graph_advance --grid 1024,8192,16384:64 --unshared 256 \
  --extra-server-args "$EXTRA"
wait
step sweep 420 python3 benchmarks/sweep_config.py --out $W/sweep
step kernels 700 python3 benchmarks/bench_kernels.py --out $W/kernels --server-shapes --time-budget 420 \
  --jit-reserve 60 --workloads 'srv8b*' 'fewshot-4000xb??-g???' long-32000x16-g256 fanout-2048x1024-g32 \
  unshared-128x4096 'tree3*' 'spec-*' 'tot-*-it*' 'tot-*-batch6' 'mixed*' 'fewshot-4000xb50-g400@16/1/d128'
step e2e1b 900 python3 examples/e2e_compare.py --model-path $M/llama-1b-shape --out $W/e2e1b \
  --launches stock,deft,deft_graph_advance --grid 1024,8192:64 --unshared 256 --tot '' \
  --extra-server-args "$EXTRA"
echo "$(date -u +%T) all done" >> $W/progress
