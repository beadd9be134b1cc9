// Tests for the CPU GEMM kernels (include/qlm/backend/cpu/): every instruction-set path this CPU
// supports, forced, against the scalar reference, on awkward shapes; bitwise thread-count independence.
#include <qlm/backend/cpu/gemm.hpp>
#include <qlm/quant/packing.hpp>
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

// A random packed quantized matrix built with qlm::Packing<Bits>::pack_row.
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

std::vector<double> quant_magnitude(const std::vector<float>& x, std::size_t m, const qlm::QuantMatrixRef& w,
                                    const float* bias) {
    std::vector<double> mag(m * w.n);
    for (std::size_t j = 0; j < w.n; ++j)
        for (std::size_t i = 0; i < m; ++i) {
            double s = bias ? std::fabs(bias[j]) : 0.0;
            for (std::size_t p = 0; p < w.k; ++p)
                s += std::fabs(static_cast<double>(x[i * w.k + p]) * qlm::cpu::detail::dequant_at(w, j, p));
            mag[i * w.n + j] = s;
        }
    return mag;
}

const std::pair<std::size_t, std::size_t> kMNs[] = {{1, 257}, {2, 7}, {3, 33}, {5, 100}, {17, 1}, {64, 257}, {130, 33}};

}  // namespace

TEST_CASE("code_at reads back what Packing::pack_row wrote") {
    std::mt19937 rng(5);
    for (int bits : {8, 4, 3, 2}) {
        const auto q = make_quant(rng, bits, 3, 192, 64, true);
        std::vector<std::uint8_t> codes(192);
        const auto r = q.ref();
        for (std::size_t j = 0; j < 3; ++j) {
            std::span<const std::uint8_t> row(q.packed.data() + j * r.row_bytes, r.row_bytes);
            switch (bits) {
                case 8: qlm::Packing<8>::unpack_row(row, codes); break;
                case 4: qlm::Packing<4>::unpack_row(row, codes); break;
                case 3: qlm::Packing<3>::unpack_row(row, codes); break;
                case 2: qlm::Packing<2>::unpack_row(row, codes); break;
            }
            for (std::size_t p = 0; p < 192; ++p) REQUIRE(qlm::cpu::detail::code_at(r, j, p) == codes[p]);
        }
    }
}

TEST_CASE("gemm_quant: every path matches the scalar reference (bits 8/4/3/2, groups, zeros, bias)") {
    std::mt19937 rng(77);
    ThreadPool pool(2);
    for (int bits : {8, 4, 3, 2}) {
        std::vector<std::size_t> ks = {64, 128, 192, 768};
        if (bits == 8) ks.insert(ks.end(), {1, 13, 100});
        for (std::size_t k : ks)
            for (std::size_t gs : {std::size_t{32}, std::size_t{64}, std::size_t{128}, k}) {
                if (gs > k || k % gs != 0 || (gs == k && gs <= 128 && gs != 13 && gs != 1 && gs != 100)) continue;
                for (bool symmetric : {true, false}) {
                    std::size_t c = 0;
                    for (auto [m, n] : kMNs) {
                        const auto q = make_quant(rng, bits, n, k, gs, symmetric);
                        const auto w = q.ref();
                        const auto x = random_floats(rng, m * k);
                        const auto bias = random_floats(rng, n);
                        const float* b = (c++ % 2) ? bias.data() : nullptr;
                        std::vector<float> want(m * n);
                        qlm::cpu::reference::gemm_quant(x.data(), m, w, b, want.data());
                        const auto mag = quant_magnitude(x, m, w, b);
                        for (Isa isa : fast_isas()) {
                            std::vector<float> got(m * n, 12345.0f);
                            qlm::cpu::gemm_quant(pool, x.data(), m, w, b, got.data(), isa);
                            check_close(got, want, mag, 1e-5,
                                        std::string(qlm::cpu::isa_name(isa)) + " bits=" + std::to_string(bits) + " m=" +
                                            std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                                            " gs=" + std::to_string(gs) + " sym=" + std::to_string(symmetric));
                        }
                    }
                }
            }
    }
}

