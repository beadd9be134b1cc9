// Tests for quant/observers.hpp and quant/smoothquant.hpp.
#include <doctest/doctest.h>

#include <qlm/quant/observers.hpp>
#include <qlm/quant/rtn.hpp>
#include <qlm/quant/smoothquant.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

using namespace qlm;

namespace {

std::vector<float> uniform_data(std::size_t n, float lo, float hi, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
}

std::vector<float> normal_data(std::size_t n, float sigma, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, sigma);
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
}

// Actual quantization MSE of x under p.
double measured_mse(const std::vector<float>& x, QParams p, int bits) {
    double e = 0;
    for (float v : x) {
        const float d = dequantize_code(quantize_code(v, p.scale, p.zero_point, (1 << bits) - 1), p.scale, p.zero_point);
        e += (static_cast<double>(d) - v) * (static_cast<double>(d) - v);
    }
    return e / static_cast<double>(x.size());
}

template <class O>
void observe_in_batches(O& o, const std::vector<float>& x, std::size_t batch) {
    for (std::size_t i = 0; i < x.size(); i += batch)
        o.observe(std::span<const float>(x).subspan(i, std::min(batch, x.size() - i)));
}

}  // namespace

TEST_CASE("MinMaxObserver: known ranges and params") {
    MinMaxObserver o;
    CHECK_THROWS_AS(o.compute_params(8, true), qlm::invalid_argument);
    const std::vector<float> a{0.5f, -2.0f, 1.0f}, b{3.0f, -1.0f};
    o.observe(a);
    o.observe(b);
    CHECK(o.min() == -2.0f);
    CHECK(o.max() == 3.0f);
    CHECK(o.count() == 5);
    const auto sym = o.compute_params(8, true);
    CHECK(sym.scale == doctest::Approx(3.0 / 127.5));
    CHECK(sym.zero_point == 128);
    const auto asym = o.compute_params(8, false);
    CHECK(asym.scale == doctest::Approx(5.0 / 255.0));
    CHECK(asym.zero_point == 102);  // round(2 / (5/255)) = round(102.0)
    // all-positive data: range widened to include 0, so 0 is exact
    MinMaxObserver pos;
    const std::vector<float> p{1.0f, 4.0f};
    pos.observe(p);
    const auto pp = pos.compute_params(8, false);
    CHECK(pp.zero_point == 0);
    CHECK(pp.scale == doctest::Approx(4.0 / 255.0));
    CHECK_THROWS_AS(pos.compute_params(9, false), qlm::invalid_argument);
    const std::vector<float> bad{1.0f, std::nanf("")};
    CHECK_THROWS_AS(pos.observe(bad), qlm::invalid_argument);
}

TEST_CASE("MovingAverageMinMaxObserver: exponential averaging with c = 0.01") {
    MovingAverageMinMaxObserver o;
    CHECK(o.averaging_constant() == doctest::Approx(0.01));
    const std::vector<float> first{-1.0f, 1.0f}, later{-3.0f, 5.0f};
    o.observe(first);
    CHECK(o.min() == -1.0f);
    CHECK(o.max() == 1.0f);
    o.observe(later);
    CHECK(o.min() == doctest::Approx(-1.02));
    CHECK(o.max() == doctest::Approx(1.04));
    for (int i = 0; i < 2000; ++i) o.observe(later);  // converges to the repeated batch
    CHECK(o.min() == doctest::Approx(-3.0).epsilon(1e-3));
    CHECK(o.max() == doctest::Approx(5.0).epsilon(1e-3));
    CHECK_THROWS_AS(MovingAverageMinMaxObserver(0.0f), qlm::invalid_argument);
}

