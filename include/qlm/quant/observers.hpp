#pragma once
// Activation observers for static quantization. Each sees batches of activations through
// observe(std::span<const float>) and turns what it saw into QParams {scale, zero_point} with
// compute_params(bits, symmetric), using the same code convention as the weights (rtn.hpp,
// docs/quant-format.md): unsigned codes q = clamp(round(x/s) + z, 0, 2^b - 1), x ~ (q - z)*s,
// range widened to include 0; symmetric: z = 2^(b-1), s = 2*c/(2^b - 1) for the clip value c;
// asymmetric: s = (hi - lo)/(2^b - 1), z = round(-lo/s). For int8 symmetric, q - 128 is the signed
// int8 value and s = c/127.5, as PyTorch's qint8 observers compute it.
//
//   MinMaxObserver               running min / max
//   MovingAverageMinMaxObserver  min += c*(batch_min - min), c = 0.01 (PyTorch's default)
//   PercentileObserver           clip at a percentile (default 99.99) of |x| (sym) or of both tails
//   MseObserver                  clip range minimising the expected quantization MSE
//   ChannelAbsMaxObserver        max |x_j| per channel (input to SmoothQuant)
//
// The histogram observers keep a fixed number of bins over [-R, R]; R is the first batch's
// max |x| and doubles (merging bin pairs exactly) when later data exceeds it, so memory stays
// bounded whatever the number of observed values.
#include <qlm/core/error.hpp>
#include <qlm/core/tensor.hpp>
#include <qlm/quant/rtn.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qlm {

// What every observer provides.
template <class T>
concept Observer = requires(T& o, const T& co, std::span<const float> batch, int bits, bool symmetric) {
    o.observe(batch);
    { co.compute_params(bits, symmetric) } -> std::same_as<QParams>;
    { co.count() } -> std::convertible_to<std::uint64_t>;
};

namespace detail {

inline void check_observer_bits(int bits, const char* who) {
    if (bits < 2 || bits > 8)
        throw invalid_argument(std::string("qlm::") + who + "::compute_params: bits must be in [2, 8], found " +
                               std::to_string(bits));
}

inline MinMax observe_min_max(std::span<const float> batch, const char* who) {
    MinMax m;
    for (float x : batch) {
        if (!std::isfinite(x)) throw invalid_argument(std::string("qlm::") + who + ": observed NaN or Inf");
        m.lo = std::min(m.lo, x);
        m.hi = std::max(m.hi, x);
    }
    return m;
}

inline void check_observed(std::uint64_t count, const char* who) {
    if (count == 0) throw invalid_argument(std::string("qlm::") + who + "::compute_params: nothing observed yet");
}

}  // namespace detail

// ---- MinMax ------------------------------------------------------------------------------------
class MinMaxObserver {
public:
    void observe(std::span<const float> batch) {
        if (batch.empty()) return;
        const auto m = detail::observe_min_max(batch, "MinMaxObserver");
        lo_ = std::min(lo_, m.lo);
        hi_ = std::max(hi_, m.hi);
        count_ += batch.size();
    }
    QParams compute_params(int bits, bool symmetric) const {
        detail::check_observer_bits(bits, "MinMaxObserver");
        detail::check_observed(count_, "MinMaxObserver");
        return params_from_range(lo_, hi_, bits, symmetric);
    }
    float min() const noexcept { return lo_; }
    float max() const noexcept { return hi_; }
    std::uint64_t count() const noexcept { return count_; }
    void reset() noexcept { *this = MinMaxObserver{}; }

private:
    float lo_ = std::numeric_limits<float>::infinity();
    float hi_ = -std::numeric_limits<float>::infinity();
    std::uint64_t count_ = 0;
};

