#pragma once
// Why a sequence stopped generating: shared by the sampler's callers (generate, the engine) and
// SequenceOutput, which decides it token by token.

namespace qlm {

enum class FinishReason {
    length,  // max_tokens reached, or the model's context is full
    stop,    // a stop string or one of stop_token_ids
    eos,     // the end-of-sequence token (unless ignore_eos)
    abort,   // cancelled by the caller (engine: cancel, client gone)
};

inline const char* to_string(FinishReason r) noexcept {
    switch (r) {
        case FinishReason::length: return "length";
        case FinishReason::stop: return "stop";
        case FinishReason::eos: return "eos";
        case FinishReason::abort: return "abort";
    }
    return "length";
}

}  // namespace qlm
