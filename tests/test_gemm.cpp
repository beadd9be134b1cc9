// Tests for the CPU GEMM kernels (include/qlm/backend/cpu/): every instruction-set path this CPU
// supports, forced, against the scalar reference, on awkward shapes; bitwise thread-count
// independence. The quantized kernels run on repacked panels (PanelMatrix) and are checked against
// references that read the canonical packed matrix.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/core/packed_matrix.hpp>
#include <qlm/quant/rtn.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using qlm::ThreadPool;
using qlm::cpu::Isa;

namespace {

std::vector<Isa> fast_isas() {
    std::vector<Isa> out;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
        if (qlm::cpu::isa_supported(isa)) out.push_back(isa);
        else MESSAGE("skipping the " << std::string(qlm::cpu::isa_name(isa)) << " path: this CPU does not support it");
    }
    return out;
}

std::vector<float> random_floats(std::mt19937& rng, std::size_t count, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(count);
    for (auto& f : v) {
        do f = dist(rng);
        while (f == 0.0f);
    }
    return v;
}

// |got - want| <= tol * magnitude, magnitude = Σ|x||w| + |bias| of that output (given per element).
void check_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& magnitude,
                 double tol, const std::string& what) {
    REQUIRE(got.size() == want.size());
    std::size_t bad = 0;
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
        const double rel = err / (magnitude[i] + 1e-30);
        worst = std::max(worst, rel);
        if (!(err <= tol * magnitude[i] + 1e-30)) ++bad;
    }
    INFO(what << " worst relative error " << worst);
    CHECK(bad == 0);
}

std::vector<double> f32_magnitude(const std::vector<float>& x, std::size_t m, std::size_t k, const std::vector<float>& w,
                                  std::size_t n, const float* bias) {
    std::vector<double> mag(m * n);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double s = bias ? std::fabs(bias[j]) : 0.0;
            for (std::size_t p = 0; p < k; ++p) s += std::fabs(static_cast<double>(x[i * k + p]) * w[j * k + p]);
            mag[i * n + j] = s;
        }
    return mag;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

const std::size_t kMs[] = {1, 2, 3, 5, 17, 64, 130};
const std::size_t kNs[] = {1, 7, 33, 100, 257};

}  // namespace

TEST_CASE("cpu features: a path is chosen and an unsupported forced path is refused") {
    const Isa best = qlm::cpu::best_isa();
    MESSAGE("best instruction set on this CPU: ", qlm::cpu::isa_name(best));
    CHECK(qlm::cpu::isa_supported(best));
    CHECK(qlm::cpu::resolve_isa(Isa::automatic) == best);
    for (Isa isa : {Isa::avx2, Isa::avx512})
        if (!qlm::cpu::isa_supported(isa)) CHECK_THROWS_AS(qlm::cpu::resolve_isa(isa), qlm::invalid_argument);
}

TEST_CASE("gemm_f32: every path matches the scalar reference on awkward shapes") {
    std::mt19937 rng(1234);
    ThreadPool pool(2);
    for (std::size_t k : {1, 13, 100, 768})
        for (std::size_t n : kNs)
            for (std::size_t m : kMs) {
                const auto x = random_floats(rng, m * k);
                const auto w = random_floats(rng, n * k);
                const auto bias = random_floats(rng, n);
                for (bool with_bias : {false, true}) {
                    const float* b = with_bias ? bias.data() : nullptr;
                    std::vector<float> want(m * n);
                    qlm::cpu::reference::gemm_f32(x.data(), m, k, w.data(), n, b, want.data());
                    const auto mag = f32_magnitude(x, m, k, w, n, b);
                    for (Isa isa : fast_isas()) {
                        std::vector<float> got(m * n, 12345.0f);
                        qlm::cpu::gemm_f32(pool, x.data(), m, k, w.data(), n, b, got.data(), isa);
                        check_close(got, want, mag, 1e-5,
                                    std::string(qlm::cpu::isa_name(isa)) + " m=" + std::to_string(m) + " n=" +
                                        std::to_string(n) + " k=" + std::to_string(k) + " bias=" + std::to_string(with_bias));
                    }
                }
            }
}