// ---- Moving-average MinMax ---------------------------------------------------------------------
// The first batch sets min / max; each later batch moves them by c * (batch value - current).
class MovingAverageMinMaxObserver {
public:
    explicit MovingAverageMinMaxObserver(float averaging_constant = 0.01f) : c_(averaging_constant) {
        if (!(c_ > 0.0f && c_ <= 1.0f))
            throw invalid_argument("qlm::MovingAverageMinMaxObserver: averaging constant must be in (0, 1], found " +
                                   std::to_string(c_));
    }
    void observe(std::span<const float> batch) {
        if (batch.empty()) return;
        const auto m = detail::observe_min_max(batch, "MovingAverageMinMaxObserver");
        if (count_ == 0) {
            lo_ = m.lo;
            hi_ = m.hi;
        } else {
            lo_ += c_ * (m.lo - lo_);
            hi_ += c_ * (m.hi - hi_);
        }
        count_ += batch.size();
    }
    QParams compute_params(int bits, bool symmetric) const {
        detail::check_observer_bits(bits, "MovingAverageMinMaxObserver");
        detail::check_observed(count_, "MovingAverageMinMaxObserver");
        return params_from_range(lo_, hi_, bits, symmetric);
    }
    float min() const noexcept { return lo_; }
    float max() const noexcept { return hi_; }
    float averaging_constant() const noexcept { return c_; }
    std::uint64_t count() const noexcept { return count_; }

private:
    float c_;
    float lo_ = 0.0f;
    float hi_ = 0.0f;
    std::uint64_t count_ = 0;
};

// ---- Histogram over [-R, R] --------------------------------------------------------------------
// `bins` equal bins (a multiple of 4); R grows by doubling, which merges bin pairs exactly.
class RangeHistogram {
public:
    explicit RangeHistogram(std::size_t bins = 2048) : counts_(bins, 0) {
        if (bins < 8 || bins % 4 != 0)
            throw invalid_argument("qlm::RangeHistogram: bins must be a multiple of 4 and >= 8, found " + std::to_string(bins));
    }

    void add(std::span<const float> batch, const char* who = "RangeHistogram") {
        if (batch.empty()) return;
        const auto m = detail::observe_min_max(batch, who);
        lo_ = std::min(lo_, m.lo);
        hi_ = std::max(hi_, m.hi);
        total_ += batch.size();
        const double amax = std::max(std::fabs(static_cast<double>(m.lo)), std::fabs(static_cast<double>(m.hi)));
        if (range_ == 0.0) {
            if (amax == 0.0) {  // only zeros so far: no range yet
                pending_zeros_ += batch.size();
                return;
            }
            range_ = amax;
            counts_[bins() / 2] += pending_zeros_;
            pending_zeros_ = 0;
        }
        while (amax > range_) grow();
        const double inv_width = static_cast<double>(bins()) / (2.0 * range_);
        const auto last = static_cast<std::ptrdiff_t>(bins() - 1);
        for (float x : batch) {
            const auto b = static_cast<std::ptrdiff_t>(std::floor((static_cast<double>(x) + range_) * inv_width));
            ++counts_[static_cast<std::size_t>(std::clamp<std::ptrdiff_t>(b, 0, last))];
        }
    }

    std::size_t bins() const noexcept { return counts_.size(); }
    double range() const noexcept { return range_; }  // bins cover [-range, range]
    double bin_width() const noexcept { return 2.0 * range_ / static_cast<double>(bins()); }
    double edge(std::size_t i) const noexcept { return -range_ + static_cast<double>(i) * bin_width(); }
    std::uint64_t count(std::size_t i) const noexcept {
        return counts_[i] + (range_ == 0.0 && i == bins() / 2 ? pending_zeros_ : 0);
    }
    std::uint64_t total() const noexcept { return total_; }
    float min() const noexcept { return lo_; }
    float max() const noexcept { return hi_; }
    float abs_max() const noexcept { return total_ ? std::max(std::fabs(lo_), std::fabs(hi_)) : 0.0f; }

    // Value v with a fraction q (in [0, 1]) of the observations <= v, linear inside a bin,
    // clamped to the observed [min, max].
    double quantile(double q) const noexcept {
        if (total_ == 0 || range_ == 0.0) return 0.0;
        const double target = std::clamp(q, 0.0, 1.0) * static_cast<double>(total_);
        double seen = 0.0;
        for (std::size_t i = 0; i < bins(); ++i) {
            const double c = static_cast<double>(counts_[i]);
            if (c > 0.0 && seen + c >= target) {
                const double v = edge(i) + bin_width() * (target - seen) / c;
                return std::clamp(v, static_cast<double>(lo_), static_cast<double>(hi_));
            }
            seen += c;
        }
        return hi_;
    }
    // Value v with a fraction q of the |observations| <= v (folds the histogram at 0).
    double abs_quantile(double q) const noexcept {
        if (total_ == 0 || range_ == 0.0) return 0.0;
        const double target = std::clamp(q, 0.0, 1.0) * static_cast<double>(total_);
        const std::size_t half = bins() / 2;
        double seen = 0.0;
        for (std::size_t j = 0; j < half; ++j) {
            const double c = static_cast<double>(counts_[half + j] + counts_[half - 1 - j]);
            if (c > 0.0 && seen + c >= target)
                return std::min(static_cast<double>(j) * bin_width() + bin_width() * (target - seen) / c,
                                static_cast<double>(abs_max()));
            seen += c;
        }
        return abs_max();
    }

