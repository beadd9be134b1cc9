#pragma once
// A sequence's output as it grows token by token (docs/sampling.md):
//  - IncrementalDetokenizer: ids -> text that is always valid UTF-8, released as soon as each
//    character is complete; it decodes only a bounded window of the latest tokens each step.
//  - StopStringMatcher: finds stop strings in that text, also when one is split across tokens, and
//    holds back only the text that could still begin a stop string.
//  - SequenceOutput: both, plus the finish rules (EOS, stop_token_ids, stop strings, max_tokens,
//    min_tokens), as vLLM's output processor applies them.
#include <qlm/core/error.hpp>
#include <qlm/sched/finish_reason.hpp>
#include <qlm/sched/sampler.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qlm {

// Token ids -> their bytes (a tokenizer's decode).
using Decoder = std::function<std::string(std::span<const std::int32_t>)>;

// Anything with a tokenizer's decode (GPT2Tokenizer).
template <class T>
concept TokenDecoder = requires(const T& t, std::span<const std::int32_t> ids) {
    { t.decode(ids) } -> std::same_as<std::string>;
};

// A Decoder that calls `tokenizer.decode` (the tokenizer must outlive it).
template <TokenDecoder T>
Decoder make_decoder(const T& tokenizer) {
    return [&tokenizer](std::span<const std::int32_t> ids) { return tokenizer.decode(ids); };
}

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Releases the text of a growing token sequence, only ever as complete, well-formed UTF-8.
// A token that ends inside a character holds its bytes until the character completes; an
// ill-formed sequence becomes U+FFFD (one per maximal subpart) once it is known to be ill-formed,
// and an incomplete character left at finish() becomes U+FFFD too. Each append() decodes only the
// tokens whose bytes are not yet all released (at most four, a character's length, plus the new
// one), never the whole output; for byte-level BPE, where decoding concatenates each token's
// bytes, the released text equals decode(all tokens) whenever that is valid UTF-8.
class IncrementalDetokenizer {
public:
    explicit IncrementalDetokenizer(Decoder decode) : decode_(std::move(decode)) {
        if (!decode_) throw invalid_argument("qlm: IncrementalDetokenizer needs a decoder");
    }

    // Adds a token; returns the text it completes (possibly empty).
    std::string append(std::int32_t token) {
        tokens_.push_back(token);
        const std::string window = decode_(std::span<const std::int32_t>(tokens_).subspan(window_start_));
        if (window.size() < window_released_)
            throw invalid_argument("qlm: the decoder's text for a token window shrank as a token was added");
        std::string out;
        std::size_t i = window_released_;
        while (i < window.size()) {
            const int n = detail::utf8_scan(window, i);
            if (n == 0) break;  // incomplete character: wait for the next token
            if (n > 0)
                out.append(window, i, static_cast<std::size_t>(n));
            else
                out += kReplacementCharacter;
            i += static_cast<std::size_t>(n > 0 ? n : -n);
        }
        if (i == window.size()) {  // everything released: the next window starts after this token
            window_start_ = tokens_.size();
            window_released_ = 0;
        } else {
            window_released_ = i;
        }
        return out;
    }

    // The end of the sequence: an incomplete character still held becomes U+FFFD.
    std::string finish() {
        std::string out;
        if (window_start_ < tokens_.size()) out = kReplacementCharacter;
        window_start_ = tokens_.size();
        window_released_ = 0;
        return out;
    }

    // Bytes decoded but not yet released (an incomplete character), for tests and diagnostics.
    std::size_t held_tokens() const noexcept { return tokens_.size() - window_start_; }

private:
    Decoder decode_;
    std::vector<std::int32_t> tokens_;
    std::size_t window_start_ = 0;     // first token whose bytes are not all released
    std::size_t window_released_ = 0;  // bytes of decode(tokens_[window_start_..]) already released
};

// Incremental stop-string search over a stream of valid UTF-8 text. feed() returns the text that
// is safe to release: everything except the longest suffix that is a proper beginning of some
// stop string. When a stop string completes, the one that starts earliest wins (whatever the
// order of the list; at equal starts, the shorter, which completed first); the text before it is
// released (with it, if include_stop_str_in_output) and whatever follows it is dropped.
class StopStringMatcher {
public:
    StopStringMatcher(std::vector<std::string> stops, bool include_stop_str_in_output)
        : stops_(std::move(stops)), include_(include_stop_str_in_output) {
        for (const auto& s : stops_)
            if (s.empty()) throw invalid_argument("qlm: stop strings must not be empty");
    }

    struct Result {
        std::string text;      // safe to release now
        bool stopped = false;  // a stop string completed: nothing more is released
    };

    // `allow_stop` false (before min_tokens): stop strings are not acted on yet, but text that could
    // begin one is still held, so that one completed later is found whole.
    Result feed(std::string_view delta, bool allow_stop = true) {
        Result r;
        if (stopped_) return r;
        held_.append(delta);
        if (allow_stop) {
            std::size_t best = std::string::npos, best_len = 0;
            for (const auto& s : stops_) {
                const std::size_t at = held_.find(s);
                if (at != std::string::npos && (at < best || (at == best && s.size() < best_len))) {
                    best = at;
                    best_len = s.size();
                }
            }
            if (best != std::string::npos) {
                r.text = held_.substr(0, include_ ? best + best_len : best);
                r.stopped = stopped_ = true;
                held_.clear();
                return r;
            }
        }
        const std::size_t keep = held_suffix();
        r.text = held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
        return r;
    }