TEST_CASE("gemm_f32: results are bitwise identical for 1, 2 and 3 threads") {
    std::mt19937 rng(99);
    ThreadPool p1(1), p2(2), p3(3);
    for (auto [m, n, k] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 257, 768}, {1, 1000, 100},
                           {130, 257, 768}, {17, 33, 1100}, {300, 7, 64}, {64, 300, 13}})
        for (Isa isa : fast_isas()) {
            const auto x = random_floats(rng, m * k);
            const auto w = random_floats(rng, n * k);
            const auto bias = random_floats(rng, n);
            std::vector<float> y1(m * n), y2(m * n), y3(m * n);
            qlm::cpu::gemm_f32(p1, x.data(), m, k, w.data(), n, bias.data(), y1.data(), isa);
            qlm::cpu::gemm_f32(p2, x.data(), m, k, w.data(), n, bias.data(), y2.data(), isa);
            qlm::cpu::gemm_f32(p3, x.data(), m, k, w.data(), n, bias.data(), y3.data(), isa);
            INFO(qlm::cpu::isa_name(isa) << " m=" << m << " n=" << n << " k=" << k);
            CHECK(bitwise_equal(y1, y2));
            CHECK(bitwise_equal(y1, y3));
        }
}

namespace {

// A random packed quantized matrix built with qlm::Packing<Bits>::pack_row (the canonical layout).
struct QuantCase {
    int bits;
    std::size_t n, k, gs;
    bool symmetric;
    std::vector<std::uint8_t> packed, zeros;
    std::vector<float> scales;
    qlm::QuantMatrixRef ref() const {
        qlm::QuantMatrixRef r;
        r.bits = bits, r.n = n, r.k = k, r.group_size = gs, r.packed = packed.data();
        r.row_bytes = packed.size() / n, r.scales = scales.data(), r.zeros = symmetric ? nullptr : zeros.data();
        return r;
    }
};

template <int Bits>
void pack_rows(const std::vector<std::uint8_t>& codes, std::size_t n, std::size_t k, std::vector<std::uint8_t>& out) {
    const std::size_t rb = qlm::Packing<Bits>::row_bytes(k);
    out.assign(n * rb, 0);
    for (std::size_t j = 0; j < n; ++j)
        qlm::Packing<Bits>::pack_row(std::span<const std::uint8_t>(codes.data() + j * k, k),
                                     std::span<std::uint8_t>(out.data() + j * rb, rb));
}

QuantCase make_quant(std::mt19937& rng, int bits, std::size_t n, std::size_t k, std::size_t gs, bool symmetric) {
    QuantCase q{bits, n, k, gs, symmetric, {}, {}, {}};
    std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
    std::vector<std::uint8_t> codes(n * k);
    for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
    switch (bits) {
        case 8: pack_rows<8>(codes, n, k, q.packed); break;
        case 4: pack_rows<4>(codes, n, k, q.packed); break;
        case 3: pack_rows<3>(codes, n, k, q.packed); break;
        case 2: pack_rows<2>(codes, n, k, q.packed); break;
    }
    q.scales = random_floats(rng, n * (k / gs), 0.01f, 0.1f);
    q.zeros.resize(n * (k / gs));
    for (auto& z : q.zeros) z = static_cast<std::uint8_t>(code(rng));
    return q;
}

// The dequantized weight [n, k] of a canonical matrix.
std::vector<float> dequantized(const qlm::QuantMatrixRef& w) {
    std::vector<float> out(w.n * w.k);
    std::vector<std::uint8_t> codes(w.k);
    for (std::size_t j = 0; j < w.n; ++j) {
        w.codes_row(j, codes);
        for (std::size_t p = 0; p < w.k; ++p)
            out[j * w.k + p] = static_cast<float>(codes[p] - w.zero(j, p / w.group_size)) * w.scale(j, p / w.group_size);
    }
    return out;
}

std::vector<double> quant_magnitude(const std::vector<float>& x, std::size_t m, const qlm::QuantMatrixRef& w, const float* bias) {
    return f32_magnitude(x, m, w.k, dequantized(w), w.n, bias);
}

// Calls fn(std::integral_constant<int, Bits>) for a run-time bit width.
template <class F>
void with_bits(int bits, F&& fn) {
    switch (bits) {
        case 8: return fn(std::integral_constant<int, 8>{});
        case 4: return fn(std::integral_constant<int, 4>{});
        case 3: return fn(std::integral_constant<int, 3>{});
        case 2: return fn(std::integral_constant<int, 2>{});
    }
}

const std::pair<std::size_t, std::size_t> kMNs[] = {{1, 257}, {2, 7}, {3, 33}, {4, 16}, {5, 100}, {17, 1}, {64, 257}, {130, 33}};

// Group sizes worth testing for a row of k: every multiple of 32 the scheme allows up to 128, and k.
std::vector<std::size_t> group_sizes(int, std::size_t k) {
    std::vector<std::size_t> out;
    for (std::size_t gs : {std::size_t{32}, std::size_t{64}, std::size_t{128}})
        if (gs < k && k % gs == 0) out.push_back(gs);
    out.push_back(k);
    return out;
}

std::vector<std::size_t> row_lengths(int bits) {
    if (bits == 8) return {4, 7, 13, 64, 100, 192, 768};  // 7, 13: padded to the 4-column step
    return {64, 128, 192, 768};
}

}  // namespace

