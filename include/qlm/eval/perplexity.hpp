#pragma once
// Perplexity of a causal LM on a token stream, with the sliding-window method of Hugging Face's
// "Perplexity of fixed-length models" guide: windows of max_length tokens advance by stride, and
// each window scores only the tokens that the previous window did not. The result is
// exp(Σ NLL / scored tokens), summed over tokens (not an average of window means), in double.
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/gpt2.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace qlm {

// Every window scores at least one token: max_length >= 2 and 1 <= stride <= max_length
// (otherwise invalid_argument), so the result is never 0 tokens scored.
struct PerplexityOptions {
    std::size_t max_length = 0;  // 0 = the model's context; at least 2
    std::size_t stride = 0;      // 0 = max_length / 2; at most max_length
    std::function<void(std::size_t done, std::size_t total)> on_progress;
};

struct PerplexityResult {
    double perplexity = 0.0;
    double nll_sum = 0.0;
    std::size_t tokens = 0;
    std::size_t scored_tokens = 0;
    std::size_t max_length = 0;
    std::size_t stride = 0;
    double seconds = 0.0;
};

// −log softmax(logits)[target], computed in double.
inline double negative_log_likelihood(std::span<const float> logits, std::int32_t target) {
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float v : logits) sum += std::exp(static_cast<double>(v) - max_logit);
    return std::log(sum) + max_logit - static_cast<double>(logits[static_cast<std::size_t>(target)]);
}

template <LinearLayer Linear, class Backend>
PerplexityResult perplexity(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::span<const std::int32_t> tokens,
                            PerplexityOptions options = {}) {
    const auto& cfg = model.config();
    const std::size_t max_length = options.max_length ? options.max_length : cfg.n_positions;
    const std::size_t stride = options.stride ? options.stride : std::max<std::size_t>(1, max_length / 2);
    if (max_length < 2)
        throw invalid_argument("qlm: perplexity window of " + std::to_string(max_length) +
                               " token(s) scores nothing: a window predicts each token from those before it, so it needs at least 2");
    if (max_length > cfg.n_positions)
        throw invalid_argument("qlm: perplexity window of " + std::to_string(max_length) + " tokens exceeds the context of " +
                               std::to_string(cfg.n_positions));
    if (stride > max_length)
        throw invalid_argument("qlm: perplexity stride of " + std::to_string(stride) + " exceeds the window of " +
                               std::to_string(max_length) + " tokens: the tokens between windows would go unscored");
    if (tokens.size() < 2) throw invalid_argument("qlm: perplexity needs at least two tokens");

    const auto t0 = std::chrono::steady_clock::now();
    PerplexityResult result;
    result.tokens = tokens.size();
    result.max_length = max_length;
    result.stride = stride;
    ContiguousKVCache cache(cfg.n_layer, max_length, cfg.n_embd, Backend::kv_memory(pool));
    typename Backend::workspace ws;
    std::size_t previous_end = 0;
    for (std::size_t begin = 0; begin < tokens.size(); begin += stride) {
        const std::size_t end = std::min(begin + max_length, tokens.size());
        const std::size_t first_scored = std::max(begin + 1, previous_end);  // a window cannot score its first token
        cache.clear();
        model.forward(pool, cache, tokens.subspan(begin, end - begin), ws, LogitsFor::all_tokens);
        for (std::size_t i = first_scored; i < end; ++i) {
            result.nll_sum += negative_log_likelihood(ws.logits_row(i - 1 - begin), tokens[i]);
            ++result.scored_tokens;
        }
        previous_end = end;
        if (options.on_progress) options.on_progress(end, tokens.size());
        if (end == tokens.size()) break;
    }
    result.perplexity = std::exp(result.nll_sum / static_cast<double>(result.scored_tokens));
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
}

}  // namespace qlm