    // Expected squared error of quantizing the observed values with p (values assumed uniform
    // inside each bin): s^2/12 for the part inside the representable range, the squared distance
    // to the range's end for the clipped part. Returns the mean over all observations.
    double expected_mse(QParams p, int bits) const noexcept {
        if (total_ == 0) return 0.0;
        const double s = p.scale;
        const double lo_rep = -static_cast<double>(p.zero_point) * s;
        const double hi_rep = static_cast<double>(((1 << bits) - 1) - p.zero_point) * s;
        const double noise = s * s / 12.0;
        if (range_ == 0.0) return noise;  // only zeros: 0 is exact, but keep the model uniform
        const double w = bin_width();
        double err = 0.0;
        // integral of (x - t)^2 over [a, b], divided by nothing (density applied by the caller)
        const auto sq_integral = [](double a, double b, double t) { return ((b - t) * (b - t) * (b - t) - (a - t) * (a - t) * (a - t)) / 3.0; };
        for (std::size_t i = 0; i < bins(); ++i) {
            if (counts_[i] == 0) continue;
            const double a = edge(i), b = a + w, density = static_cast<double>(counts_[i]) / w;
            const double in_a = std::max(a, lo_rep), in_b = std::min(b, hi_rep);
            if (in_b > in_a) err += density * (in_b - in_a) * noise;
            if (a < lo_rep) err += density * sq_integral(a, std::min(b, lo_rep), lo_rep);
            if (b > hi_rep) err += density * sq_integral(std::max(a, hi_rep), b, hi_rep);
        }
        return err / static_cast<double>(total_);
    }

private:
    void grow() {
        const std::size_t n = bins(), quarter = n / 4;
        std::vector<std::uint64_t> merged(n, 0);
        for (std::size_t i = 0; i < n / 2; ++i) merged[quarter + i] = counts_[2 * i] + counts_[2 * i + 1];
        counts_.swap(merged);
        range_ *= 2.0;
    }

    std::vector<std::uint64_t> counts_;
    double range_ = 0.0;
    std::uint64_t total_ = 0;
    std::uint64_t pending_zeros_ = 0;
    float lo_ = std::numeric_limits<float>::infinity();
    float hi_ = -std::numeric_limits<float>::infinity();
};

// ---- Percentile --------------------------------------------------------------------------------
// Symmetric: clip at the `percentile`-th percentile of |x|. Asymmetric: clip below at the
// (100 - percentile)-th and above at the percentile-th percentile of x.
class PercentileObserver {
public:
    explicit PercentileObserver(double percentile = 99.99, std::size_t bins = 2048) : pct_(percentile), hist_(bins) {
        if (!(percentile > 50.0 && percentile <= 100.0))
            throw invalid_argument("qlm::PercentileObserver: percentile must be in (50, 100], found " + std::to_string(percentile));
    }
    void observe(std::span<const float> batch) { hist_.add(batch, "PercentileObserver"); }

    // The clipping range [lo, hi] the params are computed from (before widening to include 0).
    std::pair<float, float> clip_range(bool symmetric) const {
        detail::check_observed(hist_.total(), "PercentileObserver");
        if (symmetric) {
            const auto c = static_cast<float>(hist_.abs_quantile(pct_ / 100.0));
            return {-c, c};
        }
        return {static_cast<float>(hist_.quantile(1.0 - pct_ / 100.0)), static_cast<float>(hist_.quantile(pct_ / 100.0))};
    }
    QParams compute_params(int bits, bool symmetric) const {
        detail::check_observer_bits(bits, "PercentileObserver");
        const auto [lo, hi] = clip_range(symmetric);
        return params_from_range(lo, hi, bits, symmetric);
    }
    double percentile() const noexcept { return pct_; }
    std::uint64_t count() const noexcept { return hist_.total(); }
    const RangeHistogram& histogram() const noexcept { return hist_; }

private:
    double pct_;
    RangeHistogram hist_;
};

