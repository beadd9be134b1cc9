#pragma once
// Single-sequence text generation. With the KV cache (the default) it is one request on an
// Engine with a pool sized for it, so generate() and the batching engine share one code path;
// the recompute mode (a baseline for the KV cache's speed-up) runs the whole prefix every step.
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/engine/engine.hpp>
#include <qlm/kv/contiguous_cache.hpp>
#include <qlm/model/gpt2.hpp>
#include <qlm/sched/finish_reason.hpp>
#include <qlm/sched/sampler.hpp>
#include <qlm/sched/sequence_output.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qlm {

template <class T>
concept TextTokenizer = requires(const T& t, std::string_view text, std::span<const std::int32_t> ids) {
    { t.encode(text) } -> std::same_as<std::vector<std::int32_t>>;
    { t.decode(ids) } -> std::same_as<std::string>;
};

struct GenerationResult {
    std::vector<std::int32_t> prompt_tokens;
    std::vector<std::int32_t> tokens;  // generated tokens only (SequenceOutput::tokens: no EOS)
    std::string text;                  // generated text as released: valid UTF-8, stop string removed
                                       // (unless include_stop_str_in_output)
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
    std::function<void(std::int32_t token)> on_token;  // called for every token kept in result.tokens
    std::function<void(std::string_view text_delta)> on_text;  // the text as it is released (valid UTF-8)
};

namespace detail {

using DecodeFn = Decoder;

// One request on an Engine whose KV pool holds exactly this sequence (prompt + max_tokens, at most
// the context). max_tokens beyond the context ends with `length` when the context is full, as
// before the engine, instead of the engine's refusal at admission.
template <LinearLayer Linear, class Backend>
GenerationResult generate_on_engine(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::vector<std::int32_t> prompt_tokens,
                                    const GenerateOptions& options, const DecodeFn& decode) {
    using Sched = Scheduler<ContinuousBatching>;
    const auto& cfg = model.config();
    SamplingParams params = options.sampling;
    params.max_tokens = std::min(params.max_tokens, cfg.n_positions - prompt_tokens.size());
    const std::size_t positions = prompt_tokens.size() + params.max_tokens;
    const std::size_t blocks = (positions + Sched::page_size - 1) / Sched::page_size + 1;  // +1: the block the last token's logits need
    EngineConfig config;
    config.kv_cache_bytes = blocks * KVBlockLayout<Sched::page_size>{cfg.n_layer, cfg.n_embd}.bytes();
    config.eos_token_id = options.eos_token_id;
    config.decoder = decode;
    config.scheduler.max_running = 1;
    config.scheduler.max_tokens_per_step = std::max<std::size_t>(prompt_tokens.size(), 1);  // the prompt in one prefill step
    config.scheduler.prefix_caching = false;
    Engine<GPT2Model<Linear, Backend>, Sched> engine(model, pool, config);

    RequestOptions request;
    if (options.on_token) request.on_token = [&](RequestId, std::int32_t token) { options.on_token(token); };
    if (options.on_text) request.on_text = [&](RequestId, std::string_view text) { options.on_text(text); };
    const RequestId id = engine.add_request(prompt_tokens, params, std::move(request));
    std::vector<RequestOutput> outputs = engine.run_until_done();  // hands the results over
    if (outputs.size() != 1 || outputs.front().id != id) throw error("qlm: generate: the engine returned no result");
    RequestOutput out = std::move(outputs.front());
    if (out.finish_reason == RequestFinishReason::error) throw error("qlm: generation failed: " + out.error);

    GenerationResult result;
    result.prompt_tokens = std::move(prompt_tokens);
    result.tokens = std::move(out.tokens);
    result.text = std::move(out.text);
    result.finish_reason = out.finish_reason == RequestFinishReason::stop ? FinishReason::stop
                           : out.finish_reason == RequestFinishReason::eos ? FinishReason::eos
                                                                           : FinishReason::length;
    const auto& t = out.timings;
    if (t.first_token != RequestTimings::clock::time_point{}) {
        result.prefill_seconds = std::chrono::duration<double>(t.first_token - t.arrival).count();
        result.decode_seconds = std::chrono::duration<double>(t.finished - t.first_token).count();
    }
    return result;
}

// The generation loop over prompt token ids (the forward pass checks that they are in the
// vocabulary). `decode` (optional) makes the result's text and finds stop strings; without it
// result.text stays empty and stop strings are refused. Each step samples with the request's
// Sampler (penalties over the prompt and the accepted tokens) and hands the token to a
// SequenceOutput, which decides whether the sequence ends and releases its text incrementally.
template <LinearLayer Linear, class Backend>
GenerationResult generate_from_ids(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::vector<std::int32_t> prompt_tokens,
                                   const GenerateOptions& options, const DecodeFn& decode) {
    using clock = std::chrono::steady_clock;
    const auto& cfg = model.config();
    const auto& params = options.sampling;
    SequenceOutput output(params, decode, options.eos_token_id);  // validates; refuses stop strings without `decode`
    if (prompt_tokens.empty()) throw invalid_argument("qlm: the prompt has no tokens (GPT-2's texts start with its BOS token)");
    if (prompt_tokens.size() >= cfg.n_positions)
        throw capacity_error("qlm: prompt of " + std::to_string(prompt_tokens.size()) +
                             " tokens leaves no room in a context of " + std::to_string(cfg.n_positions));
    if (options.cache == CacheMode::kv_cache) return generate_on_engine(pool, model, std::move(prompt_tokens), options, decode);
    GenerationResult result;
    result.prompt_tokens = std::move(prompt_tokens);

    Sampler sampler(params, result.prompt_tokens, options.eos_token_id);
    typename Backend::workspace ws;
    ContiguousKVCache cache(cfg.n_layer, cfg.n_positions, cfg.n_embd, Backend::kv_memory(pool));
    std::vector<std::int32_t> context = result.prompt_tokens;

    const auto t0 = clock::now();
    std::span<const float> logits = model.forward(pool, cache, std::span<const std::int32_t>(context), ws);
    auto t_first = clock::now();
    result.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();

    const auto emit = [&](const std::string& delta) {
        if (options.on_text && !delta.empty()) options.on_text(delta);
    };
    while (params.max_tokens > 0) {
        const std::int32_t token = sampler.sample(logits);
        sampler.accept(token);
        const std::size_t kept = output.tokens().size();
        const SequenceOutput::Step step = output.append(token);
        if (output.tokens().size() > kept && options.on_token) options.on_token(token);
        emit(step.text_delta);
        if (step.finished) break;
        context.push_back(token);
        if (context.size() >= cfg.n_positions) {
            emit(output.flush(FinishReason::length));
            break;
        }
        if (output.tokens().size() == 1) t_first = clock::now();
        cache.clear();
        logits = model.forward(pool, cache, std::span<const std::int32_t>(context), ws);
    }
    if (!output.finished()) emit(output.flush(FinishReason::length));  // max_tokens 0
    result.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
    result.tokens = output.tokens();
    result.text = output.text();
    result.finish_reason = output.finish_reason();
    return result;
}

}  // namespace detail

