#pragma once
// Per-request sampling as vLLM / the OpenAI API offer it (docs/sampling.md):
//
//   logits -> logit_bias -> min_tokens mask -> repetition, frequency and presence penalties
//          -> greedy (temperature 0 or top_k 1: argmax) or
//             temperature -> top-k -> top-p -> min-p -> draw with the request's own seeded RNG.
//
// The penalties' state is incremental: the prompt's distinct ids and the output's id counts are
// updated by accept(), and each step touches only those ids (never a recount of the history).
// The draw walks only the tokens that survive the filters; top-p finds its cut with a weighted
// quickselect (expected O(vocab)) after dropping tokens that provably cannot be in the nucleus.
#include <qlm/core/detail/xsimd.hpp>
#include <qlm/core/error.hpp>
#include <qlm/sched/finish_reason.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace qlm {

namespace detail {

// Well-formed UTF-8 (Unicode 15, table 3-7) at s[i]: n > 0, a complete character of n bytes;
// 0, s ends inside a character that can still be completed; -n, an ill-formed sequence whose
// maximal subpart is n bytes (replaced by one U+FFFD, as the Unicode standard and WHATWG do).
inline int utf8_scan(std::string_view s, std::size_t i) noexcept {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) return 1;
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 == 0xE0) len = 3, lo = 0xA0;
    else if (b0 >= 0xE1 && b0 <= 0xEC) len = 3;
    else if (b0 == 0xED) len = 3, hi = 0x9F;
    else if (b0 >= 0xEE && b0 <= 0xEF) len = 3;
    else if (b0 == 0xF0) len = 4, lo = 0x90;
    else if (b0 >= 0xF1 && b0 <= 0xF3) len = 4;
    else if (b0 == 0xF4) len = 4, hi = 0x8F;
    else return -1;  // 80..C1, F5..FF never start a character
    for (int j = 1; j < len; ++j) {
        if (i + static_cast<std::size_t>(j) >= s.size()) return 0;
        const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(j)]);
        if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF)) return -j;
    }
    return len;
}

inline bool valid_utf8(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size();) {
        const int n = utf8_scan(s, i);
        if (n <= 0) return false;
        i += static_cast<std::size_t>(n);
    }
    return true;
}

inline std::string number_text(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    std::string s = std::to_string(v);
    while (s.size() > 1 && s.back() == '0' && s[s.size() - 2] != '.') s.pop_back();
    if (s.ends_with(".0")) s.resize(s.size() - 2);
    return s;
}

}  // namespace detail

struct SamplingParams {
    float temperature = 1.0f;         // 0 = greedy (argmax)
    float top_p = 1.0f;               // (0, 1]: keep the smallest set of tokens whose probability reaches top_p
    std::size_t top_k = 0;            // 0 = no limit
    float min_p = 0.0f;               // [0, 1], 0 = off: keep tokens with p >= min_p * p_max
    float repetition_penalty = 1.0f;  // > 0, 1 = off: ids in prompt or output: logit > 0 ? logit / r : logit * r
    float presence_penalty = 0.0f;    // [-2, 2]: logit -= presence for ids the output holds
    float frequency_penalty = 0.0f;   // [-2, 2]: logit -= frequency * (count in the output)
    std::vector<std::pair<std::int32_t, float>> logit_bias;  // {id, bias} added to the logit; -inf bans the id
    std::uint64_t seed = 0;
    std::size_t max_tokens = 64;
    std::size_t min_tokens = 0;       // no EOS / stop token / stop string ends the output before this many tokens
    std::vector<std::string> stop;    // the output ends before the first stop string it contains
    std::vector<std::int32_t> stop_token_ids;  // these ids end the output as EOS does (reason: stop)
    bool include_stop_str_in_output = false;   // keep the stop string (or stop token) that ended the output
    bool ignore_eos = false;

