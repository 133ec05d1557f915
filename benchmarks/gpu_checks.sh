#!/bin/bash
# The checks that need the GPU host, in one place (after the SGLang bundles and this project are
# installed there, see the developers' notes). Each step writes WORK/<step>.log; results go to
# WORK/<step>/ and WORK/progress lists the finished steps with their exit status:
#
#   setsid nohup bash benchmarks/gpu_checks.sh WORK [STEP ...] >/dev/null 2>&1 &
#
# Steps (default: all, in this order; each bounded by a timeout):
#   tests   the whole pytest suite, GPU-marked tests included
#   graph   benchmarks/bench_graph.py --quick (graph form vs eager, per layer)
#   e2e1b   examples/e2e_compare.py on llama-1b-shape: deft, deft_module, deft_engine vs stock,
#           the examples against each server, fork grid, n=32 sampling, 256 unshared prompts
#   soak    benchmarks/soak.py on llama-1b-shape, stock and deft
#   e2e8b   examples/e2e_compare.py on llama3-8b-shape: stock, stock_flashinfer, deft, full grid,
#           then server_log_throughput.py on its logs (steady-state tok/s)
#           (E2E8B_LAUNCHES overrides the launches, e.g. adding deft_host_advance)
#   fuzz    the kernel fuzz suite with 10,000 cases
#   kernels benchmarks/bench_kernels.py --quick --server-shapes
#   vtests  the tree-verification tests (kernels and backend), GPU-marked ones included
#   tail    the patch, tree-attention and verification test files (with the slowest tests)
#   verify  benchmarks/bench_verify.py (verify attention: DeFT vs SGLang Triton vs FlashInfer)
#   graphab bench_graph.py on the e2e runs' decode batches, default vs split_launches=true
#   tp      benchmarks/tp_e2e.sh with --tp ${TP_SIZE:-2} (needs that many GPUs; TP_GRID overrides
#           its grid)
#   host    benchmarks/bench_host.py (host time per decode step, 256 requests), with the tail
#           advanced inside the graph (the default) and (host-host-advance/) by the host
#   spec    benchmarks/spec_e2e.sh on llama-1b-shape (speculative decoding, stock vs DeFT)
#   srvprof benchmarks/profile_server.py: torch-profiler summary of decode steps in the servers,
#           llama3-8b-shape 8k x 64 (deft, stock_flashinfer, stock) and llama-1b-shape 1k x 64
#           (deft, stock)
#   dram    Nsight Compute DRAM bytes of one step on the 8k x 64 server batch and few-shot b50,
#           the defaults against DRAM_ALT (default: the row-group knobs before session 7, one
#           program walking every row tile of a chunk)
#   profile benchmarks/sweep_config.py (per-kernel time, planner variants), then Nsight Compute
#           sections of the DeFT kernels on three workloads (WORK/profile/ncu-*.txt)
#   heads   the head configurations of issue 3 with every peer: few-shot b50 and the 6-tree set128
#           ToT batch at 32/8 (the same run's reference), 32/32, 32/4, 16/1 and 32/8 with
#           head_dim 64 (the peers' JIT warm-up for every head configuration first)
#   tailprof Nsight Compute stall reasons (WarpStateStats, SourceCounters) of phase 1 with
#           split_launches=true: few-shot b50's two launches (the second one is its 400-token
#           tails, 1.4 TB/s alone in session 11) and unshared 128 x 4k's one (the same kernel at
#           95% of copy bandwidth), measured step only (WORK/tailprof/ncu-*.txt)
set -u
WORK=${1:?usage: gpu_checks.sh WORK [STEP ...]}
shift
STEPS=${*:-tests graph e2e1b soak e2e8b fuzz kernels}
DRAM_ALT=${DRAM_ALT:-reread_min_queries=64,reread_needs_node_in_l2=true,reread_group_rows=128}
MODELS=${DEFT_MODELS:-/tmp/sglang-0.5.17/models}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
cd "$HERE" || exit 1

# pytest-xdist, when importable, spreads the tests over worker processes: on a GPU host the suite
# is bound by Triton compiling each kernel variant, which parallel workers overlap. Offline hosts:
#   here:  pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/wheels \
#              pytest-xdist execnet
#   there: carry .gpu/wheels; python3 -m pip install -q --no-deps --no-index .gpu/wheels/*.whl
PYTEST_WORKERS=()
if python3 -c "import xdist" 2>/dev/null; then
    PYTEST_WORKERS=(-n "${DEFT_TEST_WORKERS:-8}")
fi

run() {  # run STEP TIMEOUT COMMAND...: log, bound, record the exit status
    local step=$1 limit=$2
    shift 2
    echo "$(date -u +%H:%M:%S) start $step" >> "$WORK/progress"
    timeout "$limit" "$@" > "$WORK/$step.log" 2>&1
    local rc=$?  # before any other command (a $(date) would reset $?); 124: timed out
    echo "$(date -u +%H:%M:%S) done $step rc=$rc" >> "$WORK/progress"
}

