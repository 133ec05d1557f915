#!/bin/bash
# Session 13, hold 1 (SGLang bundles installed): issue 3's head configurations with every peer
# (gpu_checks.sh heads: the peers' JIT warm-up, then few-shot b50 and the set128 ToT batch at
# 32/8, 32/32, 32/4, 16/1 and 32/8 with head_dim 64).
W=$1; mkdir -p $W
export PYTHONUNBUFFERED=1
cd /tmp/snap
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv > $W/gpu.txt
git -C /tmp/snap log -1 --format=%H > $W/commit.txt 2>/dev/null || true
bash benchmarks/gpu_checks.sh $W heads
echo "$(date -u +%T) chain done" >> $W/progress