    // Throws qlm::invalid_argument naming the first field out of range.
    void validate() const {
        using detail::number_text;
        const auto fail = [](const std::string& what) { throw invalid_argument("qlm: " + what); };
        if (!(temperature >= 0.0f) || !std::isfinite(temperature))
            fail("temperature must be a finite number >= 0, found " + number_text(temperature));
        if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], found " + number_text(top_p));
        if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1], found " + number_text(min_p));
        if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
            fail("repetition_penalty must be a finite number > 0 (1 = off), found " + number_text(repetition_penalty));
        if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
            fail("presence_penalty must be in [-2, 2], found " + number_text(presence_penalty));
        if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
            fail("frequency_penalty must be in [-2, 2], found " + number_text(frequency_penalty));
        for (std::size_t i = 0; i < logit_bias.size(); ++i) {
            const auto [id, bias] = logit_bias[i];
            if (id < 0) fail("logit_bias: token id " + std::to_string(id) + " is negative");
            if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
                fail("logit_bias for token id " + std::to_string(id) + " must be a number (or -inf to ban it), found " +
                     number_text(bias));
            for (std::size_t j = 0; j < i; ++j)
                if (logit_bias[j].first == id) fail("logit_bias names token id " + std::to_string(id) + " twice");
        }
        for (const std::int32_t id : stop_token_ids)
            if (id < 0) fail("stop_token_ids: token id " + std::to_string(id) + " is negative");
        if (min_tokens > max_tokens)
            fail("min_tokens (" + std::to_string(min_tokens) + ") must not exceed max_tokens (" + std::to_string(max_tokens) + ")");
        for (const auto& s : stop) {
            if (s.empty()) fail("stop strings must not be empty");
            if (!detail::valid_utf8(s)) fail("stop string is not valid UTF-8");
        }
    }

    bool has_penalties() const noexcept {
        return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
    }
};

class Sampler {
public:
    // `prompt`: the request's prompt ids (repetition_penalty applies to them as to the output).
    // `eos_token_id` (< 0: none): masked, with stop_token_ids, until min_tokens tokens are accepted.
    explicit Sampler(const SamplingParams& params, std::span<const std::int32_t> prompt = {}, std::int32_t eos_token_id = -1)
        : params_(params), rng_(params.seed) {
        params_.validate();
        if (params_.min_tokens > 0) {
            if (eos_token_id >= 0 && !params_.ignore_eos) mask_ids_.push_back(eos_token_id);
            mask_ids_.insert(mask_ids_.end(), params_.stop_token_ids.begin(), params_.stop_token_ids.end());
        }
        for (const std::int32_t id : prompt) {
            if (id < 0) throw invalid_argument("qlm: prompt token id " + std::to_string(id) + " is negative");
            if (params_.repetition_penalty != 1.0f) remember_seen(id);
        }
    }

    // The next token for these logits (one row, vocab_size entries), under all the parameters.
    std::int32_t sample(std::span<const float> logits) {
        const std::span<const float> l = processed_logits(logits);
        if (params_.temperature == 0.0f || params_.top_k == 1) {
            const std::int32_t best = argmax(l);
            if (l[static_cast<std::size_t>(best)] == -std::numeric_limits<float>::infinity()) throw_all_banned();
            return best;
        }
        return draw(l);
    }