for step in $STEPS; do
    case $step in
    tests) run tests 1500 python3 -m pytest tests -q -p no:cacheprovider --durations=25 \
               "${PYTEST_WORKERS[@]}" ;;
    srvprof) run srvprof 1500 bash -c "python3 benchmarks/profile_server.py \
                 --model-path '$MODELS/llama3-8b-shape' --out '$WORK/srvprof/8b' \
                 --launches deft,stock_flashinfer,stock --prefix 8192 --width 64; \
                 python3 benchmarks/profile_server.py --model-path '$MODELS/llama-1b-shape' \
                 --out '$WORK/srvprof/1b' --launches deft,stock --prefix 1024 --width 64 \
                 --new-tokens 1024 --delay 1" ;;
    graph) run graph 400 python3 benchmarks/bench_graph.py --out "$WORK/graph" --quick ;;
    e2e1b) run e2e1b 1500 python3 examples/e2e_compare.py --model-path "$MODELS/llama-1b-shape" \
               --out "$WORK/e2e1b" --launches deft,deft_module,deft_engine,stock --examples \
               --grid 1024,8192:64 --unshared 256 ;;
    soak) run soak 1500 python3 benchmarks/soak.py --model-path "$MODELS/llama-1b-shape" \
              --out "$WORK/soak" --launches stock,deft ;;
    e2e8b) run e2e8b 1800 bash -c "python3 examples/e2e_compare.py \
               --model-path '$MODELS/llama3-8b-shape' --out '$WORK/e2e8b' \
               --launches '${E2E8B_LAUNCHES:-stock,stock_flashinfer,deft}' && \
               python3 benchmarks/server_log_throughput.py '$WORK/e2e8b' \
               --launches '${E2E8B_LAUNCHES:-stock,stock_flashinfer,deft}' \
               --json '$WORK/e2e8b/server_log_throughput.json'" ;;
    fuzz) run fuzz 1500 env DEFT_FUZZ_EXAMPLES=10000 DEFT_FUZZ_SHARDS=16 python3 -m pytest \
              tests/kernels/test_fuzz.py -q -p no:cacheprovider --hypothesis-show-statistics \
              "${PYTEST_WORKERS[@]}" ;;
    kernels) run kernels 900 python3 benchmarks/bench_kernels.py --out "$WORK/kernels" --quick \
                 --server-shapes --time-budget 600 ;;
    vtests) run vtests 600 python3 -m pytest tests/kernels/test_verify.py \
                tests/deft_sglang/test_verify.py -q -p no:cacheprovider ;;
    tail) run tail 600 python3 -m pytest tests/patches tests/kernels/test_tree_attention.py \
              tests/kernels/test_verify.py tests/deft_sglang/test_verify.py -q \
              -p no:cacheprovider --durations=15 ;;
    verify) run verify 600 python3 benchmarks/bench_verify.py --out "$WORK/verify" ;;
    graphab) run graphab 600 bash -c "python3 benchmarks/bench_graph.py --out '$WORK/graph-base' \
                 --server-shapes --workloads 'srv*' 'fewshot-4000xb50-g400' 'unshared-128x4096' && \
                 python3 benchmarks/bench_graph.py --out '$WORK/graph-split' --server-shapes \
                 --workloads 'srv*' 'fewshot-4000xb50-g400' 'unshared-128x4096' \
                 --deft-config split_launches=true" ;;
    tp) run tp 1500 bash benchmarks/tp_e2e.sh "$MODELS" "$WORK/tp" "${TP_SIZE:-2}" ;;
    host) run host 600 bash -c "python3 benchmarks/bench_host.py --out '$WORK/host' --profile && \
              python3 benchmarks/bench_host.py --out '$WORK/host-host-advance' \
              --graph-tail-advance host" ;;
    spec) run spec 1200 bash benchmarks/spec_e2e.sh "$MODELS" "$WORK/spec" ;;
    profile) run profile 900 bash -c "python3 benchmarks/sweep_config.py --out '$WORK/profile' && \
                 for w in fewshot-4000xb50-g400 tot-keyword-tree82-it198 \
                          fewshot-4000xb50-g400@16/1/d128; do \
                     timeout 200 ncu --section SpeedOfLight --section Occupancy \
                         --section LaunchStats --section MemoryWorkloadAnalysis \
                         --section WarpStateStats -k regex:'_partial_attention_kernel|_merge_partials' \
                         -s 2 -c 2 python3 benchmarks/ncu_dram.py --workload \$w \
                         > '$WORK/profile/ncu-'\${w//\//_}.txt 2>&1; done" ;;
    heads) run heads 1200 bash -c "python3 benchmarks/bench_kernels.py --out '$WORK/heads-warm' \
               --warm-only && python3 benchmarks/bench_kernels.py --out '$WORK/heads' \
               --time-budget 400 --jit-reserve 60 --workloads fewshot-4000xb50-g400 \
               tot-set128-batch6" ;;
    tailprof) run tailprof 600 bash -c "mkdir -p '$WORK/tailprof'; \
                  for spec in fewshot-4000xb50-g400:2 unshared-128x4096:1; do \
                      w=\${spec%:*}; n=\${spec#*:}; \
                      timeout 250 ncu --section SpeedOfLight --section Occupancy \
                          --section MemoryWorkloadAnalysis --section WarpStateStats \
                          --section SourceCounters -k regex:_partial_attention_kernel \
                          -s \$n -c \$n python3 benchmarks/ncu_dram.py --workload \$w \
                          --deft-config split_launches=true \
                          > '$WORK/tailprof/ncu-'\$w.txt 2>&1; done" ;;
    dram) run dram 900 bash -c "mkdir -p '$WORK/dram'; \
              for w in srv8b-fork-8192x64 fewshot-4000xb50-g400; do \
                  for c in '' '${DRAM_ALT//,/ }'; do \
                      f='$WORK/dram/ncu-'\$w\${c:+-alt}.csv; \
                      ncu --nvtx --nvtx-include 'measured/' --metrics \
                          dram__bytes_read.sum,dram__bytes_write.sum --print-units base \
                          --csv python3 benchmarks/ncu_dram.py --workload \$w \
                          \${c:+--deft-config \$c} > \$f 2>&1; \
                      python3 benchmarks/ncu_dram.py --parse \$f; done; done" ;;
    *) echo "unknown step $step" >> "$WORK/progress" ;;
    esac
done
echo "$(date -u +%H:%M:%S) all done" >> "$WORK/progress"
