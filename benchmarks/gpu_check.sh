#!/usr/bin/env bash
# The GPU path, proven in one run (issue 18): every check that needs CUDA, in under 8 minutes on
# one GPU, into one results file. Run it on a CUDA machine from the repository root:
#
#   bash benchmarks/gpu_wheels.sh        # here, once: .whl/ holds what the GPU image lacks
#   bash benchmarks/gpu_check.sh         # there (the device tool: carry [".whl"])
#
# Results: $OUT/gpu_check.txt when OUT is set (the device tool brings $OUT back), else
# benchmarks/gpu_check.txt. Each step has a time limit; a step that fails or overruns is
# recorded and the next one runs. The summary at the end holds every figure to quote.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=${OUT:-$ROOT/benchmarks}/gpu_check.txt
PY=${PYTHON:-python3}
: > "$RESULTS"

if [ -d .whl ]; then  # offline: the GPU machine reaches no package index
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed" | tee -a "$RESULTS"; exit 1; }
    export PYTHONPATH=/tmp/site:$ROOT
else
    export PYTHONPATH=$ROOT
fi
export PYTHONUNBUFFERED=1 DIFFLAB_CACHE=/tmp/difflab-cache DIFFLAB_TEST_DEVICE=cuda
WORK=$(mktemp -d /tmp/gpu-check.XXXX)
SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log everything, remember the outcome
    local name=$1 limit=$2 started rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$RESULTS"
    started=$(date +%s)
    timeout "$limit" "$@" >> "$RESULTS" 2>&1
    rc=$?
    SUMMARY+=("$(printf '%-24s rc=%-3s %4ss' "$name" "$rc" "$(( $(date +%s) - started ))")")
    echo "=== $name: rc=$rc in $(( $(date +%s) - started )) s" | tee -a "$RESULTS"
}

{
    echo "difflab gpu_check $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"
} >> "$RESULTS" 2>&1

# 1. the device-marked tests on CUDA (precisions, exact resume, compiled sampler, no host sync per step)
step device-tests 120 $PY -m pytest -q -p no:cacheprovider -m device -n 4 tests/test_device_paths.py
# 2. training throughput against the course loop (target >= 3x), and the bf16 and compile speed-ups
step train-speed 100 $PY benchmarks/train_speed.py --device cuda --steps 200 --warmup 20 --rounds 3 \
    --variant "train.mixed_precision='bf16'"
step train-compile 120 $PY benchmarks/train_speed.py --device cuda --steps 200 --warmup 30 --rounds 1 \
    --variant "train.compile=true"
# 3. GPU busy share while training (target >= 80%)
step gpu-busy 60 $PY benchmarks/gpu_busy.py --steps 300 --warmup 20
# 4. sampling against the diffusers pipelines (target >= 1.0x)
step sample-speed 60 $PY benchmarks/sample_speed.py --device cuda
# 5. the lab: in-app throughput vs headless (target >= 0.95x) and key p95 (target < 50 ms), job on CUDA
step lab 90 $PY benchmarks/lab_responsiveness.py --device cuda --rounds 1 --steps 300 --warmup 20 --presses 40
# 6. peak CUDA memory against the model screen's estimate, every built-in recipe
step memory 60 $PY benchmarks/memory_check.py --steps 3
# 7. ddpm-rgb-32's default run, too slow for a CPU, and its [expect] (exit 1 when one fails)
cd "$WORK"
step ddpm-rgb-32 150 $PY -m difflab run ddpm-rgb-32 --device cuda --out "$WORK/ddpm-rgb-32"
# 8. every built-in recipe's smoke profile on CUDA, listed from the catalog (new recipes included);
#    in name order, so class-conditional-digits-smoke exists before the fine-tunes start from it
for name in $($PY -c "from difflab.runtime.catalog import builtin_recipes; print(*[r.name for r in builtin_recipes()])"); do
    step "smoke:$name" 60 $PY -m difflab run "$name" --profile smoke --device cuda --out "runs/$name-smoke"
done
cd "$ROOT"

FIGURES=$(grep -E "passed|failed|engine/reference|variant/engine|GPU busy|p95|in-app / |pipeline|expect|^[a-z0-9-]+ +[0-9]+ +[0-9.]+ [KMGT]?B" \
    "$RESULTS" | grep -v "^=== ")
{
    echo
    echo "=== summary"
    printf '%s\n' "${SUMMARY[@]}"
    echo "--- figures"
    echo "$FIGURES"
} | tee -a "$RESULTS"
rm -rf "$WORK"