    // Records a generated token: its count for the penalties, and one more towards min_tokens.
    void accept(std::int32_t token) {
        if (token < 0) throw invalid_argument("qlm: accepted token id " + std::to_string(token) + " is negative");
        ++generated_;
        if (params_.repetition_penalty != 1.0f) remember_seen(token);
        if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
            const auto [it, fresh] = count_index_.try_emplace(token, counts_.size());
            if (fresh)
                counts_.emplace_back(token, 1u);
            else
                ++counts_[it->second].second;
        }
        max_id_ = std::max(max_id_, token);
    }

    // The logits after logit_bias, the min_tokens mask and the penalties (before temperature): a
    // view of `logits` itself when nothing applies, else of a buffer valid until the next call.
    std::span<const float> processed_logits(std::span<const float> logits) {
        if (logits.empty()) throw invalid_argument("qlm: cannot sample from empty logits");
        const std::size_t vocab = logits.size();
        const bool masking = generated_ < params_.min_tokens && !mask_ids_.empty();
        const bool penalising = !seen_.empty() || !counts_.empty();
        if (params_.logit_bias.empty() && !masking && !penalising) return logits;
        if (max_id_ >= 0 && static_cast<std::size_t>(max_id_) >= vocab)
            throw invalid_argument("qlm: token id " + std::to_string(max_id_) + " of the prompt or output is outside the vocabulary of " +
                                   std::to_string(vocab) + " logits");
        work_.assign(logits.begin(), logits.end());
        for (const auto& [id, bias] : params_.logit_bias) {
            if (static_cast<std::size_t>(id) >= vocab)
                throw invalid_argument("qlm: logit_bias names token id " + std::to_string(id) + ", outside the vocabulary of " +
                                       std::to_string(vocab) + " tokens");
            work_[static_cast<std::size_t>(id)] += bias;
        }
        if (masking)
            for (const std::int32_t id : mask_ids_)
                if (static_cast<std::size_t>(id) < vocab) work_[static_cast<std::size_t>(id)] = -std::numeric_limits<float>::infinity();
        const float r = params_.repetition_penalty;
        for (const std::int32_t id : seen_) {  // vLLM: prompt and output ids alike
            float& x = work_[static_cast<std::size_t>(id)];
            x = x > 0.0f ? x / r : x * r;
        }
        const float presence = params_.presence_penalty, frequency = params_.frequency_penalty;
        for (const auto& [id, count] : counts_)  // OpenAI: output ids only
            work_[static_cast<std::size_t>(id)] -= frequency * static_cast<float>(count) + presence;
        return work_;
    }

    // First index of the largest logit (vectorised: a max pass, then a search for it).
    static std::int32_t argmax(std::span<const float> logits) noexcept {
        using batch = xsimd::batch<float>;
        constexpr std::size_t lanes = batch::size;
        const std::size_t n = logits.size();
        const float* x = logits.data();
        if (n < 4 * lanes) return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        batch m0 = batch::load_unaligned(x), m1 = m0;
        std::size_t i = lanes;
        for (; i + 2 * lanes <= n; i += 2 * lanes) {
            m0 = xsimd::max(m0, batch::load_unaligned(x + i));
            m1 = xsimd::max(m1, batch::load_unaligned(x + i + lanes));
        }
        alignas(64) float lanes_max[lanes];
        xsimd::max(m0, m1).store_aligned(lanes_max);
        float m = *std::max_element(lanes_max, lanes_max + lanes);
        for (; i < n; ++i) m = std::max(m, x[i]);
        const batch vm(m);
        for (i = 0; i + lanes <= n; i += lanes)
            if (xsimd::any(batch::load_unaligned(x + i) == vm)) break;
        for (; i < n; ++i)
            if (x[i] == m) return static_cast<std::int32_t>(i);
        // Only NaNs get here (no element equals the max): fall back to the sequential definition.
        return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }

    const SamplingParams& params() const noexcept { return params_; }
    std::size_t accepted() const noexcept { return generated_; }