TEST_CASE("PanelMatrix: repacking keeps every code, scale and zero point, and canonical() gives the bytes back") {
    std::mt19937 rng(5);
    for (int bits : {8, 4, 3, 2})
        for (std::size_t n : {1, 15, 16, 17, 40})
            for (std::size_t k : row_lengths(bits))
                for (std::size_t gs : group_sizes(bits, k))
                    for (bool symmetric : {true, false})
                        with_bits(bits, [&](auto b) {
                            constexpr int B = decltype(b)::value;
                            const auto q = make_quant(rng, B, n, k, gs, symmetric);
                            const auto w = q.ref();
                            const qlm::cpu::PanelMatrix<B> p(w);
                            INFO("bits=" << B << " n=" << n << " k=" << k << " gs=" << gs << " sym=" << symmetric);
                            REQUIRE(p.rows() == n);
                            REQUIRE(p.panels() == (n + 15) / 16);
                            std::vector<std::uint8_t> codes(k);
                            bool same = true;
                            for (std::size_t j = 0; j < n; ++j) {
                                w.codes_row(j, codes);
                                for (std::size_t c = 0; c < k; ++c) same = same && p.code(j, c) == codes[c];
                                for (std::size_t g = 0; g < k / gs; ++g)
                                    same = same && p.scale(j, g) == w.scale(j, g) && p.zero(j, g) == w.zero(j, g);
                            }
                            CHECK(same);
                            std::vector<std::uint8_t> packed(q.packed.size()), zeros(symmetric ? 0 : q.zeros.size());
                            std::vector<float> scales(q.scales.size());
                            p.canonical(packed, scales, zeros);
                            CHECK(packed == q.packed);
                            CHECK(scales == q.scales);
                            if (!symmetric) CHECK(zeros == q.zeros);
                            // The canonical bytes at Bits per code, rounded up to whole panels and load steps.
                            const std::size_t rows = p.panels() * 16, groups = k / gs;
                            CHECK(p.storage_bytes() == rows * p.padded_cols() * B / 8 + rows * groups * (symmetric ? 4 : 5));
                        });
}