    // The end of the stream: the held text is released (no stop string can complete any more).
    std::string flush() {
        std::string out = std::move(held_);
        held_.clear();
        return out;
    }

    bool stopped() const noexcept { return stopped_; }
    std::string_view held() const noexcept { return held_; }

private:
    // Length of the longest suffix of held_ that is a proper prefix of a stop string.
    std::size_t held_suffix() const {
        std::size_t best = 0;
        for (const auto& s : stops_) {
            const std::size_t most = std::min(s.size() - 1, held_.size());
            for (std::size_t len = most; len > best; --len)
                if (std::string_view(held_).substr(held_.size() - len) == std::string_view(s).substr(0, len)) {
                    best = len;
                    break;
                }
        }
        return best;
    }

    std::vector<std::string> stops_;
    bool include_;
    bool stopped_ = false;
    std::string held_;  // text not yet released: at most the longest stop string's length - 1 bytes
};

// One sequence's output under its SamplingParams: the finish rules, released text, kept tokens.
//  - EOS (unless ignore_eos) ends it with `eos`; EOS is not kept in tokens() nor in the text.
//  - a stop_token_ids id ends it with `stop`; kept (in tokens() and text) only with
//    include_stop_str_in_output.
//  - a stop string ends it with `stop`; the text ends before it (or after it, with
//    include_stop_str_in_output); tokens() keeps every token decoded so far.
//  - max_tokens kept tokens end it with `length`.
//  - before min_tokens tokens, EOS, stop ids and stop strings end nothing (the Sampler masks EOS and
//    stop ids meanwhile; a caller that samples otherwise sees them kept as ordinary tokens).
// Without a decoder (generation from ids only) there is no text, and stop strings are refused.
class SequenceOutput {
public:
    struct Step {
        std::string text_delta;  // newly released text (valid UTF-8)
        bool finished = false;
        FinishReason reason = FinishReason::length;  // meaningful when finished
    };

    SequenceOutput(const SamplingParams& params, Decoder decode, int eos_token_id)
        : params_(params), eos_(eos_token_id), stops_(params.stop, params.include_stop_str_in_output) {
        params_.validate();
        if (decode)
            detok_.emplace(std::move(decode));
        else if (!params_.stop.empty())
            throw invalid_argument("qlm: stop strings need a tokenizer to decode the generated tokens");
    }

    Step append(std::int32_t token) {
        if (finished_)
            throw invalid_argument("qlm: SequenceOutput::append after the sequence finished (" +
                                   std::string(to_string(reason_)) + ")");
        const bool may_stop = tokens_.size() >= params_.min_tokens;
        if (may_stop && !params_.ignore_eos && token == eos_) return finish(FinishReason::eos, {});
        if (may_stop && std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) != params_.stop_token_ids.end()) {
            std::string last;
            if (params_.include_stop_str_in_output) {
                tokens_.push_back(token);
                if (detok_) last = stops_.feed(detok_->append(token), false).text;
            }
            return finish(FinishReason::stop, std::move(last));
        }
        tokens_.push_back(token);
        Step step;
        if (detok_) {
            auto r = stops_.feed(detok_->append(token), tokens_.size() >= params_.min_tokens);
            if (r.stopped) {
                finished_ = true;
                reason_ = FinishReason::stop;
                text_ += r.text;
                return {std::move(r.text), true, FinishReason::stop};
            }
            step.text_delta = std::move(r.text);
        }
        if (tokens_.size() >= params_.max_tokens) return finish(FinishReason::length, std::move(step.text_delta));
        text_ += step.text_delta;
        return step;
    }

    // Ends the sequence from outside (the context is full: length; cancelled: abort) and returns the
    // text still held (an incomplete character as U+FFFD, a possible stop string's beginning as is).
    // After the sequence finished by itself, returns "" and keeps its reason.
    std::string flush(FinishReason reason = FinishReason::length) {
        if (finished_) return {};
        return finish(reason, {}).text_delta;
    }

    const std::vector<std::int32_t>& tokens() const noexcept { return tokens_; }
    const std::string& text() const noexcept { return text_; }  // all released text: valid UTF-8
    bool finished() const noexcept { return finished_; }
    FinishReason finish_reason() const noexcept { return reason_; }
    const SamplingParams& params() const noexcept { return params_; }

private:
    Step finish(FinishReason reason, std::string released) {
        if (detok_) {
            released += stops_.feed(detok_->finish(), false).text;
            released += stops_.flush();
        }
        finished_ = true;
        reason_ = reason;
        text_ += released;
        return {std::move(released), true, reason};
    }

    SamplingParams params_;
    int eos_;
    std::optional<IncrementalDetokenizer> detok_;  // none without a decoder
    StopStringMatcher stops_;
    std::vector<std::int32_t> tokens_;
    std::string text_;
    bool finished_ = false;
    FinishReason reason_ = FinishReason::length;
};

}  // namespace qlm
