// Tests for qlm/quant/awq.hpp: scale search, clip search, salient channels, folding helpers.
#include <doctest/doctest.h>
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/quant/awq.hpp>
#include <qlm/quant/rtn.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <set>
#include <string>
#include <vector>

using qlm::Shape;
using qlm::Tensor;
using qlm::ThreadPool;

namespace {

Tensor<float> gaussian(std::size_t rows, std::size_t cols, unsigned seed, float sigma = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, sigma);
    Tensor<float> t(Shape{rows, cols});
    for (float& v : t.span()) {
        v = nd(rng);
        if (v == 0.0f) v = 1e-3f;  // non-zero data
    }
    return t;
}

// Activations with a few outlier input channels (x20 .. x50) and a per-channel spread.
struct OutlierActs {
    Tensor<float> x;
    std::vector<std::size_t> outliers;  // ascending
};
OutlierActs outlier_acts(std::size_t rows, std::size_t k, std::size_t n_out, unsigned seed) {
    OutlierActs a{gaussian(rows, k, seed), {}};
    std::mt19937 rng(seed + 1);
    std::uniform_real_distribution<float> mag(20.0f, 50.0f), spread(0.5f, 1.5f);
    std::vector<float> col(k);
    for (float& c : col) c = spread(rng);
    std::set<std::size_t> picked;
    std::uniform_int_distribution<std::size_t> pick(0, k - 1);
    while (picked.size() < n_out) picked.insert(pick(rng));
    for (std::size_t j : picked) col[j] = mag(rng);
    a.outliers.assign(picked.begin(), picked.end());
    for (std::size_t i = 0; i < rows; ++i)
        for (std::size_t j = 0; j < k; ++j) a.x.row(i)[j] *= col[j];
    return a;
}

// Heavy-tailed weights: Student-t with 2 degrees of freedom.
Tensor<float> heavy_tailed(std::size_t rows, std::size_t cols, unsigned seed) {
    std::mt19937 rng(seed);
    std::student_t_distribution<float> td(2.0f);
    Tensor<float> t(Shape{rows, cols});
    for (float& v : t.span()) {
        v = 0.05f * td(rng);
        if (v == 0.0f) v = 1e-4f;
    }
    return t;
}

// Double-precision X W^T.
std::vector<double> matmul_t(const Tensor<float>& x, const Tensor<float>& w) {
    const std::size_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    std::vector<double> y(m * n, 0.0);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double acc = 0.0;
            for (std::size_t p = 0; p < k; ++p) acc += static_cast<double>(x.row(i)[p]) * w.row(j)[p];
            y[i * n + j] = acc;
        }
    return y;
}

double mse(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
    return s / static_cast<double>(a.size());
}

qlm::QuantSpec spec(int bits, std::size_t gs, bool sym) {
    return qlm::QuantSpec{bits, qlm::GranularityKind::per_group, gs, sym};
}

// Q(W diag(s)) diag(s)^-1 through qlm::quantize_rtn (the independent path).
Tensor<float> rtn_scaled(const Tensor<float>& w, const Tensor<float>& s, const qlm::QuantSpec& sp) {
    Tensor<float> ws = w;
    qlm::awq::scale_weight_columns(ws, s.span());
    Tensor<float> q = qlm::quantize_rtn(ws.view(), sp).dequantize();
    for (std::size_t r = 0; r < q.dim(0); ++r)
        for (std::size_t j = 0; j < q.dim(1); ++j) q.row(r)[j] /= s.data()[j];
    return q;
}

// A tensor from values (element by element; std::copy into the fresh allocation trips GCC 12's
// -Warray-bounds false positive).
Tensor<float> from_values(Shape shape, const std::vector<float>& v) {
    Tensor<float> t(shape);
    REQUIRE(t.numel() == v.size());
    float* d = t.data();
    for (std::size_t i = 0; i < v.size(); ++i) d[i] = v[i];
    return t;
}

Tensor<float> ones(std::size_t k) {
    Tensor<float> s(Shape{k});
    std::fill(s.span().begin(), s.span().end(), 1.0f);
    return s;
}

}  // namespace

TEST_CASE("activation_mean_abs is the per-channel mean of |x|") {
    const Tensor<float> x = gaussian(37, 19, 11);
    const Tensor<float> m = qlm::awq::activation_mean_abs(x);
    REQUIRE(m.numel() == 19);
    for (std::size_t j = 0; j < 19; ++j) {
        double s = 0.0;
        for (std::size_t i = 0; i < 37; ++i) s += std::fabs(x.row(i)[j]);
        CHECK(m.data()[j] == doctest::Approx(s / 37.0).epsilon(1e-6));
    }
}