TEST_CASE("gemm_wo (float activations): every path matches the scalar reference (bits 8/4/3/2, groups, zeros, bias)") {
    std::mt19937 rng(77);
    ThreadPool pool(2);
    for (int bits : {8, 4, 3, 2})
        for (std::size_t k : row_lengths(bits))
            for (std::size_t gs : group_sizes(bits, k))
                for (bool symmetric : {true, false}) {
                    std::size_t c = 0;
                    for (auto [m, n] : kMNs)
                        with_bits(bits, [&](auto b) {
                            constexpr int B = decltype(b)::value;
                            const auto q = make_quant(rng, B, n, k, gs, symmetric);
                            const auto w = q.ref();
                            const qlm::cpu::PanelMatrix<B> p(w);
                            const auto x = random_floats(rng, m * k);
                            const auto bias = random_floats(rng, n);
                            const float* bp = (c++ % 2) ? bias.data() : nullptr;
                            std::vector<float> want(m * n);
                            qlm::cpu::reference::gemm_quant(x.data(), m, w, bp, want.data());
                            const auto mag = quant_magnitude(x, m, w, bp);
                            for (Isa isa : fast_isas()) {
                                std::vector<float> got(m * n, 12345.0f);
                                qlm::cpu::linear_wo(pool, x.data(), m, p, bp, got.data(), isa);
                                check_close(got, want, mag, 1e-5,
                                            std::string(qlm::cpu::isa_name(isa)) + " bits=" + std::to_string(B) + " m=" +
                                                std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                                " gs=" + std::to_string(gs) + " sym=" + std::to_string(symmetric));
                            }
                        });
                }
}

TEST_CASE("quantize_activations: every path gives the reference's int8 values, scales and group sums") {
    std::mt19937 rng(8);
    ThreadPool pool(2);
    for (std::size_t k : {3, 16, 100, 768})
        for (std::size_t m : {1, 2, 7, 200})
            for (float static_scale : {0.0f, 0.004f}) {
                auto x = random_floats(rng, m * k, -0.6f, 0.6f);
                for (std::size_t p = 0; p < k; ++p) x[p] = 0.0f;  // an all-zero row: scale 0, codes 0
                std::vector<std::int8_t> want(m * k);
                std::vector<float> want_scales(m);
                qlm::cpu::reference::quantize_activations(x.data(), m, k, static_scale, want.data(), want_scales.data());
                for (Isa isa : fast_isas()) {
                    INFO(qlm::cpu::isa_name(isa) << " k=" << k << " m=" << m << " static=" << static_scale);
                    std::vector<std::int8_t> got(m * k);
                    std::vector<float> scales(m), sums(m);
                    qlm::cpu::quantize_activations(pool, x.data(), m, k, k, static_scale, got.data(), scales.data(), sums.data(), isa);
                    CHECK(got == want);
                    CHECK(scales == want_scales);
                    bool sums_ok = true;
                    for (std::size_t i = 0; i < m; ++i) {
                        std::int32_t s = 0;
                        for (std::size_t p = 0; p < k; ++p) s += want[i * k + p];
                        sums_ok = sums_ok && sums[i] == static_cast<float>(s);
                    }
                    CHECK(sums_ok);
                }
            }
    // Rounding and clamping, by hand.
    const float x[6] = {0.5f, -1.0f, 0.25f, 0.0f, 0.0f, 0.0f};
    std::int8_t q[6];
    float s[2];
    qlm::cpu::reference::quantize_activations(x, 2, 3, 0.0f, q, s);
    CHECK(s[0] == doctest::Approx(1.0f / 127));
    CHECK(q[1] == -127);
    CHECK(q[0] == 64);  // 63.5 rounds to even
    CHECK(s[1] == 0.0f);
    CHECK(q[3] == 0);
    qlm::cpu::reference::quantize_activations(x, 2, 3, 0.002f, q, s);
    CHECK(s[0] == 0.002f);
    CHECK(q[0] == 127);  // clamped
    CHECK(q[1] == -127);
}

