#!/bin/bash
# Speculative decoding end to end (issue 8): stock SGLang vs DeFT verifying the draft trees.
#
#   bash benchmarks/spec_e2e.sh MODELS_DIR OUT_DIR [TARGET]      # TARGET default: llama-1b-shape
#
# SGLang's STANDALONE algorithm drafts with a small ordinary model through the EAGLE tree
# machinery (--speculative-eagle-topk > 1: token trees, verified with a tree mask). The draft is
# a dummy-weight 2-layer Llama written here (tiny-llama's shape with the target's vocabulary and
# tokenizer, so its token ids are the target's). Both servers: decode/verify CUDA graphs on,
# dummy weights, greedy. With random weights the draft is rarely right, so accepted lengths stay
# near 1: the run checks that verification through DeFT gives stock's tokens and logprobs, and
# times it; it says nothing about speculative speed-ups on real models.
# Results: OUT_DIR/e2e.json (exit status 1 when the comparison fails).
set -uo pipefail
MODELS=${1:?usage: spec_e2e.sh MODELS_DIR OUT_DIR [TARGET]}
OUT=${2:?usage: spec_e2e.sh MODELS_DIR OUT_DIR [TARGET]}
TARGET=${3:-llama-1b-shape}
export PYTHONUNBUFFERED=1
HERE=$(cd "$(dirname "$0")/.." && pwd)
DRAFT="$OUT/draft-model"
mkdir -p "$DRAFT"
python3 - "$MODELS/tiny-llama" "$MODELS/$TARGET" "$DRAFT" <<'PY'
import json, os, shutil, sys
tiny, target, draft = sys.argv[1:]
config = json.load(open(os.path.join(tiny, "config.json")))
target_config = json.load(open(os.path.join(target, "config.json")))
for key in ("vocab_size", "bos_token_id", "eos_token_id", "max_position_embeddings"):
    if key in target_config:
        config[key] = target_config[key]
json.dump(config, open(os.path.join(draft, "config.json"), "w"), indent=1)
for name in os.listdir(target):
    if name.startswith(("tokenizer", "special_tokens", "generation_config")):
        shutil.copy(os.path.join(target, name), draft)
print("draft model:", draft, {k: config[k] for k in ("vocab_size", "num_hidden_layers")})
PY
# SGLang 0.5.17's EAGLE v2 worker imports its DeepSeek sparse-attention backend, which needs
# deep_gemm, while capturing the draft worker's CUDA graphs. On a host without deep_gemm (the
# offline GPU bundles) stock SGLang crashes there, so both servers then run without CUDA graphs
# (verification through DeFT is then its eager path; the graph path has CPU tests).
GRAPHS=""
if ! python3 -c "import deep_gemm" 2>/dev/null; then
    GRAPHS="--disable-cuda-graph"
    echo "deep_gemm missing: both servers run with --disable-cuda-graph"
fi
SPEC="--speculative-algorithm STANDALONE --speculative-draft-model-path $DRAFT \
--speculative-num-steps 3 --speculative-eagle-topk 4 --speculative-num-draft-tokens 16"
python3 "$HERE/examples/e2e_compare.py" --model-path "$MODELS/$TARGET" --out "$OUT" \
    --launches stock,deft --grid 1024,8192:16,64 --parallel-n 0 --unshared 0 --tot "" \
    --extra-server-args "$SPEC $GRAPHS --sampling-backend pytorch --skip-server-warmup"
