#pragma once
// What the engine reports: one RequestOutput per finished request, and EngineStats for the whole
// engine (the figures a /metrics endpoint exposes).
#include <qlm/sched/finish_reason.hpp>
#include <qlm/sched/scheduler.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qlm {

// Why a request ended: FinishReason's sequence-level reasons (abort is `cancelled` here), and
// `error` for a request the engine could not run.
enum class RequestFinishReason { length, stop, eos, cancelled, error };

constexpr RequestFinishReason to_request_reason(FinishReason r) noexcept {
    switch (r) {
        case FinishReason::length: return RequestFinishReason::length;
        case FinishReason::stop: return RequestFinishReason::stop;
        case FinishReason::eos: return RequestFinishReason::eos;
        case FinishReason::abort: return RequestFinishReason::cancelled;
    }
    return RequestFinishReason::error;
}

inline const char* to_string(RequestFinishReason r) noexcept {
    switch (r) {
        case RequestFinishReason::length: return "length";
        case RequestFinishReason::stop: return "stop";
        case RequestFinishReason::eos: return "eos";
        case RequestFinishReason::cancelled: return "cancelled";
        case RequestFinishReason::error: return "error";
    }
    return "error";
}

struct RequestTimings {
    using clock = std::chrono::steady_clock;
    clock::time_point arrival{};      // add_request()
    clock::time_point first_token{};  // first sampled token (also an EOS that ends the request at once)
    clock::time_point finished{};
    std::vector<double> token_seconds;  // seconds after arrival at which each generated token came out

    double total_seconds() const noexcept { return std::chrono::duration<double>(finished - arrival).count(); }
    // Gaps between consecutive generated tokens (inter-token latency), seconds.
    std::vector<double> inter_token_seconds() const {
        std::vector<double> gaps;
        for (std::size_t i = 1; i < token_seconds.size(); ++i) gaps.push_back(token_seconds[i] - token_seconds[i - 1]);
        return gaps;
    }
};

// A generated token's log-probability, and the most likely alternatives (RequestOptions::logprobs).
struct TokenLogprob {
    std::int32_t token = 0;
    float logprob = 0.0f;
    std::vector<std::pair<std::int32_t, float>> top;  // {id, logprob}, most likely first
};

struct RequestOutput {
    RequestId id = 0;
    std::vector<std::int32_t> prompt_tokens;
    std::vector<std::int32_t> tokens;  // generated tokens kept (SequenceOutput's: no EOS; a stop token only with include_stop_str_in_output)
    std::string text;                  // released text, with EngineConfig::decoder (valid UTF-8, stop string removed)
    RequestFinishReason finish_reason = RequestFinishReason::length;
    std::string error;   // what went wrong, with finish_reason error
    double ttft = 0.0;   // seconds from arrival to the first sampled token; 0 if none was sampled
    RequestTimings timings;
    std::size_t prefix_cached_tokens = 0;  // prompt tokens the prefix cache spared (over all admissions)
    std::size_t preemptions = 0;
    std::vector<TokenLogprob> logprobs;  // one per kept token, with RequestOptions::logprobs >= 0
};

struct EngineStats {
    std::uint64_t steps = 0;                   // forward passes
    std::uint64_t prompt_tokens_computed = 0;  // prompt positions run (recomputation included)
    std::uint64_t decode_tokens_computed = 0;  // generated-token positions run
    std::uint64_t prefix_skipped_tokens = 0;   // prompt positions the prefix cache spared
    std::uint64_t generated_tokens = 0;        // tokens handed to requests
    std::uint64_t preemptions = 0;
    std::uint64_t requests_finished = 0;  // all reasons
    std::uint64_t requests_cancelled = 0;
    std::uint64_t requests_failed = 0;
    std::size_t running = 0;  // after the last step
    std::size_t waiting = 0;  // queued in the scheduler, and added but not yet seen by step()
    std::size_t kv_blocks_total = 0;
    std::size_t kv_blocks_used = 0;   // referenced by sequences
    std::size_t kv_tokens_stored = 0;
    double kv_usage = 0.0;          // tokens stored / token slots of the whole pool, after the last step
    double kv_peak_usage = 0.0;     // the largest kv_usage seen right after a forward pass
    double kv_utilisation = 1.0;    // tokens stored / token slots of the blocks in use
    // Means over the forward passes so far (sampled right after each): the paged pool's
    // utilisation, and what a contiguous cache reserving the whole context per running sequence
    // would have had for the same sequences (tokens stored / (running x context)).
    double kv_utilisation_mean = 1.0;
    double kv_contiguous_utilisation_mean = 1.0;
    std::uint64_t kv_cow_copies = 0;
    std::uint64_t kv_evictions = 0;
    double busy_seconds = 0.0;  // time spent in steps that ran a batch
};

}  // namespace qlm
