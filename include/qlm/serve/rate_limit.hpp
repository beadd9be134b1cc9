#pragma once
// Per-key token buckets: each key may make `rate` requests a second on average and `burst` at once.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <iterator>
#include <mutex>
#include <string>
#include <unordered_map>

#include <qlm/core/error.hpp>

namespace qlm::serve {

class TokenBucket {
public:
    using clock = std::chrono::steady_clock;
    TokenBucket(double rate, double burst, clock::time_point now) : rate_(rate), burst_(burst), tokens_(burst), last_(now) {}

    // Takes one token if there is one; else returns the seconds until one is there (> 0).
    double take(clock::time_point now) {
        refill(now);
        if (tokens_ >= 1.0) {
            tokens_ -= 1.0;
            return 0.0;
        }
        return (1.0 - tokens_) / rate_;
    }
    bool full(clock::time_point now) {
        refill(now);
        return tokens_ >= burst_;
    }

private:
    void refill(clock::time_point now) {
        const double dt = std::chrono::duration<double>(now - last_).count();
        if (dt > 0) tokens_ = std::min(burst_, tokens_ + dt * rate_), last_ = now;
    }
    double rate_, burst_, tokens_;
    clock::time_point last_;
};

class RateLimiter {
public:
    using clock = TokenBucket::clock;
    // rate 0: no limit. burst 0: max(1, rate).
    RateLimiter(double rate = 0.0, double burst = 0.0) : rate_(rate), burst_(burst > 0 ? burst : std::max(1.0, rate)) {
        if (!(rate >= 0.0) || !std::isfinite(rate)) throw invalid_argument("qlm: the rate limit must be a finite number >= 0");
        if (!(burst >= 0.0) || !std::isfinite(burst)) throw invalid_argument("qlm: the rate burst must be a finite number >= 0");
        if (rate > 0 && burst > 0 && burst < 1.0) throw invalid_argument("qlm: the rate burst must be >= 1 (one request)");
    }
    bool enabled() const noexcept { return rate_ > 0; }

    // 0 if `key` may go on now (its token taken), else the seconds to wait.
    double acquire(const std::string& key, clock::time_point now = clock::now()) {
        if (!enabled()) return 0.0;
        std::lock_guard lock(mutex_);
        if (buckets_.size() >= max_keys_) forget_full(now);  // keys are client addresses without API keys: stay bounded
        auto it = buckets_.try_emplace(key, rate_, burst_, now).first;
        return it->second.take(now);
    }

private:
    void forget_full(clock::time_point now) {
        for (auto it = buckets_.begin(); it != buckets_.end();) it = it->second.full(now) ? buckets_.erase(it) : std::next(it);
    }
    double rate_, burst_;
    std::size_t max_keys_ = 65536;
    std::mutex mutex_;
    std::unordered_map<std::string, TokenBucket> buckets_;
};

}  // namespace qlm::serve
