#pragma once
// Prefill and decode throughput of a model on synthetic token ids (median of repetitions).
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/gpt2.hpp>

#include <string>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace qlm {

struct SpeedResult {
    double prefill_tokens_per_second = 0.0;
    double decode_tokens_per_second = 0.0;
    std::size_t prompt_tokens = 0, decode_tokens = 0;
};

template <LinearLayer Linear, class Backend>
SpeedResult measure_speed(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::size_t prompt_tokens, std::size_t decode_tokens,
                          int repetitions = 3, ForwardProfile* decode_profile = nullptr) {
    using clock = std::chrono::steady_clock;
    const auto& c = model.config();
    if (prompt_tokens == 0 || prompt_tokens + decode_tokens > c.n_positions)
        throw invalid_argument("qlm: speed test of " + std::to_string(prompt_tokens) + " + " + std::to_string(decode_tokens) +
                               " tokens does not fit the context of " + std::to_string(c.n_positions));
    std::vector<std::int32_t> prompt(prompt_tokens);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int32_t>((i * 7919 + 13) % c.vocab_size);
    ContiguousKVCache cache(c.n_layer, c.n_positions, c.n_embd, Backend::kv_memory(pool));
    typename Backend::workspace ws;
    auto run = [&](std::size_t p, std::size_t d, ForwardProfile* profile = nullptr) {
        cache.clear();
        ws.profile = nullptr;
        const auto t0 = clock::now();
        auto logits = model.forward(pool, cache, std::span<const std::int32_t>(prompt).first(p), ws);
        const auto t1 = clock::now();
        ws.profile = profile;
        for (std::size_t i = 0; i < d; ++i) {
            const auto next = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            logits = model.forward(pool, cache, std::span<const std::int32_t>(&next, 1), ws);
        }
        const auto t2 = clock::now();
        return std::pair{std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count()};
    };
    run(std::min<std::size_t>(prompt_tokens, 8), std::min<std::size_t>(decode_tokens, 4));  // warm-up
    std::vector<double> prefill, decode;
    for (int r = 0; r < std::max(1, repetitions); ++r) {
        const auto [tp, td] = run(prompt_tokens, decode_tokens);
        prefill.push_back(static_cast<double>(prompt_tokens) / tp);
        if (decode_tokens) decode.push_back(static_cast<double>(decode_tokens) / td);
    }
    if (decode_profile && decode_tokens) run(prompt_tokens, decode_tokens, decode_profile);
    std::sort(prefill.begin(), prefill.end());
    std::sort(decode.begin(), decode.end());
    SpeedResult s;
    s.prompt_tokens = prompt_tokens;
    s.decode_tokens = decode_tokens;
    s.prefill_tokens_per_second = prefill[prefill.size() / 2];
    s.decode_tokens_per_second = decode.empty() ? 0.0 : decode[decode.size() / 2];
    return s;
}

// Batched decode: `sequences` sequences each prefilled with prompt_tokens (one forward pass per
// sequence), then decode_tokens steps in which every sequence adds one token in a single forward
// pass of `sequences` rows (what continuous batching runs at steady state). Returns aggregate
// tokens per second of the decode steps (median of repetitions).
template <LinearLayer Linear, class Backend>
double measure_batched_decode(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::size_t sequences, std::size_t prompt_tokens,
                              std::size_t decode_tokens, int repetitions = 3) {
    using clock = std::chrono::steady_clock;
    const auto& c = model.config();
    if (sequences == 0 || prompt_tokens == 0 || decode_tokens == 0 || prompt_tokens + decode_tokens > c.n_positions)
        throw invalid_argument("qlm: batched decode of " + std::to_string(sequences) + " sequences x (" + std::to_string(prompt_tokens) +
                               " + " + std::to_string(decode_tokens) + ") tokens does not fit the context of " +
                               std::to_string(c.n_positions));
    std::vector<ContiguousKVCache> caches;
    caches.reserve(sequences);
    for (std::size_t s = 0; s < sequences; ++s) caches.emplace_back(c.n_layer, prompt_tokens + decode_tokens, c.n_embd, Backend::kv_memory(pool));
    std::vector<std::int32_t> prompt(prompt_tokens), next(sequences);
    typename Backend::workspace ws;
    std::vector<double> rates;
    for (int r = 0; r < std::max(1, repetitions); ++r) {
        for (std::size_t s = 0; s < sequences; ++s) {
            caches[s].clear();
            for (std::size_t i = 0; i < prompt_tokens; ++i) prompt[i] = static_cast<std::int32_t>((i * 7919 + 13 * s + 1) % c.vocab_size);
            const auto logits = model.forward(pool, caches[s], std::span<const std::int32_t>(prompt), ws);
            next[s] = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        std::vector<SequenceChunk<ContiguousKVCache>> chunks(sequences);
        const auto t0 = clock::now();
        for (std::size_t step = 0; step < decode_tokens; ++step) {
            for (std::size_t s = 0; s < sequences; ++s) chunks[s] = {&caches[s], std::span<const std::int32_t>(&next[s], 1)};
            model.forward(pool, std::span<const SequenceChunk<ContiguousKVCache>>(chunks), ws);
            for (std::size_t s = 0; s < sequences; ++s) {
                const auto row = ws.logits_row(s);
                next[s] = static_cast<std::int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
            }
        }
        rates.push_back(static_cast<double>(sequences * decode_tokens) / std::chrono::duration<double>(clock::now() - t0).count());
    }
    std::sort(rates.begin(), rates.end());
    return rates[rates.size() / 2];
}

}  // namespace qlm