TEST_CASE("gemm_a8 (int8 activations): every path matches the exact integer reference, which approximates the float product") {
    std::mt19937 rng(2024);
    ThreadPool pool(2);
    for (int bits : {8, 4, 3, 2})
        for (std::size_t k : row_lengths(bits))
            for (std::size_t gs : group_sizes(bits, k))
                for (bool symmetric : {true, false}) {
                    std::size_t c = 0;
                    for (auto [m, n] : kMNs)
                        with_bits(bits, [&](auto b) {
                            constexpr int B = decltype(b)::value;
                            const auto q = make_quant(rng, B, n, k, gs, symmetric);
                            const auto w = q.ref();
                            const qlm::cpu::PanelMatrix<B> p(w);
                            const auto x = random_floats(rng, m * k);
                            const auto bias = random_floats(rng, n);
                            const float* bp = (c++ % 2) ? bias.data() : nullptr;
                            std::vector<std::int8_t> xq(m * k);
                            std::vector<float> xs(m), xd(m * k);
                            qlm::cpu::reference::quantize_activations(x.data(), m, k, 0.0f, xq.data(), xs.data());
                            for (std::size_t i = 0; i < m * k; ++i) xd[i] = xq[i] * xs[i / k];
                            std::vector<float> want(m * n), fl(m * n);
                            qlm::cpu::reference::gemm_a8(xq.data(), xs.data(), m, w, bp, want.data());
                            qlm::cpu::reference::gemm_quant(x.data(), m, w, bp, fl.data());
                            const auto mag = quant_magnitude(xd, m, w, bp);
                            // Rounding moves each activation by at most half a step: |Δy| <= xs/2 · Σ|w|.
                            const auto wd = dequantized(w);
                            std::size_t beyond = 0;
                            for (std::size_t i = 0; i < m; ++i)
                                for (std::size_t j = 0; j < n; ++j) {
                                    double wsum = 0;
                                    for (std::size_t p2 = 0; p2 < k; ++p2) wsum += std::fabs(wd[j * k + p2]);
                                    const double bound = 0.5 * xs[i] * wsum * (1 + 1e-4) + 1e-4 * mag[i * n + j];
                                    beyond += std::fabs(static_cast<double>(want[i * n + j]) - fl[i * n + j]) > bound;
                                }
                            CHECK_MESSAGE(beyond == 0, "int8 activations vs float: outside the rounding bound");
                            for (Isa isa : fast_isas()) {
                                std::vector<float> got(m * n, 12345.0f);
                                qlm::cpu::linear_a8(pool, x.data(), m, p, bp, got.data(), 0.0f, isa);
                                check_close(got, want, mag, 1e-5,
                                            std::string(qlm::cpu::isa_name(isa)) + " bits=" + std::to_string(B) + " m=" +
                                                std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                                " gs=" + std::to_string(gs) + " sym=" + std::to_string(symmetric));
                            }
                        });
                }
}

TEST_CASE("gemm_a8 with a static activation scale clamps like the reference") {
    std::mt19937 rng(6);
    ThreadPool pool(2);
    const std::size_t m = 5, n = 40, k = 128;
    const auto q = make_quant(rng, 8, n, k, k, true);
    const qlm::cpu::PanelMatrix<8> p(q.ref());
    const auto x = random_floats(rng, m * k, -2.0f, 2.0f);
    const float scale = 0.01f;  // |x| / scale reaches 200: clamped at 127
    std::vector<std::int8_t> xq(m * k);
    std::vector<float> xs(m), want(m * n), xd(m * k);
    qlm::cpu::reference::quantize_activations(x.data(), m, k, scale, xq.data(), xs.data());
    for (std::size_t i = 0; i < m * k; ++i) xd[i] = xq[i] * xs[i / k];
    qlm::cpu::reference::gemm_a8(xq.data(), xs.data(), m, q.ref(), nullptr, want.data());
    const auto mag = quant_magnitude(xd, m, q.ref(), nullptr);
    for (Isa isa : fast_isas()) {
        std::vector<float> got(m * n);
        qlm::cpu::linear_a8(pool, x.data(), m, p, nullptr, got.data(), scale, isa);
        check_close(got, want, mag, 1e-5, std::string("static scale ") + qlm::cpu::isa_name(isa));
    }
}

