#!/usr/bin/env bash
# qlm against llama.cpp on the same weights, side by side: the random GPT-2 124M-shaped model that
# `qlm-bench --shape 124m` benchmarks, written as a Hugging Face folder (qlm-bench
# --write-random-model), converted to GGUF (tools/hf_to_gguf_gpt2.py, F32 and F16), quantized with
# llama-quantize (Q8_0, Q4_0), then llama-bench (pp128, tg128) against qlm-bench (prefill 128,
# decode 128) at 1 and 2 threads, interleaved (llama.cpp, then qlm, for each configuration), each run
# started once the machine is idle; and llama-batched-bench (64 sequences, Q8_0) for batched decode.
#
#   tools/bench-vs-llama.sh LLAMA_BUILD_DIR [LLAMA_SRC_DIR]
#
# LLAMA_BUILD_DIR: a llama.cpp build (its bin/ or the folder holding llama-bench, llama-quantize and
# llama-batched-bench); LLAMA_SRC_DIR: its source tree, for gguf-py (default: found above the build).
# This script only runs a llama.cpp build given by path; it neither fetches nor builds llama.cpp.
# docs/benchmarks.md says how to build the one measured there.
#
# Environment: QLM_BUILD_DIR (default build/release, with qlm-bench built), WORK_DIR (models and raw
# logs; default a new folder under /tmp, removed at the end unless KEEP_WORK=1), THREADS (default
# "1 2"), REPS (repetitions per run, default 3), IDLE_LOAD (wait until the 1-minute load average is
# below this, default 0.5), IDLE_TIMEOUT (seconds to wait for that before measuring anyway, default
# 300), PYTHON (a python3 with numpy and gguf-py's imports; default: the first python3 that has them).
set -euo pipefail

