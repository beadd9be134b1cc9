#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU, as one run sized for the device tool's
# budget (about 10 minutes): the kernels against their CPU references, the model / engine / perplexity
# against the CPU, the bundled model's greedy text and perplexity through the tools, qlm-bench's
# GPT-2 124M throughput (single stream, prefill, batches of 1, 16, 64, 256) for fp16, W8A8 and W4, and
# the server's time to first token.
#
#   tools/gpu-check.sh [BUILD_DIR]     (default build/cuda; built here with cmake + nvcc when it lacks
#                                       the binaries, or built elsewhere and carried along)
# Writes its log to $OUT/gpu-check.log when OUT is set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cuda}
log=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$log") 2>&1
status=0
step() { echo; echo "== $* ($(date +%T))"; }
run() {  # run LIMIT_SECONDS CMD...: a failure is recorded, the script goes on
    local limit=$1
    shift
    timeout "$limit" "$@" || {
        echo "!! FAILED (exit $?): $*"
        status=1
    }
}

step "device"
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,clocks.max.mem --format=csv || echo "!! nvidia-smi failed"
grep -m1 "model name" /proc/cpuinfo

if [ ! -x "$build/tests/cuda/test_cuda_kernels" ] || [ ! -x "$build/examples/qlm-bench" ]; then
    step "build ($build)"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQLM_ENABLE_CUDA=ON >/dev/null &&
        cmake --build "$build" -j "$(nproc)" --target test_cuda_kernels test_cuda_backend qlm-bench qlm-generate qlm-eval qlm-quantize qlm-serve ||
        { echo "!! build failed"; exit 1; }
fi
bin=$build/examples
for lib in "$build/tests/cuda/test_cuda_kernels" "$bin/qlm-bench"; do
    ldd "$lib" | grep -E "not found" && { echo "!! $lib misses libraries (CUDA runtime / cuBLAS)"; status=1; }
done

step "kernels against their CPU references"
run 180 "$build/tests/cuda/test_cuda_kernels"
step "model, engine and perplexity: CudaBackend against CpuBackend (bundled model)"
run 240 "$build/tests/cuda/test_cuda_backend" --success=false

step "greedy text, CPU and GPU (bundled model, fp32)"
cpu_text=$(timeout 60 "$bin/qlm-generate" --quiet --temperature 0 --max-tokens 48 --prompt "In the beginning" --device cpu)
gpu_text=$(timeout 60 "$bin/qlm-generate" --quiet --temperature 0 --max-tokens 48 --prompt "In the beginning" --device cuda)
echo "cpu: $cpu_text"
echo "gpu: $gpu_text"
[ "$cpu_text" = "$gpu_text" ] && echo "same text: yes" || { echo "!! same text: no"; status=1; }

step "perplexity of the held-out text, CPU and GPU (fp16, W8A8, W4 g128)"
tmp=$(mktemp -d)
run 60 "$bin/qlm-quantize" --method fp16 --out "$tmp/fp16" >/dev/null
run 60 "$bin/qlm-quantize" --method int8-dynamic --out "$tmp/w8a8" >/dev/null
run 60 "$bin/qlm-quantize" --method rtn --bits 4 --group-size 128 --out "$tmp/w4" >/dev/null
for v in fp16 w8a8 w4; do
    c=$(timeout 120 "$bin/qlm-eval" --model "$tmp/$v" --text models/gpt2-tiny-kjv/heldout.txt --device cpu 2>/dev/null | cut -f2)
    g=$(timeout 120 "$bin/qlm-eval" --model "$tmp/$v" --text models/gpt2-tiny-kjv/heldout.txt --device cuda 2>/dev/null | cut -f2)
    echo "$v: cpu $c gpu $g" | awk '{d = ($5 - $3) / $3 * 100; printf "%s  difference %+.4f%%%s\n", $0, d, (d < 0.1 && d > -0.1) ? "" : "  !! over 0.1%"}'
done

step "qlm-bench, GPT-2 124M shape (random weights): single stream, prefill, batched decode"
run 300 "$bin/qlm-bench" --device cuda --variants fp16,w8a8,w4g128 --prompt-tokens 128 --decode-tokens 128 --batch 1,16,64,256 --repetitions 3

step "time to first token through qlm-serve (GPT-2 124M shape, W8A8, short prompt)"
port=18731
"$bin/qlm-serve" --device cuda --shape 124m --method w8a8 --port $port >"$tmp/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
for i in 1 2 3 4 5 6; do
    curl -s -o /dev/null -w "request $i: time to first byte of the stream %{time_starttransfer} s, total %{time_total} s\n" \
        -H 'Content-Type: application/json' \
        -d '{"model":"m","prompt":[464, 2068, 7586, 21831, 18045, 625],"max_tokens":32,"stream":true}' \
        "http://127.0.0.1:$port/v1/completions"
done
curl -s "http://127.0.0.1:$port/metrics" | grep -E "^qlm_(busy_ratio|gpu_utilization_ratio|time_to_first_token_seconds_(sum|count))"
kill -TERM $server
wait $server
rm -rf "$tmp"

echo
[ $status -eq 0 ] && echo "gpu-check: all checks passed" || echo "gpu-check: some checks FAILED (see !! above)"
exit $status