TEST_CASE("quantized kernels: bitwise identical for 1, 2 and 3 threads") {
    std::mt19937 rng(11);
    ThreadPool p1(1), p2(2), p3(3);
    for (int bits : {8, 4, 3, 2})
        for (std::size_t m : {1, 3, 130})
            with_bits(bits, [&](auto b) {
                constexpr int B = decltype(b)::value;
                const std::size_t n = 300, k = 768;
                const auto q = make_quant(rng, B, n, k, 128, false);
                const qlm::cpu::PanelMatrix<B> p(q.ref());
                const auto x = random_floats(rng, m * k);
                const auto bias = random_floats(rng, n);
                for (Isa isa : fast_isas()) {
                    INFO(qlm::cpu::isa_name(isa) << " bits=" << B << " m=" << m);
                    for (bool int8 : {false, true}) {
                        std::vector<float> y1(m * n), y2(m * n), y3(m * n);
                        auto run = [&](ThreadPool& pool, std::vector<float>& y) {
                            if (int8) qlm::cpu::linear_a8(pool, x.data(), m, p, bias.data(), y.data(), 0.0f, isa);
                            else qlm::cpu::linear_wo(pool, x.data(), m, p, bias.data(), y.data(), isa);
                        };
                        run(p1, y1), run(p2, y2), run(p3, y3);
                        CHECK(bitwise_equal(y1, y2));
                        CHECK(bitwise_equal(y1, y3));
                    }
                }
            });
}

TEST_CASE("bad arguments are reported") {
    std::mt19937 rng(3);
    auto q = make_quant(rng, 4, 2, 64, 64, true);
    auto w = q.ref();
    w.group_size = 48;
    CHECK_THROWS_AS(qlm::cpu::PanelMatrix<4>{w}, qlm::shape_error);
    w.group_size = 64;
    CHECK_THROWS_AS(qlm::cpu::PanelMatrix<8>{w}, qlm::invalid_argument);  // 4-bit codes
    auto q8 = make_quant(rng, 8, 2, 64, 64, true);
    auto w8 = q8.ref();
    w8.group_size = 2;  // groups must hold whole 4-column load steps (a per-channel row may not)
    CHECK_THROWS_AS(qlm::cpu::PanelMatrix<8>{w8}, qlm::shape_error);
    ThreadPool pool(1);
    const qlm::cpu::PanelMatrix<4> p(q.ref());
    std::vector<float> x(64), y(2), sums(2);
    std::vector<std::int8_t> xq(64);
    CHECK_THROWS_AS(qlm::cpu::gemm_a8(pool, xq.data(), nullptr, sums.data(), 1, p, nullptr, y.data()), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::cpu::linear_wo(pool, nullptr, 1, p, nullptr, y.data()), qlm::invalid_argument);
    CHECK_THROWS_AS(qlm::cpu::quantize_activations(pool, x.data(), 1, 64, 48, 0.0f, xq.data(), y.data(), sums.data()),
                    qlm::shape_error);
}

