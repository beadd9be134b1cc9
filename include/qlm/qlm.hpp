#pragma once
// qlm: quantize GPT-style language models and run them fast. The umbrella header.
#include <qlm/core/error.hpp>
#include <qlm/core/half.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/engine/generate.hpp>
#include <qlm/eval/perplexity.hpp>
#include <qlm/io/safetensors.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/model/load_gpt2.hpp>
#include <qlm/model/random_weights.hpp>
#include <qlm/quant/packing.hpp>
#include <qlm/sched/sampler.hpp>
#include <qlm/tokenizer/gpt2_tokenizer.hpp>
