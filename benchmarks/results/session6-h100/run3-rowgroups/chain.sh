#!/bin/bash
# Session 6, hold 4: row groups side by side (chunk-major) for wide nodes, swept and in graph form.
set -f
W=$1; mkdir -p $W; cd /tmp/snap; export PYTHONUNBUFFERED=1
GW="srv* fewshot-4000xb50-g40? long-32000x16-g25? tree3-1600x16x1? tot-set128-batch? spec-star-t12? fewshot-4000xb50-g400@16/1/d128 fanout-2048x1024-g3?"
timeout 200 python3 benchmarks/sweep_config.py --out $W/sweep > $W/sweep.log 2>&1; echo "sweep rc=$?"
tail -n 8 $W/sweep.log
for c in "" "reread_min_queries=16 reread_needs_node_in_l2=false reread_group_rows=64" \
         "reread_min_queries=8 reread_needs_node_in_l2=false"; do
  name=graph-$(echo "${c:-default}" | tr ' =' '_-' | cut -c1-60)
  timeout 120 python3 benchmarks/bench_graph.py --out $W/$name --server-shapes --workloads $GW \
    ${c:+--deft-config $c} > $W/$name.log 2>&1; echo "$name rc=$?"
  grep "^workload" $W/$name.log | sed 's/.*workload \([^ ]*\) .*graph µs\/layer \([0-9.]*\).*/\1 \2/' | tr '\n' ';'; echo
done
cd $W && tar czf $OUT/k.tgz .