TEST_CASE("scales_for_alpha: clamp, then normalise by sqrt(max * min)") {
    const std::vector<float> v = {0.0f, 0.5f, 2.0f, 8.0f, 40.0f};
    const Tensor<float> xm = from_values(Shape{5}, v);
    const Tensor<float> s0 = qlm::awq::scales_for_alpha(xm.span(), 0.0);
    for (float e : s0.span()) CHECK(e == 1.0f);
    const double a = 0.5;
    const Tensor<float> s = qlm::awq::scales_for_alpha(xm.span(), a);
    const auto [mn, mx] = std::minmax_element(s.span().begin(), s.span().end());
    CHECK(static_cast<double>(*mn) * *mx == doctest::Approx(1.0).epsilon(1e-5));
    // channel 0 (mean 0) is clamped to 1e-4 before the normalisation
    const double norm = std::sqrt(1e-4 * std::pow(40.0, a));
    CHECK(s.data()[0] == doctest::Approx(1e-4 / norm).epsilon(1e-5));
    for (std::size_t j = 1; j < 5; ++j) CHECK(s.data()[j] == doctest::Approx(std::pow(v[j], a) / norm).epsilon(1e-5));
}

TEST_CASE("AWQ scales beat RTN on activations with outlier channels") {
    ThreadPool pool(2);
    const std::size_t k = 512, n = 384, rows = 1024;
    const auto acts = outlier_acts(rows, k, 6, 21);
    const Tensor<float> w = gaussian(n, k, 22, 0.02f);

    for (int bits : {4, 3}) {
        for (bool sym : {false, true}) {
            CAPTURE(bits);
            CAPTURE(sym);
            qlm::awq::ScaleSearchOptions opt;
            opt.bits = bits;
            opt.symmetric = sym;
            const auto res = qlm::awq::search_scales(pool, acts.x, {&w}, opt);
            REQUIRE(res.losses.size() == opt.grid);
            CHECK(res.loss_alpha0 == res.losses[0]);
            CHECK(res.best_loss == *std::min_element(res.losses.begin(), res.losses.end()));
            CHECK(res.best_alpha > 0.0f);
            CHECK(res.best_loss <= 0.8 * res.loss_alpha0);
            MESSAGE("bits ", bits, std::string(sym ? " sym" : " asym"), ": alpha ", res.best_alpha, ", loss ", res.best_loss,
                    " vs RTN ", res.loss_alpha0, " (", res.best_loss / res.loss_alpha0, "x)");
            REQUIRE(res.scales.numel() == k);
            // The returned scales are the documented ones for the chosen alpha.
            const Tensor<float> expect =
                qlm::awq::scales_for_alpha(qlm::awq::activation_mean_abs(acts.x).span(), res.best_alpha);
            for (std::size_t j = 0; j < k; ++j) CHECK(res.scales.data()[j] == doctest::Approx(expect.data()[j]).epsilon(1e-5));
        }
    }
}

TEST_CASE("search losses equal the error of qlm::quantize_rtn computed independently") {
    ThreadPool pool(2);
    const std::size_t k = 256, rows = 300;
    const auto acts = outlier_acts(rows, k, 4, 31);
    const Tensor<float> w1 = gaussian(96, k, 32, 0.05f), w2 = gaussian(160, k, 33, 0.02f);
    const auto y1 = matmul_t(acts.x, w1), y2 = matmul_t(acts.x, w2);
    for (auto method : {qlm::awq::LossMethod::direct, qlm::awq::LossMethod::gram}) {
        qlm::awq::ScaleSearchOptions opt;
        opt.method = method;
        opt.max_samples = rows;  // every row
        const auto res = qlm::awq::search_scales(pool, acts.x, {&w1, &w2}, opt);
        const auto sp = spec(opt.bits, opt.group_size, opt.symmetric);
        auto loss_of = [&](const Tensor<float>& s) {
            const auto q1 = matmul_t(acts.x, rtn_scaled(w1, s, sp)), q2 = matmul_t(acts.x, rtn_scaled(w2, s, sp));
            return (mse(y1, q1) * static_cast<double>(y1.size()) + mse(y2, q2) * static_cast<double>(y2.size())) /
                   static_cast<double>(y1.size() + y2.size());
        };
        CHECK(res.loss_alpha0 == doctest::Approx(loss_of(ones(k))).epsilon(1e-3));
        CHECK(res.best_loss == doctest::Approx(loss_of(res.scales)).epsilon(1e-3));
    }
}

