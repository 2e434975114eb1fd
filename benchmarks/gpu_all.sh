#!/usr/bin/env bash
# Every GPU measurement of the performance work in one run, most important first, each under its
# own time limit. On one H100/H200: about 5 minutes for PART=core, about 10 for PART=all.
#
#   bash benchmarks/gpu_all.sh [OUT] [PEAK_TFLOPS] [PART]
#
# PART core: the targets: the LLaVA-1.5-7B and InstructBLIP-Vicuna-7B shapes, each built once and
#   measured at batch 8, 16 (the trainer's default) and 32: L_LLM / +FCA / +TSE step rows with
#   FLOPs, MFU and peak memory, the plain HF anchor step, packed ranking at 10 and 100 choices.
# PART all (default): core, then the other families at their released shapes and the adapter
#   contract tests on the GPU (pytest -m gpu).
# OUT (default gpu-results/) gets one JSON and one log per measurement and RESULTS-gpu.md, the
# Markdown blocks to paste into benchmarks/RESULTS.md. PEAK_TFLOPS is the dense bf16 peak used for
# MFU (default 790, as in the design's anchors). The careless baseline is a CPU measurement (fp32
# weights with gradients do not fit a 7B model next to its activations), so it is skipped here.
# COMPILE=default (or max-autotune, reduce-overhead) also measures every step after regional
# torch.compile, in the same runs (rows "<terms> compiled", first call apart; allow a few minutes more).
# CORE="llava" (or "instructblip") runs one of the two 7B shapes only, when time is short.
# A CPU smoke run of the script itself: DEVICE=cpu SIZE=tiny bash benchmarks/gpu_all.sh smoke-out
# (PYTHON picks the interpreter; default: python).
set -u
out=${1:-gpu-results}
peak=${2:-790}
part=${3:-all}
device=${DEVICE:-cuda}
size=${SIZE:-}
py=${PYTHON:-python}
mkdir -p "$out"
md="$out/RESULTS-gpu.md"
failed=0

run() {  # run NAME SECONDS COMMAND...: log to OUT/NAME.log, note a failure or time-out in RESULTS-gpu.md
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 20 "$out/$name.log"
    if [ "$rc" -ne 0 ]; then
        echo "**$name failed** (exit $rc; 124 = over ${limit} s): \`$*\`" >>"$md"
        failed=$((failed + 1))
    fi
}

step() {  # step FAMILY SIZE SECONDS ARGS...: one prompt_step run (SIZE=tiny overrides the size)
    local family=$1 fsize=${size:-$2} limit=$3
    shift 3
    local extra=()
    [ "$fsize" = tiny ] && extra=(--warmup 0 --iters 1)
    if [ -n "${COMPILE:-}" ]; then
        extra+=(--compile "$COMPILE")
        limit=$((limit + 240))  # compiling the blocks of a 7B model and the guide, fwd + bwd
    fi
    run "$family" "$limit" "$py" -m benchmarks.prompt_step --family "$family" --size "$fsize" --device "$device" \
        --peak-tflops "$peak" --no-careless "${extra[@]}" "$@" --json "$out/$family.json" --markdown "$md"
}

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
for family in ${CORE:-instructblip llava}; do  # InstructBLIP first: the host-bound one
    step "$family" 7b 300 --batch 8 16 32 --choices 10 100
done
if [ "$part" = all ]; then
    for family_size in "minigpt4 7b" "qwen2_vl 2b" "qwen2_5_vl 3b" "smolvlm 256m" "paligemma 3b" "gemma3 4b"; do
        # shellcheck disable=SC2086  # two words on purpose
        step $family_size 150 --batch 8 --choices 10
    done
    TVP_TEST_DEVICE=$device run gpu-tests 300 "$py" -m pytest -m gpu -p no:cacheprovider \
        tests/test_adapters_gpu.py tests/test_train_gpu.py
fi
echo "results in $out/ ($failed failed)"
exit "$failed"