// Generates from a text prompt; an empty prompt starts from the EOS token (GPT-2's BOS).
template <LinearLayer Linear, class Backend, TextTokenizer Tokenizer>
GenerationResult generate(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, const Tokenizer& tokenizer,
                          std::string_view prompt, const GenerateOptions& options) {
    std::vector<std::int32_t> ids = tokenizer.encode(prompt);
    if (ids.empty()) ids.push_back(options.eos_token_id);
    return detail::generate_from_ids(pool, model, std::move(ids), options, make_decoder(tokenizer));
}

// Generates from prompt token ids (each in [0, vocab_size), at least one), with a tokenizer for
// the result's text and stop strings.
template <LinearLayer Linear, class Backend, TextTokenizer Tokenizer>
GenerationResult generate(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, const Tokenizer& tokenizer,
                          std::span<const std::int32_t> prompt, const GenerateOptions& options) {
    return detail::generate_from_ids(pool, model, {prompt.begin(), prompt.end()}, options, make_decoder(tokenizer));
}

// Generates from prompt token ids without a tokenizer: result.tokens holds the generated ids and
// result.text stays empty; stop strings are refused (invalid_argument). Any checkpoint runs this
// way, whatever its tokenizer files, and can be compared with another implementation id for id.
template <LinearLayer Linear, class Backend>
GenerationResult generate(typename Backend::context& pool, const GPT2Model<Linear, Backend>& model, std::span<const std::int32_t> prompt,
                          const GenerateOptions& options) {
    return detail::generate_from_ids(pool, model, {prompt.begin(), prompt.end()}, options, {});
}

}  // namespace qlm