TEST_CASE("RangeHistogram: growth keeps counts exact, quantiles of uniform data") {
    RangeHistogram h(1024);
    const auto small = uniform_data(10000, -1.0f, 1.0f, 1);
    const auto big = uniform_data(10000, -4.0f, 4.0f, 2);
    h.add(small);
    const double r0 = h.range();
    CHECK(r0 <= 1.0);
    h.add(big);  // range doubles until it covers the big batch
    const float big_max = std::max(-*std::min_element(big.begin(), big.end()), *std::max_element(big.begin(), big.end()));
    CHECK(h.range() >= big_max);
    CHECK(h.range() < 2.0 * big_max);
    CHECK(h.range() == doctest::Approx(r0 * 4.0));
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < h.bins(); ++i) total += h.count(i);
    CHECK(total == 20000);
    // counts inside [-1, 1] must be the small batch plus the big batch's share (~1/4)
    std::uint64_t inner = 0;
    for (std::size_t i = 0; i < h.bins(); ++i)
        if (h.edge(i) >= -1.0 - 1e-9 && h.edge(i) + h.bin_width() <= 1.0 + 1e-9) inner += h.count(i);
    const auto exact_inner = static_cast<std::uint64_t>(
        10000 + std::count_if(big.begin(), big.end(), [](float v) { return v >= -1.0f && v < 1.0f; }));
    CHECK(static_cast<double>(inner) == doctest::Approx(static_cast<double>(exact_inner)).epsilon(0.002));
    RangeHistogram u;
    u.add(uniform_data(200000, -2.0f, 2.0f, 3));
    CHECK(u.quantile(0.5) == doctest::Approx(0.0).epsilon(0.02));
    CHECK(u.quantile(0.75) == doctest::Approx(1.0).epsilon(0.02));
    CHECK(u.abs_quantile(0.5) == doctest::Approx(1.0).epsilon(0.02));
    CHECK(u.abs_quantile(0.9) == doctest::Approx(1.8).epsilon(0.02));
    // zeros before any range
    RangeHistogram z(64);
    const std::vector<float> zeros(10, 0.0f), ones{1.0f, -1.0f};
    z.add(zeros);
    CHECK(z.total() == 10);
    z.add(ones);
    std::uint64_t zt = 0;
    for (std::size_t i = 0; i < z.bins(); ++i) zt += z.count(i);
    CHECK(zt == 12);
    CHECK_THROWS_AS(RangeHistogram(30), qlm::invalid_argument);
}

TEST_CASE("PercentileObserver: clips outliers that min/max keeps") {
    auto x = uniform_data(100000, -1.0f, 1.0f, 4);
    for (int i = 0; i < 5; ++i) x[static_cast<std::size_t>(i) * 997] = (i % 2 ? -8.0f : 8.0f);  // 5 outliers
    PercentileObserver p(99.99);
    MinMaxObserver mm;
    observe_in_batches(p, x, 768);
    observe_in_batches(mm, x, 768);
    CHECK(p.count() == x.size());
    const auto [lo, hi] = p.clip_range(true);
    CHECK(hi == -lo);
    CHECK(hi == doctest::Approx(1.0).epsilon(0.02));  // |x| 99.99th percentile ~ 0.9999 (outliers are 0.005%)
    const auto pp = p.compute_params(8, true);
    const auto mp = mm.compute_params(8, true);
    CHECK(mp.scale == doctest::Approx(16.0 / 255.0));  // min/max covers the outliers
    CHECK(pp.scale == doctest::Approx(2.0 / 255.0).epsilon(0.02));
    CHECK(pp.zero_point == 128);
    // asymmetric: both tails; shifted uniform [0, 3] with high outliers
    auto y = uniform_data(100000, 0.0f, 3.0f, 5);
    y[10] = 50.0f;
    PercentileObserver pa(99.9);
    observe_in_batches(pa, y, 1000);
    const auto [alo, ahi] = pa.clip_range(false);
    CHECK(alo == doctest::Approx(0.003).epsilon(0.05 / 0.003 * 0.01));  // 0.1th percentile of U(0, 3)
    CHECK(alo < 0.1f);
    CHECK(ahi == doctest::Approx(2.997).epsilon(0.02));
    const auto ap = pa.compute_params(8, false);
    CHECK(ap.zero_point == 0);
    CHECK(ap.scale == doctest::Approx(2.997 / 255.0).epsilon(0.02));
    CHECK_THROWS_AS(PercentileObserver(40.0), qlm::invalid_argument);
}