TEST_CASE("direct and Gram loss evaluation agree; results do not depend on the thread count") {
    ThreadPool pool1(1), pool2(2);
    const std::size_t k = 256;
    const auto acts = outlier_acts(700, k, 5, 41);
    const Tensor<float> w = gaussian(200, k, 42, 0.03f);
    qlm::awq::ScaleSearchOptions opt;
    opt.bits = 3;
    opt.max_samples = 512;
    opt.method = qlm::awq::LossMethod::direct;
    const auto d1 = qlm::awq::search_scales(pool1, acts.x, {&w}, opt);
    const auto d2 = qlm::awq::search_scales(pool2, acts.x, {&w}, opt);
    opt.method = qlm::awq::LossMethod::gram;
    const auto g2 = qlm::awq::search_scales(pool2, acts.x, {&w}, opt);
    for (std::size_t i = 0; i < opt.grid; ++i) {
        CHECK(d1.losses[i] == d2.losses[i]);
        CHECK(g2.losses[i] == doctest::Approx(d2.losses[i]).epsilon(1e-4));
    }
    CHECK(d1.best_alpha == g2.best_alpha);
}

TEST_CASE("duo scaling (AutoAWQ) also beats RTN and keeps alpha = 0 as plain RTN") {
    ThreadPool pool(2);
    const auto acts = outlier_acts(512, 256, 4, 51);
    const Tensor<float> w = gaussian(128, 256, 52, 0.02f);
    qlm::awq::ScaleSearchOptions opt;
    const auto plain = qlm::awq::search_scales(pool, acts.x, {&w}, opt);
    opt.duo_scaling = true;
    const auto duo = qlm::awq::search_scales(pool, acts.x, {&w}, opt);
    CHECK(duo.best_loss <= duo.losses[0]);
    CHECK(duo.best_loss < 0.8 * plain.loss_alpha0);
}

TEST_CASE("scaling without quantization leaves the float product unchanged") {
    const auto acts = outlier_acts(64, 128, 3, 61);
    const Tensor<float> w = gaussian(48, 128, 62, 0.1f);
    const Tensor<float> s = qlm::awq::scales_for_alpha(qlm::awq::activation_mean_abs(acts.x).span(), 0.7);
    Tensor<float> ws = w, xs = acts.x;
    qlm::awq::scale_weight_columns(ws, s.span());
    qlm::awq::divide_input_columns(xs, s.span());
    const auto y = matmul_t(acts.x, w), ys = matmul_t(xs, ws);
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i) {
        num += (y[i] - ys[i]) * (y[i] - ys[i]);
        den += y[i] * y[i];
    }
    CHECK(std::sqrt(num / den) < 1e-6);
}

TEST_CASE("folding into a LayerNorm and into a producing linear layer preserves the output") {
    const std::size_t k = 64;
    const auto acts = outlier_acts(16, k, 2, 71);
    const Tensor<float> s = qlm::awq::scales_for_alpha(qlm::awq::activation_mean_abs(acts.x).span(), 0.5);
    const Tensor<float> w = gaussian(32, k, 72, 0.1f);
    Tensor<float> ws = w;
    qlm::awq::scale_weight_columns(ws, s.span());

    // LayerNorm affine part: h = z * gamma + beta, consumer h W^T.
    const Tensor<float> z = gaussian(8, k, 73);
    std::vector<float> gamma(k), beta(k);
    for (std::size_t j = 0; j < k; ++j) {
        gamma[j] = 0.5f + 0.01f * static_cast<float>(j);
        beta[j] = 0.1f - 0.002f * static_cast<float>(j);
    }
    auto affine = [&](const std::vector<float>& g, const std::vector<float>& b) {
        Tensor<float> h(Shape{8, k});
        for (std::size_t i = 0; i < 8; ++i)
            for (std::size_t j = 0; j < k; ++j) h.row(i)[j] = z.row(i)[j] * g[j] + b[j];
        return h;
    };
    const auto y = matmul_t(affine(gamma, beta), w);
    std::vector<float> g2 = gamma, b2 = beta;
    qlm::awq::fold_into_norm(g2, b2, s.span());
    const auto y2 = matmul_t(affine(g2, b2), ws);
    for (std::size_t i = 0; i < y.size(); ++i) CHECK(y2[i] == doctest::Approx(y[i]).epsilon(1e-4));

    // Producing linear (fused like c_attn: rows [2k, 3k) are "v"): x W_prev^T + b, then rows 2k.. feed w.
    Tensor<float> wp = gaussian(3 * k, 40, 74, 0.2f);
    std::vector<float> bias(3 * k);
    for (std::size_t j = 0; j < 3 * k; ++j) bias[j] = 0.01f * static_cast<float>(j % 7);
    const Tensor<float> xin = gaussian(8, 40, 75);
    auto run = [&](const Tensor<float>& wprev, const std::vector<float>& b, const Tensor<float>& wc) {
        const auto h = matmul_t(xin, wprev);
        Tensor<float> v(Shape{8, k});
        for (std::size_t i = 0; i < 8; ++i)
            for (std::size_t j = 0; j < k; ++j) v.row(i)[j] = static_cast<float>(h[i * 3 * k + 2 * k + j] + b[2 * k + j]);
        return matmul_t(v, wc);
    };
    const auto r1 = run(wp, bias, w);
    Tensor<float> wp2 = wp;
    std::vector<float> bias2 = bias;
    qlm::awq::fold_into_linear_output(wp2, bias2, 2 * k, s.span());
    const auto r2 = run(wp2, bias2, ws);
    for (std::size_t i = 0; i < r1.size(); ++i) CHECK(r2[i] == doctest::Approx(r1[i]).epsilon(1e-4));
    for (std::size_t r = 0; r < 2 * k; ++r)  // q, k rows untouched
        for (std::size_t c = 0; c < 40; ++c) CHECK(wp2.row(r)[c] == wp.row(r)[c]);
}