TEST_CASE("gemm_quant: bitwise identical for 1, 2 and 3 threads") {
    std::mt19937 rng(11);
    ThreadPool p1(1), p2(2), p3(3);
    for (int bits : {8, 4, 3, 2})
        for (std::size_t m : {1, 130})
            for (Isa isa : fast_isas()) {
                const std::size_t n = 300, k = 768;
                const auto q = make_quant(rng, bits, n, k, 128, false);
                const auto x = random_floats(rng, m * k);
                const auto bias = random_floats(rng, n);
                std::vector<float> y1(m * n), y2(m * n), y3(m * n);
                qlm::cpu::gemm_quant(p1, x.data(), m, q.ref(), bias.data(), y1.data(), isa);
                qlm::cpu::gemm_quant(p2, x.data(), m, q.ref(), bias.data(), y2.data(), isa);
                qlm::cpu::gemm_quant(p3, x.data(), m, q.ref(), bias.data(), y3.data(), isa);
                INFO(qlm::cpu::isa_name(isa) << " bits=" << bits << " m=" << m);
                CHECK(bitwise_equal(y1, y2));
                CHECK(bitwise_equal(y1, y3));
            }
}

TEST_CASE("quantize_activations_s8: dynamic per row and static per tensor") {
    const float x[6] = {0.5f, -1.0f, 0.25f, 0.0f, 0.0f, 0.0f};
    std::int8_t q[6];
    float s[2];
    qlm::cpu::quantize_activations_s8(x, 2, 3, q, s);
    CHECK(s[0] == doctest::Approx(1.0f / 127));
    CHECK(q[1] == -127);
    CHECK(q[0] == 64);  // 63.5 rounds to even
    CHECK(s[1] == 0.0f);
    CHECK(q[3] == 0);
    qlm::cpu::quantize_activations_s8(x, 2, 3, q, s, 0.002f);
    CHECK(s[0] == 0.002f);
    CHECK(q[0] == 127);  // clamped
    CHECK(q[1] == -127);
    std::int32_t sums[2];
    qlm::cpu::activation_group_sums(q, 2, 3, 3, sums);
    CHECK(sums[0] == 127 - 127 + q[2]);
}

TEST_CASE("gemm_w8a8: every path is bitwise equal to the integer scalar reference") {
    std::mt19937 rng(2024);
    ThreadPool pool(2), p3(3), p1(1);
    for (std::size_t k : {1, 13, 64, 100, 128, 192, 768})
        for (std::size_t gs : {std::size_t{32}, std::size_t{64}, std::size_t{128}, k}) {
            if (gs > k || k % gs != 0 || (gs == k && gs <= 128 && gs != 13 && gs != 1 && gs != 100)) continue;
            for (bool symmetric : {true, false}) {
                std::size_t c = 0;
                for (auto [m, n] : kMNs) {
                    const auto q = make_quant(rng, 8, n, k, gs, symmetric);
                    const auto w = q.ref();
                    const auto x = random_floats(rng, m * k);
                    const auto bias = random_floats(rng, n);
                    const float* b = (c++ % 2) ? bias.data() : nullptr;
                    std::vector<std::int8_t> xq(m * k);
                    std::vector<float> xs(m);
                    qlm::cpu::quantize_activations_s8(x.data(), m, k, xq.data(), xs.data());
                    std::vector<std::int32_t> sums(m * (k / gs));
                    qlm::cpu::activation_group_sums(xq.data(), m, k, gs, sums.data());
                    std::vector<float> want(m * n);
                    qlm::cpu::reference::gemm_w8a8(xq.data(), xs.data(), nullptr, m, w, b, want.data());
                    // And it approximates the float product (activation quantization error only).
                    std::vector<float> fl(m * n);
                    qlm::cpu::reference::gemm_quant(x.data(), m, w, b, fl.data());
                    const auto mag = quant_magnitude(x, m, w, b);
                    check_close(want, fl, mag, 0.02, "w8a8 vs float");
                    for (Isa isa : fast_isas()) {
                        INFO(qlm::cpu::isa_name(isa) << " m=" << m << " n=" << n << " k=" << k << " gs=" << gs
                                                     << " sym=" << symmetric);
                        std::vector<float> got(m * n, 12345.0f), got3(m * n), got1(m * n);
                        qlm::cpu::gemm_w8a8(pool, xq.data(), xs.data(), sums.data(), m, w, b, got.data(), isa);
                        CHECK(bitwise_equal(got, want));
                        qlm::cpu::gemm_w8a8(p3, xq.data(), xs.data(), nullptr, m, w, b, got3.data(), isa);
                        CHECK(bitwise_equal(got3, want));
                        qlm::cpu::gemm_w8a8(p1, xq.data(), xs.data(), nullptr, m, w, b, got1.data(), isa);
                        CHECK(bitwise_equal(got1, want));
                    }
                }
            }
        }
}