TEST_CASE("MseObserver: keeps the full range for uniform data, clips heavy tails, beats min/max") {
    SUBCASE("uniform: clipping only hurts, so the range stays ~ full") {
        const auto x = uniform_data(100000, -1.0f, 1.0f, 6);
        MseObserver o;
        observe_in_batches(o, x, 4096);
        const auto p = o.compute_params(8, true);
        const double clip = p.scale * 255.0 / 2.0;
        CHECK(clip >= 0.97);
        CHECK(clip <= 1.0 + 1e-6);
    }
    SUBCASE("Gaussian with one outlier: MSE clips inside the outlier, min/max does not") {
        auto x = normal_data(100000, 1.0f, 7);
        x[500] = 50.0f;
        MseObserver o;
        MinMaxObserver mm;
        observe_in_batches(o, x, 1000);
        observe_in_batches(mm, x, 1000);
        for (bool sym : {true, false}) {
            INFO("symmetric " << sym);
            const auto pm = o.compute_params(8, sym);
            const auto pmm = mm.compute_params(8, sym);
            const double hi_mse = (255 - pm.zero_point) * static_cast<double>(pm.scale);
            const double hi_mm = (255 - pmm.zero_point) * static_cast<double>(pmm.scale);
            CHECK(hi_mm >= 49.0);
            CHECK(hi_mse < 0.9 * hi_mm);  // clipped
            CHECK(hi_mse > 4.0);          // but not into the bulk of the Gaussian
            // the model's prediction matches the real error, and the real error beats min/max
            CHECK(o.histogram().expected_mse(pm, 8) == doctest::Approx(measured_mse(x, pm, 8)).epsilon(0.02));
            CHECK(measured_mse(x, pm, 8) < 0.95 * measured_mse(x, pmm, 8));
        }
    }
    SUBCASE("Laplace data at 4 bits: MSE params beat min/max and percentile-100") {
        std::mt19937 rng(8);
        std::exponential_distribution<float> e(1.0f);
        std::bernoulli_distribution sign(0.5);
        std::vector<float> x(100000);
        for (auto& v : x) v = (sign(rng) ? 1.0f : -1.0f) * e(rng);
        MseObserver o;
        MinMaxObserver mm;
        observe_in_batches(o, x, 1024);
        observe_in_batches(mm, x, 1024);
        const double m1 = measured_mse(x, o.compute_params(4, true), 4);
        const double m2 = measured_mse(x, mm.compute_params(4, true), 4);
        CHECK(m1 < 0.5 * m2);
        const double a1 = measured_mse(x, o.compute_params(4, false), 4);
        const double a2 = measured_mse(x, mm.compute_params(4, false), 4);
        CHECK(a1 < 0.5 * a2);
    }
}

TEST_CASE("ChannelAbsMaxObserver: per-channel absmax over rows") {
    ChannelAbsMaxObserver o(3);
    const std::vector<float> b1{1.0f, -5.0f, 0.5f, -2.0f, 1.0f, 0.25f};
    const std::vector<float> b2{0.5f, 4.0f, -7.0f};
    o.observe(b1);
    o.observe(b2);
    CHECK(o.rows() == 3);
    CHECK(o.absmax()[0] == 2.0f);
    CHECK(o.absmax()[1] == 5.0f);
    CHECK(o.absmax()[2] == 7.0f);
    const std::vector<float> ragged{1.0f, 2.0f};
    CHECK_THROWS_AS(o.observe(ragged), qlm::shape_error);
    Tensor<float> t(Shape{2, 4});
    CHECK_THROWS_AS(o.observe(t.view()), qlm::shape_error);
}