TEST_CASE("3-bit and 2-bit groups of 32 (half a packing block) from the quantizer, every path, both activation kinds") {
    // Weights from quantize_rtn (so the packed bytes are the quantizer's, not this file's packer),
    // with the magnitude changing from one 32-column half to the next, so a kernel that applied a
    // neighbouring group's scale or zero point would be far off. G = 96 ends groups mid-block too.
    std::mt19937 rng(2024);
    ThreadPool pool(2);
    for (int bits : {3, 2})
        for (std::size_t gs : {std::size_t{32}, std::size_t{96}})
            for (bool symmetric : {true, false})
                for (auto [m, n, k] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 67, 192}, {1, 256, 768},
                                       {5, 67, 192}, {70, 130, 768}}) {
                    const qlm::QuantSpec spec{bits, qlm::GranularityKind::per_group, gs, symmetric};
                    qlm::Tensor<float> wf(qlm::Shape{n, k});
                    const auto raw = random_floats(rng, n * k);
                    for (std::size_t i = 0; i < n * k; ++i)
                        wf.data()[i] = raw[i] * (1.0f + 4.0f * static_cast<float>((i % k) / 32 % 3)) + (symmetric ? 0.0f : 0.3f);
                    const qlm::AnyQuantTensor q = qlm::quantize_rtn(wf.view(), spec);
                    const qlm::QuantMatrixRef w = q.ref();
                    const auto x = random_floats(rng, m * k);
                    const auto bias = random_floats(rng, n);
                    const std::string what = qlm::to_string(spec) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                                             " k=" + std::to_string(k);
                    std::vector<float> want(m * n);
                    qlm::cpu::reference::gemm_quant(x.data(), m, w, bias.data(), want.data());
                    const auto mag = quant_magnitude(x, m, w, bias.data());
                    // the reference reads the packed bytes as the quantizer's own dequantize() does
                    const qlm::Tensor<float> deq = q.dequantize();
                    std::vector<float> from_deq(m * n);
                    qlm::cpu::reference::gemm_f32(x.data(), m, k, deq.data(), n, bias.data(), from_deq.data());
                    check_close(want, from_deq, mag, 1e-6, "reference vs dequantize() " + what);
                    std::vector<std::int8_t> xq(m * k);
                    std::vector<float> xs(m), xd(m * k), want_a8(m * n);
                    qlm::cpu::reference::quantize_activations(x.data(), m, k, 0.0f, xq.data(), xs.data());
                    for (std::size_t i = 0; i < m * k; ++i) xd[i] = xq[i] * xs[i / k];
                    qlm::cpu::reference::gemm_a8(xq.data(), xs.data(), m, w, bias.data(), want_a8.data());
                    const auto mag_a8 = quant_magnitude(xd, m, w, bias.data());
                    with_bits(bits, [&](auto b) {
                        constexpr int B = decltype(b)::value;
                        const qlm::cpu::PanelMatrix<B> p(w);
                        for (Isa isa : fast_isas()) {
                            std::vector<float> got(m * n, 12345.0f);
                            qlm::cpu::linear_wo(pool, x.data(), m, p, bias.data(), got.data(), isa);
                            check_close(got, want, mag, 1e-5, std::string(qlm::cpu::isa_name(isa)) + " float act " + what);
                            qlm::cpu::linear_a8(pool, x.data(), m, p, bias.data(), got.data(), 0.0f, isa);
                            check_close(got, want_a8, mag_a8, 1e-5, std::string(qlm::cpu::isa_name(isa)) + " int8 act " + what);
                        }
                    });
                }
}

TEST_CASE("linear_half (fp16 and bf16 weights): every path matches fp32 arithmetic on the rounded weights") {
    std::mt19937 rng(31);
    ThreadPool pool(2), p1(1), p3(3);
    auto run = [&]<class Half>(std::type_identity<Half>, const char* name) {
        for (std::size_t k : {1, 7, 64, 768})
            for (auto [m, n] : kMNs) {
                const auto wf = random_floats(rng, n * k);
                const auto x = random_floats(rng, m * k);
                const auto bias = random_floats(rng, n);
                const auto w = qlm::cpu::HalfPanelMatrix<Half>::from_float(wf, n, k);
                std::vector<float> rounded(n * k);
                bool round_trip = true;
                for (std::size_t j = 0; j < n; ++j)
                    for (std::size_t p = 0; p < k; ++p) {
                        rounded[j * k + p] = w.value(j, p);
                        const float back = std::is_same_v<Half, qlm::fp16_t> ? qlm::fp16_to_float(qlm::float_to_fp16(wf[j * k + p]))
                                                                             : qlm::bf16_to_float(qlm::float_to_bf16(wf[j * k + p]));
                        round_trip = round_trip && back == rounded[j * k + p];
                    }
                CHECK(round_trip);
                std::vector<float> want(m * n);
                qlm::cpu::reference::gemm_f32(x.data(), m, k, rounded.data(), n, bias.data(), want.data());
                const auto mag = f32_magnitude(x, m, k, rounded, n, bias.data());
                for (Isa isa : fast_isas()) {
                    std::vector<float> got(m * n, 12345.0f), got1(m * n), got3(m * n);
                    qlm::cpu::linear_half(pool, x.data(), m, w, bias.data(), got.data(), isa);
                    check_close(got, want, mag, 1e-5,
                                std::string(name) + " " + qlm::cpu::isa_name(isa) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                                    " k=" + std::to_string(k));
                    qlm::cpu::linear_half(p1, x.data(), m, w, bias.data(), got1.data(), isa);
                    qlm::cpu::linear_half(p3, x.data(), m, w, bias.data(), got3.data(), isa);
                    CHECK(bitwise_equal(got, got1));
                    CHECK(bitwise_equal(got, got3));
                }
            }
    };
    run(std::type_identity<qlm::fp16_t>{}, "fp16");
    run(std::type_identity<qlm::bf16_t>{}, "bf16");
    const auto w = qlm::cpu::HalfPanelMatrix<qlm::bf16_t>::from_float(std::vector<float>{1.0f, -2.0f, 3.5f}, 3, 1);
    CHECK(w.row_major() == std::vector<std::uint16_t>{qlm::float_to_bf16(1.0f), qlm::float_to_bf16(-2.0f), qlm::float_to_bf16(3.5f)});
    CHECK_THROWS_AS((qlm::cpu::HalfPanelMatrix<qlm::fp16_t>(std::vector<std::uint16_t>(5), 2, 3)), qlm::shape_error);
}