namespace {
// Per (row, group) partial-output error mean_t (x_t,g . (Q(w') - w)_g)^2 with w' = w clipped by max_val
// (max_val empty: no clipping), Q through qlm::quantize_rtn.
std::vector<double> group_errors(const Tensor<float>& x, const Tensor<float>& w, const Tensor<float>* max_val,
                                 const qlm::QuantSpec& sp) {
    Tensor<float> wc = w;
    if (max_val) qlm::awq::apply_clip(wc, *max_val);
    const Tensor<float> q = qlm::quantize_rtn(wc.view(), sp).dequantize();
    const std::size_t n = w.dim(0), k = w.dim(1), gs = sp.group_size, groups = k / gs, m = x.dim(0);
    std::vector<double> err(n * groups, 0.0);
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
            double e = 0.0;
            for (std::size_t t = 0; t < m; ++t) {
                double o = 0.0;
                for (std::size_t c = g * gs; c < (g + 1) * gs; ++c)
                    o += static_cast<double>(x.row(t)[c]) * (static_cast<double>(q.row(r)[c]) - w.row(r)[c]);
                e += o * o;
            }
            err[r * groups + g] = e / static_cast<double>(m);
        }
    return err;
}
}  // namespace

TEST_CASE("clip search never increases the group output error and helps heavy-tailed weights") {
    ThreadPool pool(2);
    const std::size_t k = 256, n = 96, rows = 256;
    const auto acts = outlier_acts(rows, k, 3, 81);
    for (int bits : {4, 3}) {
        for (int kind = 0; kind < 2; ++kind) {
            CAPTURE(bits);
            CAPTURE(kind);
            const Tensor<float> w = kind == 0 ? heavy_tailed(n, k, 82) : gaussian(n, k, 83, 0.05f);
            qlm::awq::ClipOptions opt;
            opt.bits = bits;
            opt.max_samples = rows;  // evaluate on every row, as the independent check does
            const Tensor<float> mv = qlm::awq::search_clip(pool, acts.x, w, opt);
            REQUIRE(mv.shape() == Shape{n, k / 128});
            const auto sp = spec(bits, 128, false);
            const auto e0 = group_errors(acts.x, w, nullptr, sp);
            const auto e1 = group_errors(acts.x, w, &mv, sp);
            double s0 = 0.0, s1 = 0.0;
            for (std::size_t i = 0; i < e0.size(); ++i) {
                CHECK(e1[i] <= e0[i] * (1.0 + 1e-4) + 1e-12);
                s0 += e0[i];
                s1 += e1[i];
            }
            MESSAGE("bits ", bits, std::string(kind == 0 ? " heavy-tailed" : " gaussian"), ": clipped / unclipped error ", s1 / s0);
            CHECK(s1 <= s0);
            if (kind == 0) CHECK(s1 < 0.9 * s0);
            // every threshold is one of the candidates: max|w| * (1 - i/20), i < 10
            for (std::size_t r = 0; r < n; ++r)
                for (std::size_t g = 0; g < k / 128; ++g) {
                    float mx = 0.0f;
                    for (std::size_t c = g * 128; c < (g + 1) * 128; ++c) mx = std::max(mx, std::fabs(w.row(r)[c]));
                    const double ratio = mv.row(r)[g] / mx;
                    CHECK(ratio <= 1.0);
                    CHECK(ratio >= 0.5);
                    const double steps = (1.0 - ratio) * 20.0;
                    CHECK(std::fabs(steps - std::round(steps)) < 1e-3);
                }
        }
    }
}