die() {
    echo "bench-vs-llama: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: tools/bench-vs-llama.sh LLAMA_BUILD_DIR [LLAMA_SRC_DIR]"
repo=$(cd "$(dirname "$0")/.." && pwd)
llama_bin=$1
[[ -x $llama_bin/llama-bench ]] || llama_bin=$1/bin
for tool in llama-bench llama-quantize llama-batched-bench; do
    [[ -x $llama_bin/$tool ]] || die "no $tool in $1 or $1/bin (build the targets llama-bench llama-quantize llama-batched-bench)"
done
llama_src=${2:-}
if [[ -z $llama_src ]]; then
    for d in "$llama_bin/.." "$llama_bin/../.." "$llama_bin/../../.."; do
        [[ -d $d/gguf-py/gguf ]] && llama_src=$(cd "$d" && pwd) && break
    done
fi
[[ -n $llama_src && -d $llama_src/gguf-py/gguf ]] || die "no gguf-py found above $1: give LLAMA_SRC_DIR"
export PYTHONPATH="$llama_src/gguf-py${PYTHONPATH:+:$PYTHONPATH}"

qlm_bench=${QLM_BUILD_DIR:-$repo/build/release}/examples/qlm-bench
[[ -x $qlm_bench ]] || die "no $qlm_bench (cmake --preset release && cmake --build --preset release --target qlm-bench)"

if [[ -z ${PYTHON:-} ]]; then
    for p in python3 /usr/bin/python3; do
        if "$p" -c 'import numpy, gguf' 2>/dev/null; then
            PYTHON=$p
            break
        fi
    done
fi
[[ -n ${PYTHON:-} ]] || die "no python3 that imports numpy and gguf-py (Debian: apt-get install python3-numpy python3-yaml python3-sentencepiece), or set PYTHON"

threads_list=${THREADS:-1 2}
reps=${REPS:-3}
idle_load=${IDLE_LOAD:-0.5}
idle_timeout=${IDLE_TIMEOUT:-300}
work=${WORK_DIR:-}
if [[ -z $work ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-llama.XXXXXX")
    [[ ${KEEP_WORK:-0} == 1 ]] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
model=$work/random-124m

# Waits until the 1-minute load average is below $idle_load (at most $idle_timeout s); sets
# run_load to the load average when the run starts. ggml's threads spin at every barrier, so a
# busy neighbour wrecks its multi-threaded figures.
run_load=
wait_idle() {
    local waited=0
    while :; do
        run_load=$(cut -d' ' -f1 /proc/loadavg)
        awk -v l="$run_load" -v m="$idle_load" 'BEGIN { exit !(l < m) }' && return
        if ((waited >= idle_timeout)); then
            echo "bench-vs-llama: warning: 1-minute load average still $run_load after ${idle_timeout} s (want < $idle_load); measuring anyway, expect noisy figures" >&2
            return
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# Mean tokens/s of llama-bench's jsonl output $1 for the prompt ("pp") or generation ("tg") test.
llama_ts() {
    "$PYTHON" -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if (r["n_gen"] == 0) == (sys.argv[2] == "pp"):
        print("%.1f" % r["avg_ts"])' "$1" "$2"
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
isa=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
    grep -E '^(avx|avx2|fma|f16c|avx_vnni|avx512(f|bw|vl|dq|_vnni|_bf16|_fp16|vbmi)|amx_(tile|int8|bf16))$' | tr '\n' ' ')
echo "CPU: $cpu, $(nproc) cores"
echo "ISA: $isa"
echo "llama.cpp: $(git -C "$llama_src" rev-parse --short HEAD 2>/dev/null || echo "unknown commit") ($llama_bin)"
echo "qlm: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "unknown commit")$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo "+changes")"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); runs wait for < $idle_load (at most $idle_timeout s); $reps repetitions"
echo "llama.cpp: llama-bench -p 128 -n 128 (mean); qlm: qlm-bench --prompt-tokens 128 --decode-tokens 128 (median)"

say "writing the random model and converting it"
"$qlm_bench" --shape 124m --write-random-model "$model" >&2
"$PYTHON" "$repo/tools/hf_to_gguf_gpt2.py" "$model" "$work/gpt2-F32.gguf" >&2
"$PYTHON" "$repo/tools/hf_to_gguf_gpt2.py" "$model" "$work/gpt2-F16.gguf" --outtype f16 >&2
for q in Q8_0 Q4_0; do
    "$llama_bin/llama-quantize" "$work/gpt2-F32.gguf" "$work/gpt2-$q.gguf" "$q" >"$work/quantize-$q.log" 2>&1 ||
        die "llama-quantize $q failed: see $work/quantize-$q.log"
done

# llama.cpp file type and the qlm-bench variant set beside it: the same weights, and (w4a8g128)
# activations quantized to int8 as llama.cpp's Q8_0 x Q4_0 dot products do; w4g128 keeps float
# activations (weight-only, the GPTQ/AWQ authors' semantics) and costs more compute.
configs=("F32 fp32" "F16 fp16" "F16 bf16" "Q8_0 w8a8" "Q4_0 w4a8g128" "Q4_0 w4g128")
rows=()
for config in "${configs[@]}"; do
    read -r gguf variant <<<"$config"
    for t in $threads_list; do
        log=$work/llama-$gguf-t$t.jsonl
        wait_idle
        say "llama-bench $gguf, $t threads (load $run_load)"
        "$llama_bin/llama-bench" -m "$work/gpt2-$gguf.gguf" -p 128 -n 128 -t "$t" -r "$reps" -o jsonl >"$log" 2>"$work/llama-$gguf-t$t.err" ||
            die "llama-bench failed: see $work/llama-$gguf-t$t.err"
        llama_load=$run_load
        qlm_pp=- qlm_tg=- qlm_load=-
        if [[ -n $variant ]]; then
            wait_idle
            say "qlm-bench $variant, $t threads (load $run_load)"
            "$qlm_bench" --model "$model" --variants "$variant" --threads "$t" --prompt-tokens 128 --decode-tokens 128 \
                --repetitions "$reps" | tee "$work/qlm-$variant-t$t.txt" >&2
            read -r qlm_pp qlm_tg < <(awk -v v="$variant" '$1 == v { print $4, $5 }' "$work/qlm-$variant-t$t.txt") ||
                die "no $variant row in qlm-bench's output: see $work/qlm-$variant-t$t.txt"
            qlm_load=$run_load
        fi
        rows+=("$gguf${variant:+/$variant} $t $(llama_ts "$log" pp) $qlm_pp $(llama_ts "$log" tg) $qlm_tg $llama_load/$qlm_load")
    done
done

batched_threads=${threads_list##* }
wait_idle
say "llama-batched-bench Q8_0, 64 sequences, $batched_threads threads (load $run_load)"
"$llama_bin/llama-batched-bench" -m "$work/gpt2-Q8_0.gguf" -c 16384 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 64 \
    -t "$batched_threads" --output-format jsonl >"$work/batched.jsonl" 2>"$work/batched.err" ||
    die "llama-batched-bench failed: see $work/batched.err"
batched=$("$PYTHON" -c '
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        print("%.1f %.1f" % (r["speed_pp"], r["speed_tg"]))' "$work/batched.jsonl")
batched_load=$run_load
wait_idle
say "qlm-bench --batch 64, w8a8 and w4a8g128, $batched_threads threads (load $run_load)"
"$qlm_bench" --model "$model" --variants w8a8,w4a8g128 --threads "$batched_threads" --prompt-tokens 128 --decode-tokens 128 \
    --repetitions 1 --batch 64 | tee "$work/qlm-batched.txt" >&2
qlm_batched=$(awk '/^w8a8 / { v = "w8a8" } /^w4a8g128 / { v = "w4a8g128" } /batched decode/ { printf "%s %s tokens/s; ", v, $(NF-2) }' \
    "$work/qlm-batched.txt")
qlm_batched_load=$run_load

echo
echo "Tokens/s; ratio = qlm / llama.cpp; load = 1-minute load average when the llama.cpp / qlm run started."
echo
echo "| weights (llama.cpp/qlm) | threads | llama pp128 | qlm prefill | ratio | llama tg128 | qlm decode | ratio | load |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for row in "${rows[@]}"; do
    awk '{
        ratio_pp = ($4 == "-") ? "-" : sprintf("%.2f", $4 / $3)
        ratio_tg = ($6 == "-") ? "-" : sprintf("%.2f", $6 / $5)
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, ratio_pp, $5, $6, ratio_tg, $7
    }' <<<"$row"
done
read -r batched_pp batched_tg <<<"$batched"
echo
echo "Batched, 64 sequences x (128 prompt + 128 generated), Q8_0, $batched_threads threads (load $batched_load):"
echo "llama-batched-bench prompt $batched_pp tokens/s, decode $batched_tg tokens/s aggregate;"
echo "qlm-bench --batch 64 (load $qlm_batched_load): decode ${qlm_batched:-no figure}aggregate."
[[ ${KEEP_WORK:-0} == 1 || -n ${WORK_DIR:-} ]] && echo "raw logs and models: $work"
exit 0