namespace {
void layernorm(const Tensor<float>& x, const std::vector<float>& gamma, const std::vector<float>& beta, Tensor<float>& y) {
    const std::size_t k = x.dim(1);
    for (std::size_t r = 0; r < x.dim(0); ++r) {
        double mean = 0, var = 0;
        for (std::size_t j = 0; j < k; ++j) mean += x.row(r)[j];
        mean /= static_cast<double>(k);
        for (std::size_t j = 0; j < k; ++j) var += (x.row(r)[j] - mean) * (x.row(r)[j] - mean);
        var /= static_cast<double>(k);
        for (std::size_t j = 0; j < k; ++j)
            y.row(r)[j] = static_cast<float>((x.row(r)[j] - mean) / std::sqrt(var + 1e-5) * gamma[j] + beta[j]);
    }
}
Tensor<float> matmul_t(const Tensor<float>& a, const Tensor<float>& w) {  // a [M, K] * w[N, K]^T
    Tensor<float> y(Shape{a.dim(0), w.dim(0)});
    for (std::size_t m = 0; m < a.dim(0); ++m)
        for (std::size_t n = 0; n < w.dim(0); ++n) {
            double s = 0;
            for (std::size_t k = 0; k < a.dim(1); ++k) s += static_cast<double>(a.row(m)[k]) * w.row(n)[k];
            y.row(m)[n] = static_cast<float>(s);
        }
    return y;
}
}  // namespace

TEST_CASE("SmoothQuant: product unchanged, activation range flatter") {
    const std::size_t m = 64, k = 96, n1 = 48, n2 = 32;
    std::mt19937 rng(10);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Tensor<float> x(Shape{m, k}), w1(Shape{n1, k}), w2(Shape{n2, k});
    for (auto& v : x.span()) v = nd(rng);
    for (auto& v : w1.span()) v = 0.05f * nd(rng);
    for (auto& v : w2.span()) v = 0.05f * nd(rng);
    std::vector<float> gamma(k), beta(k);
    for (std::size_t j = 0; j < k; ++j) {
        gamma[j] = 1.0f + 0.1f * nd(rng);
        beta[j] = 0.1f * nd(rng);
    }
    gamma[5] = 40.0f;  // outlier channels, as LLM activations have
    gamma[60] = -25.0f;
    beta[60] = 3.0f;
    Tensor<float> act(Shape{m, k});
    layernorm(x, gamma, beta, act);
    ChannelAbsMaxObserver obs(k);
    obs.observe(act.view());
    const auto y1 = matmul_t(act, w1), y2 = matmul_t(act, w2);

    const auto s = smoothquant_scales(obs.absmax(), {w1.view(), w2.view()});
    REQUIRE(s.size() == k);
    for (float v : s) CHECK((std::isfinite(v) && v > 0.0f));
    const auto w1_absmax = weight_column_absmax(w1.view()), w2_absmax = weight_column_absmax(w2.view());
    for (std::size_t j = 0; j < k; ++j) {
        const double wmax = std::max(w1_absmax[j], w2_absmax[j]);
        CHECK(s[j] == doctest::Approx(std::sqrt(obs.absmax()[j] / wmax)).epsilon(1e-5));
    }

    auto g2 = gamma, b2 = beta;
    smooth_layernorm(g2, b2, s);
    smooth_weight_columns(w1.view(), s);
    smooth_weight_columns(w2.view(), s);
    Tensor<float> act2(Shape{m, k});
    layernorm(x, g2, b2, act2);
    const auto z1 = matmul_t(act2, w1), z2 = matmul_t(act2, w2);
    double max_rel = 0;
    for (std::size_t i = 0; i < y1.numel(); ++i)
        max_rel = std::max(max_rel, std::fabs(z1.data()[i] - y1.data()[i]) / (std::fabs(y1.data()[i]) + 1e-2));
    for (std::size_t i = 0; i < y2.numel(); ++i)
        max_rel = std::max(max_rel, std::fabs(z2.data()[i] - y2.data()[i]) / (std::fabs(y2.data()[i]) + 1e-2));
    CHECK(max_rel < 1e-4);

    // flatter: ratio of the largest to the median channel absmax shrinks a lot
    ChannelAbsMaxObserver obs2(k);
    obs2.observe(act2.view());
    auto spread = [](std::span<const float> a) {
        std::vector<float> v(a.begin(), a.end());
        std::sort(v.begin(), v.end());
        return v.back() / v[v.size() / 2];
    };
    CHECK(spread(obs.absmax()) > 20.0f);
    CHECK(spread(obs2.absmax()) < 0.25f * spread(obs.absmax()));
    // alpha = 0.5 equalises activation and weight absmax per channel
    const auto w1s = weight_column_absmax(w1.view()), w2s = weight_column_absmax(w2.view());
    for (std::size_t j = 0; j < k; ++j)
        CHECK(obs2.absmax()[j] == doctest::Approx(std::max(w1s[j], w2s[j])).epsilon(1e-3));
}