TEST_CASE("bad arguments are reported") {
    ThreadPool pool(1);
    QuantCase q{4, 2, 64, 64, true, std::vector<std::uint8_t>(64), {}, std::vector<float>(2, 1.0f)};
    auto w = q.ref();
    std::vector<float> x(64), y(2);
    w.group_size = 48;
    CHECK_THROWS_AS(qlm::cpu::gemm_quant(pool, x.data(), 1, w, nullptr, y.data()), qlm::shape_error);
    w.group_size = 64;
    w.bits = 5;
    CHECK_THROWS_AS(qlm::cpu::gemm_quant(pool, x.data(), 1, w, nullptr, y.data()), qlm::invalid_argument);
    w.bits = 4;
    std::vector<std::int8_t> xq(64);
    float xs = 1.0f;
    CHECK_THROWS_AS(qlm::cpu::gemm_w8a8(pool, xq.data(), &xs, nullptr, 1, w, nullptr, y.data()), qlm::invalid_argument);
}

TEST_CASE("linear front door routes by weight kind") {
    std::mt19937 rng(3);
    ThreadPool pool(2);
    const std::size_t m = 3, n = 33, k = 128;
    const auto x = random_floats(rng, m * k);
    const auto wf = random_floats(rng, n * k);
    std::vector<float> a(m * n), b(m * n);
    qlm::cpu::linear(pool, x.data(), m, k, wf.data(), n, nullptr, a.data());
    qlm::cpu::gemm_f32(pool, x.data(), m, k, wf.data(), n, nullptr, b.data());
    CHECK(bitwise_equal(a, b));
    const auto q4 = make_quant(rng, 4, n, k, 64, false);
    qlm::cpu::linear(pool, x.data(), m, q4.ref(), nullptr, a.data());
    qlm::cpu::gemm_quant(pool, x.data(), m, q4.ref(), nullptr, b.data());
    CHECK(bitwise_equal(a, b));
    const auto q8 = make_quant(rng, 8, n, k, k, true);
    qlm::cpu::linear_w8a8(pool, x.data(), m, q8.ref(), nullptr, a.data());
    std::vector<std::int8_t> xq(m * k);
    std::vector<float> xs(m);
    qlm::cpu::quantize_activations_s8(x.data(), m, k, xq.data(), xs.data());
    qlm::cpu::reference::gemm_w8a8(xq.data(), xs.data(), nullptr, m, q8.ref(), nullptr, b.data());
    CHECK(bitwise_equal(a, b));
}

TEST_CASE("gemm_quant: 3-bit and 2-bit groups of 32 (half a packing block) from the quantizer, every path") {
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
                    for (Isa isa : fast_isas()) {
                        std::vector<float> got(m * n, 12345.0f);
                        qlm::cpu::gemm_quant(pool, x.data(), m, w, bias.data(), got.data(), isa);
                        check_close(got, want, mag, 1e-5, std::string(qlm::cpu::isa_name(isa)) + " " + what);
                    }
                }
}