private:
    struct Candidate {
        float logit;
        std::int32_t id;
        float p;  // exp((logit - max) / temperature): probability relative to the most likely token
    };
    // Rank order: higher logit first, ties to the lower id (so results never depend on the sort).
    static bool better(const Candidate& a, const Candidate& b) noexcept {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    }

    [[noreturn]] static void throw_all_banned() {
        throw invalid_argument("qlm: every token's logit is -inf after logit_bias and the min_tokens mask: nothing to sample");
    }

    void remember_seen(std::int32_t id) {
        if (seen_set_.insert(id).second) seen_.push_back(id);
        max_id_ = std::max(max_id_, id);
    }

    std::int32_t draw(std::span<const float> l) {
        const std::size_t vocab = l.size();
        const float m = l[static_cast<std::size_t>(argmax(l))];
        if (m == -std::numeric_limits<float>::infinity()) throw_all_banned();
        const float inv_t = 1.0f / params_.temperature;
        const bool top_k = params_.top_k > 0 && params_.top_k < vocab;
        const bool top_p = params_.top_p < 1.0f;
        const float min_p = params_.min_p;
        double z = 0.0;  // the mass that top-p's fraction refers to: the top-k set's, else the vocabulary's
        cand_.clear();
        if (top_k) {
            select_top_k(l, params_.top_k);
            for (auto& c : cand_) z += (c.p = std::exp((c.logit - m) * inv_t));
        } else {
            z = exponentiate(l, m, inv_t);
            if (!top_p && min_p == 0.0f) return draw_from(std::span<const float>(probs_), z);
            gather(l, std::max(top_p ? nucleus_floor(static_cast<double>(params_.top_p) * z) : 0.0f, min_p));
        }
        if (top_k && min_p > 0.0f)
            std::erase_if(cand_, [&](const Candidate& c) { return c.p < min_p; });
        if (top_p) cand_.resize(nucleus(static_cast<double>(params_.top_p) * z));
        return draw_from(cand_);
    }

    // The top_k best candidates into cand_ (any order), by a heap when k is small, else nth_element.
    void select_top_k(std::span<const float> l, std::size_t k) {
        using batch = xsimd::batch<float>;
        constexpr std::size_t lanes = batch::size;
        const std::size_t n = l.size();
        const auto worse = [](const Candidate& a, const Candidate& b) { return better(a, b); };  // heap top = worst kept
        if (k > 1024) {
            for (std::size_t i = 0; i < n; ++i) cand_.push_back({l[i], static_cast<std::int32_t>(i), 0.0f});
            std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k - 1), cand_.end(), better);
            cand_.resize(k);
            return;
        }
        for (std::size_t i = 0; i < k; ++i) cand_.push_back({l[i], static_cast<std::int32_t>(i), 0.0f});
        std::make_heap(cand_.begin(), cand_.end(), worse);
        std::size_t i = k;
        // A later id with the same logit ranks lower, so only a strictly larger logit enters the heap.
        const auto offer = [&](std::size_t j) {
            if (l[j] > cand_.front().logit) {
                std::pop_heap(cand_.begin(), cand_.end(), worse);
                cand_.back() = {l[j], static_cast<std::int32_t>(j), 0.0f};
                std::push_heap(cand_.begin(), cand_.end(), worse);
            }
        };
        for (; i < n && i % lanes != 0; ++i) offer(i);
        for (; i + lanes <= n; i += lanes)
            if (xsimd::any(batch::load_unaligned(l.data() + i) > batch(cand_.front().logit)))
                for (std::size_t j = i; j < i + lanes; ++j) offer(j);
        for (; i < n; ++i) offer(i);
    }

    // probs_[i] = exp((l[i] - max) / T) for the whole vocabulary; returns their sum.
    double exponentiate(std::span<const float> l, float m, float inv_t) {
        using batch = xsimd::batch<float>;
        constexpr std::size_t lanes = batch::size;
        const std::size_t n = l.size();
        probs_.resize(n);
        const batch vm(m), vt(inv_t);
        double z = 0.0;
        std::size_t i = 0;
        for (; i + 4 * lanes <= n; i += 4 * lanes) {  // sums of 4 batches in float, accumulated in double
            batch s(0.0f);
            for (std::size_t j = i; j < i + 4 * lanes; j += lanes) {
                const batch e = xsimd::exp((batch::load_unaligned(l.data() + j) - vm) * vt);
                e.store_unaligned(probs_.data() + j);
                s += e;
            }
            z += static_cast<double>(xsimd::hadd(s));
        }
        for (; i < n; ++i) z += (probs_[i] = std::exp((l[i] - m) * inv_t));
        return z;
    }

    // A floor for the nucleus: the largest f found such that the tokens with p >= f hold at least
    // `target`. The nucleus is the smallest best-first prefix reaching `target`, and {p >= f} is such a
    // prefix, so every nucleus token has p >= f. Two vectorised passes, each summing the mass above 8
    // thresholds at once: powers of 1/16 first, then steps of sqrt(2) inside the interval found; so
    // the quickselect sees the nucleus and at most the tokens up to 1.41x below its last one. The
    // sums are in float: a threshold counts only if it clears the target by 0.1%.
    float nucleus_floor(double target) const {
        std::array<float, 8> t{};
        for (std::size_t j = 0; j < 8; ++j) t[j] = std::ldexp(1.0f, -4 * static_cast<int>(j));  // 1, 1/16, ... 2^-28
        std::array<double, 8> mass = masses_above(t);
        std::size_t j = 0;
        while (j < 8 && mass[j] < target * (1.0 + 1e-3)) ++j;
        if (j == 8) return 0.0f;
        if (j == 0) return t[0];  // the most likely tokens alone (p = 1) reach it
        const float base = t[j];
        for (std::size_t k = 0; k < 8; ++k) t[k] = base * std::sqrt(std::ldexp(1.0f, static_cast<int>(8 - k)));  // 16x .. 1.41x
        mass = masses_above(t);
        for (std::size_t k = 0; k < 8; ++k)
            if (mass[k] >= target * (1.0 + 1e-3)) return t[k];
        return base;
    }

    // For each threshold, the sum of probs_ at or above it.
    std::array<double, 8> masses_above(const std::array<float, 8>& t) const {
        using batch = xsimd::batch<float>;
        constexpr std::size_t lanes = batch::size;
        const std::size_t n = probs_.size();
        std::array<double, 8> out{};
        std::array<batch, 8> acc;
        std::array<batch, 8> thr;
        for (std::size_t k = 0; k < 8; ++k) {
            acc[k] = batch(0.0f);
            thr[k] = batch(t[k]);
        }
        std::size_t i = 0;
        for (std::size_t flush = 0; i + lanes <= n; i += lanes) {
            const batch v = batch::load_unaligned(probs_.data() + i);
            for (std::size_t k = 0; k < 8; ++k) acc[k] += xsimd::select(v >= thr[k], v, batch(0.0f));
            if (++flush == 256) {  // keep float sums short: into double every 256 batches
                for (std::size_t k = 0; k < 8; ++k) {
                    out[k] += static_cast<double>(xsimd::hadd(acc[k]));
                    acc[k] = batch(0.0f);
                }
                flush = 0;
            }
        }
        for (std::size_t k = 0; k < 8; ++k) {
            out[k] += static_cast<double>(xsimd::hadd(acc[k]));
            for (std::size_t r = i; r < n; ++r)
                if (probs_[r] >= t[k]) out[k] += probs_[r];
        }
        return out;
    }

    // cand_ = the tokens with p >= from (and p > 0), in id order; blocks with none are skipped whole.
    void gather(std::span<const float> l, float from) {
        using batch = xsimd::batch<float>;
        constexpr std::size_t lanes = batch::size;
        const std::size_t n = probs_.size();
        const batch vf(from);
        std::size_t i = 0;
        const auto take = [&](std::size_t j) {
            if (probs_[j] >= from && probs_[j] > 0.0f) cand_.push_back({l[j], static_cast<std::int32_t>(j), probs_[j]});
        };
        for (; i + lanes <= n; i += lanes)
            if (xsimd::any(batch::load_unaligned(probs_.data() + i) >= vf))
                for (std::size_t j = i; j < i + lanes; ++j) take(j);
        for (; i < n; ++i) take(i);
    }

    // Top-p: reorders cand_ so that the smallest best-first prefix whose mass reaches `target` comes
    // first, and returns its length (all of cand_ if their mass falls short). A quickselect that keeps
    // the mass of what it has placed before `lo`; only the last small range is sorted.
    std::size_t nucleus(double target) {
        std::size_t lo = 0, hi = cand_.size();
        double before = 0.0;
        while (hi - lo > 24) {
            const std::size_t mid = lo + (hi - lo) / 2;
            Candidate a = cand_[lo], b = cand_[mid], c = cand_[hi - 1];
            if (better(b, a)) std::swap(a, b);
            if (better(c, b)) std::swap(b, c);
            if (better(b, a)) std::swap(a, b);
            const Candidate pivot = b;  // median of three
            const auto split = std::partition(cand_.begin() + static_cast<std::ptrdiff_t>(lo),
                                              cand_.begin() + static_cast<std::ptrdiff_t>(hi),
                                              [&](const Candidate& x) { return better(x, pivot); });
            const auto s = static_cast<std::size_t>(split - cand_.begin());
            const auto at = std::find_if(split, cand_.begin() + static_cast<std::ptrdiff_t>(hi),
                                         [&](const Candidate& x) { return x.id == pivot.id; });
            std::iter_swap(split, at);  // the pivot right after everything better than it
            double upper = 0.0;
            for (std::size_t i = lo; i < s; ++i) upper += cand_[i].p;
            if (before + upper >= target) {
                hi = s;
            } else if (before + upper + cand_[s].p >= target) {
                return s + 1;
            } else {
                before += upper + cand_[s].p;
                lo = s + 1;
            }
        }
        std::sort(cand_.begin() + static_cast<std::ptrdiff_t>(lo), cand_.begin() + static_cast<std::ptrdiff_t>(hi), better);
        for (std::size_t i = lo; i < hi; ++i) {
            before += cand_[i].p;
            if (before >= target) return i + 1;
        }
        return hi;
    }

    // 53 random bits -> u in [0, 1): identical on every platform for the same seed.
    double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

    // Draws from relative probabilities p (summing to `total`) in id order: whole blocks are skipped by
    // their (vectorised) sums, and only the block that holds the draw is walked token by token.
    std::int32_t draw_from(std::span<const float> p, double total) {
        using batch = xsimd::batch<float>;
        constexpr std::size_t block = 16 * batch::size;
        const double u = uniform() * total;
        double cumulative = 0.0;
        std::size_t i = 0, last = 0;
        while (i < p.size()) {
            const std::size_t end = std::min(p.size(), i + block);
            if (end - i == block) {
                batch s(0.0f);
                for (std::size_t j = i; j < end; j += batch::size) s += batch::load_unaligned(p.data() + j);
                const double sum = static_cast<double>(xsimd::hadd(s));
                if (cumulative + sum * (1.0 + 1e-4) < u) {  // surely not in this block (float sum: 1e-4 margin)
                    cumulative += sum;
                    i = end;
                    continue;
                }
            }
            for (; i < end; ++i) {
                if (p[i] <= 0.0f) continue;
                cumulative += p[i];
                last = i;
                if (u < cumulative) return static_cast<std::int32_t>(i);
            }
        }
        for (std::size_t j = p.size(); j-- > last;)  // rounding: u within an ulp of the sum
            if (p[j] > 0.0f) return static_cast<std::int32_t>(j);
        return static_cast<std::int32_t>(last);
    }

    // Draws from candidates in their order: blocks of 32 are skipped by their sums (four independent
    // accumulators), and only the block that holds the draw is walked token by token.
    std::int32_t draw_from(std::span<const Candidate> c) {
        constexpr std::size_t block = 32;
        const auto block_sum = [&](std::size_t i, std::size_t end) {
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
            for (; i + 4 <= end; i += 4) {
                s0 += c[i].p;
                s1 += c[i + 1].p;
                s2 += c[i + 2].p;
                s3 += c[i + 3].p;
            }
            for (; i < end; ++i) s0 += c[i].p;
            return (s0 + s1) + (s2 + s3);
        };
        double sum = 0.0;
        for (std::size_t i = 0; i < c.size(); i += block) sum += block_sum(i, std::min(c.size(), i + block));
        const double u = uniform() * sum;
        double cumulative = 0.0;
        std::int32_t last = c.front().id;
        for (std::size_t i = 0; i < c.size(); i += block) {
            const std::size_t end = std::min(c.size(), i + block);
            const double bs = block_sum(i, end);
            if (cumulative + bs * (1.0 + 1e-12) < u) {  // surely not in this block
                cumulative += bs;
                continue;
            }
            for (std::size_t j = i; j < end; ++j) {
                if (c[j].p <= 0.0f) continue;
                cumulative += c[j].p;
                last = c[j].id;
                if (u < cumulative) return c[j].id;
            }
        }
        return last;  // rounding: u within an ulp of the sum
    }

    SamplingParams params_;
    std::mt19937_64 rng_;
    std::size_t generated_ = 0;
    std::int32_t max_id_ = -1;                     // largest id seen in the prompt or accepted
    std::vector<std::int32_t> mask_ids_;           // EOS and stop_token_ids, while generated_ < min_tokens
    std::vector<std::int32_t> seen_;               // distinct prompt and output ids (repetition_penalty)
    std::unordered_set<std::int32_t> seen_set_;
    std::vector<std::pair<std::int32_t, std::uint32_t>> counts_;  // distinct output ids and counts
    std::unordered_map<std::int32_t, std::size_t> count_index_;  // id -> index in counts_
    std::vector<float> work_;    // processed logits
    std::vector<float> probs_;   // relative probabilities over the vocabulary
    std::vector<Candidate> cand_;
};

}  // namespace qlm
