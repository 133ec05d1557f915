#!/bin/bash
# Session 6: Nsight Compute on phase 1 of the 8k x 64 server fork batch (tensor pipes, occupancy).
cd /tmp/snap; mkdir -p $OUT/ncu
for w in srv8b-fork-8192x64 fewshot-4000xb50-g400; do
  timeout 200 ncu --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    -k regex:'_partial_attention_kernel' -s 1 -c 1 python3 benchmarks/ncu_dram.py --workload $w \
    > $OUT/ncu/ncu-$w.txt 2>&1; echo "$w rc=$?"
done
grep -E "Duration|DRAM Throughput|Compute \(SM\)|Registers|Achieved Occupancy|Theoretical Occ|Block Limit|Issue Slots|Tensor|Executed Ipc|One or More Eligible|Grid Size|Stall" $OUT/ncu/*.txt | cut -c1-200 | head -70
