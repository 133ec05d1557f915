#!/bin/bash
# DeFT vs stock SGLang under tensor parallelism, on one multi-GPU host (issue 7). No edits needed:
#
#   bash benchmarks/tp_e2e.sh MODELS_DIR OUT_DIR [TP ...]        # default TP list: 2 4 8
#
# MODELS_DIR holds llama3-8b-shape (../shared/gpu bundles: /tmp/sglang-0.5.17/models). For each
# TP size that fits the host's GPUs: stock (--attention-backend triton) and DeFT
# (--attention-backend deft) servers with --tp N, decode CUDA graphs on, dummy weights; 200 forked
# greedy requests compared token by token, and the few-shot fan-out throughput grid. Results:
# OUT_DIR/tpN/e2e.json (exit status 1 when a comparison fails). NVLink multicast stays off.
# TP_GRID='prefixes:widths' overrides the throughput grid (default 1024,8192:16,64).
set -uo pipefail
MODELS=${1:?usage: tp_e2e.sh MODELS_DIR OUT_DIR [TP ...]}
OUT=${2:?usage: tp_e2e.sh MODELS_DIR OUT_DIR [TP ...]}
shift 2
TPS=${*:-2 4 8}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
GPUS=$(nvidia-smi -L | wc -l)
HERE=$(cd "$(dirname "$0")/.." && pwd)
status=0
for tp in $TPS; do
    if [ "$tp" -gt "$GPUS" ]; then
        echo "tp $tp: skipped ($GPUS GPUs on this host)"
        continue
    fi
    echo "== tp $tp"
    python3 "$HERE/examples/e2e_compare.py" --model-path "$MODELS/llama3-8b-shape" \
        --out "$OUT/tp$tp" --launches stock,deft --grid "${TP_GRID:-1024,8192:16,64}" \
        --parallel-n 0 --unshared 0 --tot "" \
        --extra-server-args "--tp $tp --sampling-backend pytorch --skip-server-warmup" || status=1
done
exit $status
