#!/usr/bin/env bash
# The main job on the bundled model: build the tools; generate text (KV cache vs. recompute);
# quantize with fp16, bf16, INT8 dynamic, INT8 static, RTN, GPTQ (also W4A8) and AWQ; generate with a quantized model;
# and print the evaluation report (size, speed, perplexity against fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target qlm-generate qlm-quantize qlm-eval qlm-bench-serve
bin=build/release/examples
model=models/gpt2-tiny-kjv
out="${QLM_QUICKSTART_OUT:-build/quickstart}"
mkdir -p "$out"

echo "== generate with the bundled fp32 model (KV cache vs. recomputing the prefix)"
"$bin/qlm-generate" --model "$model" --max-tokens 200 --compare-cache

names=(fp32)
dirs=("$model")
quantize() {  # name, qlm-quantize arguments...
  local name=$1
  shift
  echo "== quantize: $name"
  "$bin/qlm-quantize" --model "$model" --out "$out/$name" "$@"
  names+=("$name")
  dirs+=("$out/$name")
}
quantize fp16 --method fp16
quantize bf16 --method bf16
quantize w8a8-dynamic --method int8-dynamic
quantize w8a8-static --method int8-static --smoothquant 0.5
quantize rtn-w4-g128 --method rtn --bits 4 --group-size 128
quantize rtn-w4-g128-asym --method rtn --bits 4 --group-size 128 --asym  # AWQ's baseline: AWQ uses zero points
quantize gptq-w4-g128 --method gptq --bits 4 --group-size 128 --export-autogptq "$out/gptq-w4-g128-autogptq"
quantize gptq-w4a8-g128 --method gptq --bits 4 --group-size 128 --activations int8  # W4A8: int8 activations (vpdpbusd)
quantize awq-w4-g128 --method awq --bits 4 --group-size 128
names+=(gptq-w4-autogptq-format)  # the same model read back through the AutoGPTQ loader
dirs+=("$out/gptq-w4-g128-autogptq")
quantize rtn-w4-g128-salient1pct --method rtn --bits 4 --group-size 128 --salient 0.01
quantize rtn-w3-g128 --method rtn --bits 3 --group-size 128
quantize gptq-w3-g128 --method gptq --bits 3 --group-size 128

echo "== generate with the GPTQ 4-bit model"
"$bin/qlm-generate" --model "$out/gptq-w4-g128" --max-tokens 60

echo "== evaluation report (held-out text: $model/heldout.txt)"
args=()
for i in "${!dirs[@]}"; do args+=(--model "${dirs[$i]}" --name "${names[$i]}"); done
"$bin/qlm-eval" --report "${args[@]}" --json "$out/report.json" --markdown "$out/report.md"
echo "report written to $out/report.json and $out/report.md"

echo "== serving workload through the engine (bundled model, 48 requests behind a shared 64-token system prompt)"
"$bin/qlm-bench-serve" --model "$model" --requests 48 --max-prompt 64 --max-output 48 --system-prompt 64
