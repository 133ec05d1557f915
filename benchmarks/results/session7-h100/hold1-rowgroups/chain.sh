#!/bin/bash
# Session 7, hold 1: the row-group decision (Nsight DRAM bytes, then the 8B grid vs stock).
W=$1; mkdir -p $W; cd /tmp/snap; export PYTHONUNBUFFERED=1
bash benchmarks/gpu_checks.sh $W rowgroups