// ---- MSE-optimal clipping ----------------------------------------------------------------------
// Searches clip ranges on a grid and keeps the one with the smallest expected quantization MSE
// (RangeHistogram::expected_mse). Symmetric: c = max|x| * i/grid, i = grid .. 1. Asymmetric:
// lo = min(min, 0) * p1, hi = max(max, 0) * p2 with p1, p2 on an (asym_grid)-step grid in (0, 1].
class MseObserver {
public:
    explicit MseObserver(std::size_t bins = 2048, int grid = 200, int asym_grid = 40)
        : hist_(bins), grid_(grid), asym_grid_(asym_grid) {
        if (grid < 1 || asym_grid < 1) throw invalid_argument("qlm::MseObserver: grids must be >= 1");
    }
    void observe(std::span<const float> batch) { hist_.add(batch, "MseObserver"); }

    QParams compute_params(int bits, bool symmetric) const {
        detail::check_observer_bits(bits, "MseObserver");
        detail::check_observed(hist_.total(), "MseObserver");
        QParams best{};
        double best_err = std::numeric_limits<double>::infinity();
        const auto consider = [&](float lo, float hi) {
            const QParams p = params_from_range(lo, hi, bits, symmetric);
            const double e = hist_.expected_mse(p, bits);
            if (e < best_err) {
                best_err = e;
                best = p;
            }
        };
        if (symmetric) {
            const float amax = hist_.abs_max();
            for (int i = grid_; i >= 1; --i) {
                const float c = amax * static_cast<float>(i) / static_cast<float>(grid_);
                consider(-c, c);
            }
        } else {
            const float lo0 = std::min(hist_.min(), 0.0f), hi0 = std::max(hist_.max(), 0.0f);
            for (int i = asym_grid_; i >= 1; --i)
                for (int j = asym_grid_; j >= 1; --j)
                    consider(lo0 * static_cast<float>(i) / static_cast<float>(asym_grid_),
                             hi0 * static_cast<float>(j) / static_cast<float>(asym_grid_));
        }
        return best;
    }
    std::uint64_t count() const noexcept { return hist_.total(); }
    const RangeHistogram& histogram() const noexcept { return hist_; }

private:
    RangeHistogram hist_;
    int grid_;
    int asym_grid_;
};

// ---- Per-channel absmax (SmoothQuant statistics) -----------------------------------------------
// observe() takes rows of `channels` values (a [rows, channels] row-major batch).
class ChannelAbsMaxObserver {
public:
    explicit ChannelAbsMaxObserver(std::size_t channels) : absmax_(channels, 0.0f) {
        if (channels == 0) throw invalid_argument("qlm::ChannelAbsMaxObserver: channels must be > 0");
    }
    void observe(std::span<const float> batch) {
        const std::size_t c = absmax_.size();
        if (batch.size() % c != 0)
            throw shape_error("qlm::ChannelAbsMaxObserver: batch of " + std::to_string(batch.size()) +
                              " values is not a whole number of rows of " + std::to_string(c) + " channels");
        for (std::size_t i = 0; i < batch.size(); i += c)
            for (std::size_t j = 0; j < c; ++j) {
                const float x = batch[i + j];
                if (!std::isfinite(x)) throw invalid_argument("qlm::ChannelAbsMaxObserver: observed NaN or Inf");
                absmax_[j] = std::max(absmax_[j], std::fabs(x));
            }
        rows_ += batch.size() / c;
    }
    void observe(TensorView<const float> x) {
        if (x.rank() != 2 || x.dim(1) != absmax_.size())
            throw shape_error("qlm::ChannelAbsMaxObserver: expected [rows, " + std::to_string(absmax_.size()) +
                              "], found " + x.shape().str());
        observe(x.span());
    }
    std::span<const float> absmax() const noexcept { return absmax_; }
    std::size_t channels() const noexcept { return absmax_.size(); }
    std::uint64_t rows() const noexcept { return rows_; }

private:
    std::vector<float> absmax_;
    std::uint64_t rows_ = 0;
};

static_assert(Observer<MinMaxObserver>);
static_assert(Observer<MovingAverageMinMaxObserver>);
static_assert(Observer<PercentileObserver>);
static_assert(Observer<MseObserver>);

}  // namespace qlm