TEST_CASE("SmoothQuant: alpha extremes, zero channels, producer linear layer") {
    Tensor<float> w(Shape{2, 3});
    const std::vector<float> wv{0.5f, -2.0f, 0.0f, 0.25f, 1.0f, 0.0f};
    std::copy(wv.begin(), wv.end(), w.data());
    const std::vector<float> act{8.0f, 4.0f, 3.0f};
    SmoothQuantOptions o1;
    o1.alpha = 1.0f;
    const auto s1 = smoothquant_scales(act, {w.view()}, o1);
    CHECK(s1[0] == doctest::Approx(8.0));
    CHECK(s1[1] == doctest::Approx(4.0));
    CHECK(s1[2] == 1.0f);  // all-zero weight column: nothing to migrate
    SmoothQuantOptions o0;
    o0.alpha = 0.0f;
    const auto s0 = smoothquant_scales(act, {w.view()}, o0);
    CHECK(s0[0] == doctest::Approx(2.0));  // 1 / 0.5
    CHECK(s0[1] == doctest::Approx(0.5));
    const std::vector<float> dead{0.0f, 4.0f, 3.0f};
    CHECK(smoothquant_scales(dead, {w.view()})[0] == 1.0f);
    const std::vector<float> huge{1e30f, 4.0f, 3.0f};
    CHECK(smoothquant_scales(huge, {w.view()}, o1)[0] == doctest::Approx(1e5));  // clamped
    SmoothQuantOptions bad;
    bad.alpha = 1.5f;
    CHECK_THROWS_AS(smoothquant_scales(act, {w.view()}, bad), qlm::invalid_argument);
    const std::vector<float> short_act{1.0f};
    CHECK_THROWS_AS(smoothquant_scales(short_act, {w.view()}), qlm::shape_error);

    // producer linear: X = A Wp^T + b, then Y = X W^T; dividing Wp rows and b by s, multiplying W columns keeps Y
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Tensor<float> a(Shape{4, 5}), wp(Shape{3, 5}), wc(Shape{2, 3});
    for (auto& v : a.span()) v = nd(rng);
    for (auto& v : wp.span()) v = nd(rng);
    for (auto& v : wc.span()) v = nd(rng);
    std::vector<float> bias{0.5f, -1.0f, 2.0f};
    auto forward = [&]() {
        Tensor<float> xx = matmul_t(a, wp);
        for (std::size_t r = 0; r < 4; ++r)
            for (std::size_t j = 0; j < 3; ++j) xx.row(r)[j] += bias[j];
        return matmul_t(xx, wc);
    };
    const auto before = forward();
    const std::vector<float> s{2.0f, 0.25f, 7.0f};
    smooth_linear_output(wp.view(), bias, s);
    smooth_weight_columns(wc.view(), s);
    const auto after = forward();
    for (std::size_t i = 0; i < before.numel(); ++i)
        CHECK(after.data()[i] == doctest::Approx(before.data()[i]).epsilon(1e-5));
    // smooth_activations is the direct form
    Tensor<float> xa(Shape{1, 3});
    xa.data()[0] = 4.0f;
    xa.data()[1] = 1.0f;
    xa.data()[2] = 14.0f;
    smooth_activations(xa.view(), s);
    CHECK(xa.data()[0] == 2.0f);
    CHECK(xa.data()[1] == 4.0f);
    CHECK(xa.data()[2] == 2.0f);
}
