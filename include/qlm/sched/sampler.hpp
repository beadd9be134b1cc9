#pragma once
// Sampling parameters and a seeded sampler: greedy, temperature, top-k, top-p (nucleus).
#include <qlm/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace qlm {

struct SamplingParams {
    float temperature = 1.0f;  // 0 = greedy (argmax)
    float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches top_p
    std::size_t top_k = 0;     // 0 = no limit
    std::uint64_t seed = 0;
    std::size_t max_tokens = 64;
    std::vector<std::string> stop;  // generation ends when the text ends with one of these
    bool ignore_eos = false;

    void validate() const {
        if (!(temperature >= 0.0f) || !std::isfinite(temperature))
            throw invalid_argument("qlm: temperature must be a finite number >= 0, found " + std::to_string(temperature));
        if (!(top_p > 0.0f && top_p <= 1.0f))
            throw invalid_argument("qlm: top_p must be in (0, 1], found " + std::to_string(top_p));
        for (const auto& s : stop)
            if (s.empty()) throw invalid_argument("qlm: stop strings must not be empty");
    }
};

class Sampler {
public:
    explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

    std::int32_t sample(std::span<const float> logits) {
        if (logits.empty()) throw invalid_argument("qlm: cannot sample from empty logits");
        if (params_.temperature == 0.0f || params_.top_k == 1) return argmax(logits);

        // Candidates sorted by logit, descending (ties: lower id first), cut to top_k.
        candidates_.resize(logits.size());
        std::iota(candidates_.begin(), candidates_.end(), 0);
        const std::size_t k = params_.top_k == 0 ? logits.size() : std::min(params_.top_k, logits.size());
        auto by_logit = [&](std::int32_t a, std::int32_t b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        };
        std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(k), candidates_.end(), by_logit);
        candidates_.resize(k);

        probs_.resize(k);
        const double max_logit = logits[candidates_[0]];
        double sum = 0.0;
        for (std::size_t i = 0; i < k; ++i) {
            probs_[i] = std::exp((static_cast<double>(logits[candidates_[i]]) - max_logit) / params_.temperature);
            sum += probs_[i];
        }
        std::size_t keep = k;
        if (params_.top_p < 1.0f) {
            double cumulative = 0.0;
            for (std::size_t i = 0; i < k; ++i) {
                cumulative += probs_[i] / sum;
                if (cumulative >= params_.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        double kept_sum = 0.0;
        for (std::size_t i = 0; i < keep; ++i) kept_sum += probs_[i];
        // 53 random bits -> [0, 1): identical on every platform for the same seed.
        const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * kept_sum;
        double cumulative = 0.0;
        for (std::size_t i = 0; i < keep; ++i) {
            cumulative += probs_[i];
            if (u < cumulative) return candidates_[i];
        }
        return candidates_[keep - 1];
    }

    static std::int32_t argmax(std::span<const float> logits) noexcept {
        return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }

    const SamplingParams& params() const noexcept { return params_; }

private:
    SamplingParams params_;
    std::mt19937_64 rng_;
    std::vector<std::int32_t> candidates_;
    std::vector<double> probs_;
};

}  // namespace qlm
