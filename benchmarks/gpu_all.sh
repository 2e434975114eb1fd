#!/usr/bin/env bash
# Every GPU measurement of the performance work in one run, most important first, each under its
# own time limit (about 10 minutes in all on one H100/H200; 7B shapes need ~60 GB at batch 32).
#
#   bash benchmarks/gpu_all.sh [OUT] [PEAK_TFLOPS]
#
# OUT (default gpu-results/) gets one JSON and one log per measurement and RESULTS-gpu.md, the
# Markdown blocks to paste into benchmarks/RESULTS.md. PEAK_TFLOPS is the dense bf16 peak used for
# MFU (default 790, as in the design's anchors). The careless baseline is a CPU measurement (fp32
# weights with gradients do not fit a 7B model next to its activations), so it is skipped here.
# A CPU smoke run of the script itself: DEVICE=cpu SIZE=tiny bash benchmarks/gpu_all.sh smoke-out
# (PYTHON picks the interpreter; default: python).
set -u
out=${1:-gpu-results}
peak=${2:-790}
device=${DEVICE:-cuda}
size=${SIZE:-7b}
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

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
tiny=()
[ "$size" = tiny ] && tiny=(--tiny)
step=("$py" -m benchmarks.prompt_step --size "$size" --device "$device" --peak-tflops "$peak" --no-careless)
[ "$size" = tiny ] && step+=(--warmup 0 --iters 1)

# the targets: full TVP step MFU at the trainer's default batch and at a large micro-batch, the
# L_LLM / FCA / TSE split, and packed ranking at 10 and 100 choices
for family in llava instructblip; do
    run "$family-b8" 240 "${step[@]}" --family "$family" --batch 8 --choices 10 100 \
        --json "$out/$family-b8.json" --markdown "$md"
    run "$family-b32" 240 "${step[@]}" --family "$family" --batch 32 --choices 100 \
        --json "$out/$family-b32.json" --markdown "$md"
done
# the adapter step against the raw HF step, then the other families at real shapes
run adapter-step 180 "$py" benchmarks/adapter_step.py "${tiny[@]}" --batch 8 32
run extra-families 180 "$py" benchmarks/extra_families_step.py "${tiny[@]}"
echo "results in $out/ ($failed failed)"
exit "$failed"
