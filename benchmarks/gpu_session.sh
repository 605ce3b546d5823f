#!/usr/bin/env bash
# The GPU figures issue 7 asks for, in one call on a lent GPU machine (15 minutes of device time, 10 per call):
#
#   bash benchmarks/gpu_session.sh            # through the device tool: writes under $OUT
#
# 1. LLaVA-1.5-7B (real configuration, random weights, bf16), 64 fixed new tokens, batch 8 / 32 / 64: operator,
#    transformers.pipeline and the per-image loop (images/s, output tokens/s, agreement);
# 2. the same model with captions of varied length (at most 64 tokens, a probed stop token), batch 32 / 64, 256
#    images: what continuous batching saves where decoding, not prefill, is the work.
# Each step has its own time limit, so a slow first step still leaves the second its turn. Extra arguments go to
# both steps (`--config tiny --device cpu` runs the whole thing on a CPU in about a minute, as a check).
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

# The lent GPU machines have no network to install the package: lay the checkout out as the installed package
# is laid out (setup.py: pipeline/ -> llava_batch/pipeline, ...) with links, and import it from there.
shim=$(mktemp -d)
mkdir "$shim/llava_batch"
for entry in llava_batch/*; do ln -s "$PWD/$entry" "$shim/llava_batch/"; done
for folder in pipeline jobs operators training; do ln -s "$PWD/$folder" "$shim/llava_batch/$folder"; done
export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"

step() {  # step NAME SECONDS ARGS...: one benchmark run, its output in $OUT/NAME.txt and $OUT/NAME.json
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$PYTHON" -m benchmarks.gpu_generation "$@" --json-out "$OUT/$name.json" 2>&1 |
        tee "$OUT/$name.txt"
    local status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || echo "== $name ended with status $status (124: over its time limit)"
    return 0
}

step fixed 280 --families llava --batch-sizes 8 32 64 --repeats 1 "$@"
step varied 260 --families llava --batch-sizes 32 64 --repeats 1 --varied-lengths --min-images 256 "$@"
echo "== results under $OUT"
