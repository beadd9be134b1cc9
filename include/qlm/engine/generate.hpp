#pragma once
// Single-sequence text generation: prefill the prompt, then decode one token a step from the
// KV cache (or, for comparison, recompute the whole prefix every step without a cache).
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/sched/sampler.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace qlm {

template <class T>
concept TextTokenizer = requires(const T& t, std::string_view text, std::span<const std::int32_t> ids) {
    { t.encode(text) } -> std::same_as<std::vector<std::int32_t>>;
    { t.decode(ids) } -> std::same_as<std::string>;
};

enum class FinishReason { length, stop, eos };

inline const char* to_string(FinishReason r) noexcept {
    switch (r) {
        case FinishReason::length: return "length";
        case FinishReason::stop: return "stop";
        case FinishReason::eos: return "eos";
    }
    return "length";
}

struct GenerationResult {
    std::vector<std::int32_t> prompt_tokens;
    std::vector<std::int32_t> tokens;  // generated tokens only
    std::string text;                  // generated text only (stop string removed)
    FinishReason finish_reason = FinishReason::length;
    double prefill_seconds = 0.0;
    double decode_seconds = 0.0;  // all steps after the first generated token

    double decode_tokens_per_second() const noexcept {
        return tokens.size() > 1 && decode_seconds > 0 ? static_cast<double>(tokens.size() - 1) / decode_seconds : 0.0;
    }
    double prefill_tokens_per_second() const noexcept {
        return prefill_seconds > 0 ? static_cast<double>(prompt_tokens.size()) / prefill_seconds : 0.0;
    }
};

enum class CacheMode { kv_cache, recompute };

struct GenerateOptions {
    SamplingParams sampling;
    CacheMode cache = CacheMode::kv_cache;
    int eos_token_id = 50256;
    std::function<void(std::int32_t token)> on_token;  // called for every generated token
};

namespace detail {

using DecodeFn = std::function<std::string(std::span<const std::int32_t>)>;

// The generation loop over prompt token ids (the forward pass checks that they are in the
// vocabulary). `decode` (optional) makes the result's text and finds stop strings; without it
// result.text stays empty and stop strings are refused.
template <LinearLayer Linear>
GenerationResult generate_from_ids(ThreadPool& pool, const GPT2Model<Linear>& model, std::vector<std::int32_t> prompt_tokens,
                                   const GenerateOptions& options, const DecodeFn& decode) {
    using clock = std::chrono::steady_clock;
    const auto& cfg = model.config();
    if (!decode && !options.sampling.stop.empty())
        throw invalid_argument("qlm: stop strings need a tokenizer to decode the generated tokens");
    if (prompt_tokens.empty()) throw invalid_argument("qlm: the prompt has no tokens (GPT-2's texts start with its BOS token)");
    if (prompt_tokens.size() >= cfg.n_positions)
        throw capacity_error("qlm: prompt of " + std::to_string(prompt_tokens.size()) +
                             " tokens leaves no room in a context of " + std::to_string(cfg.n_positions));
    GenerationResult result;
    result.prompt_tokens = std::move(prompt_tokens);

    Sampler sampler(options.sampling);
    ForwardWorkspace ws;
    ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd);
    std::vector<std::int32_t> context = result.prompt_tokens;

    const auto t0 = clock::now();
    std::span<const float> logits = model.forward(pool, cache, std::span<const std::int32_t>(context), ws);
    auto t_first = clock::now();
    result.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();

    const auto& params = options.sampling;
    while (result.tokens.size() < params.max_tokens) {
        const std::int32_t token = sampler.sample(logits);
        if (!params.ignore_eos && token == options.eos_token_id) {
            result.finish_reason = FinishReason::eos;
            break;
        }
        result.tokens.push_back(token);
        context.push_back(token);
        if (options.on_token) options.on_token(token);
        if (!params.stop.empty()) {
            const std::string text = decode(result.tokens);
            bool stopped = false;
            for (const auto& s : params.stop)
                if (const auto at = text.find(s); at != std::string::npos) {
                    result.text = text.substr(0, at);
                    stopped = true;
                    break;
                }
            if (stopped) {
                result.finish_reason = FinishReason::stop;
                break;
            }
        }
        if (result.tokens.size() >= params.max_tokens || context.size() >= cfg.n_positions) break;
        if (result.tokens.size() == 1) t_first = clock::now();
        if (options.cache == CacheMode::kv_cache) {
            logits = model.forward(pool, cache, std::span<const std::int32_t>(&context.back(), 1), ws);
        } else {
            cache.clear();
            logits = model.forward(pool, cache, std::span<const std::int32_t>(context), ws);
        }
    }
    result.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
    if (decode && result.finish_reason != FinishReason::stop) result.text = decode(result.tokens);
    return result;
}

}  // namespace detail

// Generates from a text prompt; an empty prompt starts from the EOS token (GPT-2's BOS).
template <LinearLayer Linear, TextTokenizer Tokenizer>
GenerationResult generate(ThreadPool& pool, const GPT2Model<Linear>& model, const Tokenizer& tokenizer,
                          std::string_view prompt, const GenerateOptions& options) {
    std::vector<std::int32_t> ids = tokenizer.encode(prompt);
    if (ids.empty()) ids.push_back(options.eos_token_id);
    return detail::generate_from_ids(pool, model, std::move(ids), options,
                                     [&](std::span<const std::int32_t> tokens) { return tokenizer.decode(tokens); });
}

// Generates from prompt token ids (each in [0, vocab_size), at least one), with a tokenizer for
// the result's text and stop strings.
template <LinearLayer Linear, TextTokenizer Tokenizer>
GenerationResult generate(ThreadPool& pool, const GPT2Model<Linear>& model, const Tokenizer& tokenizer,
                          std::span<const std::int32_t> prompt, const GenerateOptions& options) {
    return detail::generate_from_ids(pool, model, {prompt.begin(), prompt.end()}, options,
                                     [&](std::span<const std::int32_t> tokens) { return tokenizer.decode(tokens); });
}

// Generates from prompt token ids without a tokenizer: result.tokens holds the generated ids and
// result.text stays empty; stop strings are refused (invalid_argument). Any checkpoint runs this
// way, whatever its tokenizer files, and can be compared with another implementation id for id.
template <LinearLayer Linear>
GenerationResult generate(ThreadPool& pool, const GPT2Model<Linear>& model, std::span<const std::int32_t> prompt,
                          const GenerateOptions& options) {
    return detail::generate_from_ids(pool, model, {prompt.begin(), prompt.end()}, options, {});
}

}  // namespace qlm