TEST_CASE("batch invariance: a row's result is bitwise the same alone (GEMV) and inside any batch (GEMM tiles)") {
    // What lets a request's greedy output stay the same whatever shares its batch.
    std::mt19937 rng(41);
    ThreadPool pool(2);
    const std::size_t n = 70, k = 1100 / 4 * 4;  // k over the fp32 GEMM's 512-column blocks
    for (std::size_t m : {2, 3, 4, 5, 9, 64}) {
        const auto x = random_floats(rng, m * k);
        const auto bias = random_floats(rng, n);
        auto same_rows = [&](auto&& run, const std::string& what) {
            std::vector<float> batch(m * n), alone(n);
            run(x.data(), m, batch.data());
            bool same = true;
            for (std::size_t i = 0; i < m; ++i) {
                run(x.data() + i * k, 1, alone.data());
                same = same && std::memcmp(alone.data(), batch.data() + i * n, n * sizeof(float)) == 0;
            }
            INFO(what << " m=" << m);
            CHECK(same);
        };
        const auto wf = random_floats(rng, n * k);
        const auto wh = qlm::cpu::HalfPanelMatrix<qlm::bf16_t>::from_float(wf, n, k);
        const auto q4 = make_quant(rng, 4, n, 1024, 128, false);
        const qlm::cpu::PanelMatrix<4> p4(q4.ref());
        const auto q8 = make_quant(rng, 8, n, k, k, true);
        const qlm::cpu::PanelMatrix<8> p8(q8.ref());
        for (Isa isa : fast_isas()) {
            const std::string name = qlm::cpu::isa_name(isa);
            same_rows([&](const float* xs, std::size_t rows, float* y) { qlm::cpu::gemm_f32(pool, xs, rows, k, wf.data(), n, bias.data(), y, isa); },
                      "fp32 " + name);
            same_rows([&](const float* xs, std::size_t rows, float* y) { qlm::cpu::linear_half(pool, xs, rows, wh, bias.data(), y, isa); },
                      "bf16 " + name);
            same_rows([&](const float* xs, std::size_t rows, float* y) { qlm::cpu::linear_a8(pool, xs, rows, p8, bias.data(), y, 0.0f, isa); },
                      "w8a8 " + name);
            // 4-bit rows of 1024 columns: the first 1024 of each x row, with x's stride
            std::vector<float> x4(m * 1024);
            for (std::size_t i = 0; i < m; ++i) std::copy_n(x.data() + i * k, 1024, x4.data() + i * 1024);
            for (bool int8 : {false, true}) {
                std::vector<float> batch(m * n), alone(n);
                auto run = [&](const float* xs, std::size_t rows, float* y) {
                    if (int8) qlm::cpu::linear_a8(pool, xs, rows, p4, bias.data(), y, 0.0f, isa);
                    else qlm::cpu::linear_wo(pool, xs, rows, p4, bias.data(), y, isa);
                };
                run(x4.data(), m, batch.data());
                bool same = true;
                for (std::size_t i = 0; i < m; ++i) {
                    run(x4.data() + i * 1024, 1, alone.data());
                    same = same && std::memcmp(alone.data(), batch.data() + i * n, n * sizeof(float)) == 0;
                }
                INFO("w4 " << (int8 ? "a8 " : "float act ") << name << " m=" << m);
                CHECK(same);
            }
        }
    }
}