TEST_CASE("clip search row range: rows outside it are not clipped") {
    ThreadPool pool(2);
    const std::size_t k = 128, n = 96;
    const Tensor<float> x = gaussian(200, k, 91);
    const Tensor<float> w = heavy_tailed(n, k, 92);
    qlm::awq::ClipOptions opt;
    opt.row_begin = 64;  // like c_attn: skip the q, k rows
    const Tensor<float> mv = qlm::awq::search_clip(pool, x, w, opt);
    Tensor<float> wc = w;
    qlm::awq::apply_clip(wc, mv);
    std::size_t clipped_rows = 0;
    for (std::size_t r = 0; r < n; ++r) {
        bool changed = false;
        for (std::size_t c = 0; c < k; ++c) changed |= wc.row(r)[c] != w.row(r)[c];
        if (r < 64) CHECK_FALSE(changed);
        clipped_rows += changed;
    }
    CHECK(clipped_rows > 0);
    // And the same rows in a full search get the same thresholds (rows are independent).
    opt.row_begin = 0;
    const Tensor<float> full = qlm::awq::search_clip(pool, x, w, opt);
    for (std::size_t r = 64; r < n; ++r) CHECK(full.row(r)[0] == mv.row(r)[0]);
}

TEST_CASE("apply_clip clamps per (row, group)") {
    Tensor<float> w = from_values(Shape{2, 4}, {-3, 1, 0.5f, 2, 4, -4, 1, -1});
    const Tensor<float> mv = from_values(Shape{2, 2}, {1.5f, 10, 0.5f, 0.75f});
    qlm::awq::apply_clip(w, mv);
    const float expect[8] = {-1.5f, 1, 0.5f, 2, 0.5f, -0.5f, 0.75f, -0.75f};
    for (std::size_t i = 0; i < 8; ++i) CHECK(w.data()[i] == expect[i]);
}

TEST_CASE("salient_channels picks the outlier channels") {
    const auto acts = outlier_acts(256, 512, 8, 101);
    const Tensor<float> xm = qlm::awq::activation_mean_abs(acts.x);
    CHECK(qlm::awq::salient_channels(xm, 8.0 / 512.0) == acts.outliers);
    const auto top2pct = qlm::awq::salient_channels(xm, 0.02);  // ceil(10.24) = 11
    CHECK(top2pct.size() == 11);
    CHECK(std::includes(top2pct.begin(), top2pct.end(), acts.outliers.begin(), acts.outliers.end()));
    CHECK(qlm::awq::salient_channels(xm, 0.0).empty());
    CHECK(qlm::awq::salient_channels(xm, 1.0).size() == 512);
    CHECK_THROWS_AS(qlm::awq::salient_channels(xm, 1.5), qlm::invalid_argument);
}

TEST_CASE("bad inputs are reported") {
    ThreadPool pool(1);
    const Tensor<float> x = gaussian(16, 128, 111);
    const Tensor<float> w = gaussian(8, 128, 112);
    const Tensor<float> w_bad_k = gaussian(8, 96, 113);
    CHECK_THROWS_AS(qlm::awq::search_scales(pool, x, {&w_bad_k}), qlm::shape_error);
    qlm::awq::ScaleSearchOptions opt;
    opt.bits = 9;
    CHECK_THROWS_AS(qlm::awq::search_scales(pool, x, {&w}, opt), qlm::invalid_argument);
    opt.bits = 4;
    opt.group_size = 96;  // does not divide 128
    CHECK_THROWS_AS(qlm::awq::search_scales(pool, x, {&w}, opt), qlm::shape_error);
    Tensor<float> xnan = x;
    xnan.row(3)[5] = std::nanf("");
    CHECK_THROWS_AS(qlm::awq::search_scales(pool, xnan, {&w}), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::awq::search_clip(pool, x, w_bad_k), qlm::shape_error);
    Tensor<float> wc = w;
    CHECK_THROWS_AS(qlm::awq::apply_clip(wc, Tensor<float>(Shape{8, 3})), qlm::shape_error);
    Tensor<float> s(Shape{128});
    CHECK_THROWS_AS(qlm::awq::scale_weight_columns(wc, s.span()), qlm::invalid_argument);  // zero scales
}
