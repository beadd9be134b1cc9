// Tests for quant/scheme.hpp, core/packed_matrix.hpp, quant/quant_tensor.hpp and quant/rtn.hpp.
#include <doctest/doctest.h>

#include <qlm/core/thread_pool.hpp>
#include <qlm/core/packed_matrix.hpp>
#include <qlm/quant/quant_tensor.hpp>
#include <qlm/quant/rtn.hpp>
#include <qlm/quant/scheme.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

using namespace qlm;

namespace {

// ---- compile-time scheme checks ----
static_assert(Granularity<PerTensor> && Granularity<PerChannel> && Granularity<PerGroup<128>>);
static_assert(!Granularity<int> && !Granularity<Symmetric>);
static_assert(QuantMode<Symmetric> && QuantMode<Asymmetric> && !QuantMode<PerChannel>);
static_assert(ValidScheme<4, PerGroup<128>, Symmetric>);
static_assert(ValidScheme<4, PerGroup<32>, Asymmetric>);  // 4-bit g32: nibble halves
static_assert(ValidScheme<8, PerGroup<32>, Symmetric>);
static_assert(ValidScheme<3, PerGroup<64>, Symmetric>);
static_assert(ValidScheme<3, PerGroup<32>, Symmetric>);   // 2/3-bit g32: half a 64-code block
static_assert(ValidScheme<2, PerGroup<32>, Asymmetric>);
static_assert(ValidScheme<3, PerGroup<96>, Asymmetric>);  // any positive multiple of 32
static_assert(ValidScheme<2, PerTensor, Asymmetric>);
static_assert(!ValidScheme<5, PerChannel, Symmetric>);
static_assert(!ValidScheme<1, PerChannel, Symmetric>);
static_assert(!ValidScheme<16, PerChannel, Symmetric>);
static_assert(!ValidScheme<3, PerGroup<16>, Symmetric>);
static_assert(!ValidScheme<2, PerGroup<48>, Asymmetric>);
static_assert(!ValidScheme<4, PerGroup<48>, Symmetric>);
static_assert(!ValidScheme<8, PerGroup<16>, Symmetric>);
static_assert(ValidScheme<4, PerGroup<dynamic_group>, Symmetric>);  // group size chosen at run time
static_assert(!ValidScheme<4, int, Symmetric>);
static_assert(!ValidScheme<4, PerChannel, int>);

template <int B, class G, class M>
concept CanFormQuantTensor = requires { typename QuantTensor<B, G, M>; } && requires { QuantTensor<B, G, M>{}; };
static_assert(CanFormQuantTensor<4, PerGroup<128>, Symmetric>);
static_assert(!CanFormQuantTensor<5, PerChannel, Symmetric>);
static_assert(CanFormQuantTensor<3, PerGroup<32>, Asymmetric>);
static_assert(!CanFormQuantTensor<3, PerGroup<48>, Asymmetric>);

static_assert(spec_of<4, PerGroup<128>, Symmetric>() == QuantSpec{4, GranularityKind::per_group, 128, true});
static_assert(spec_of<8, PerChannel, Asymmetric>() == QuantSpec{8, GranularityKind::per_channel, 0, false});
static_assert(QuantTensor<3, PerTensor, Asymmetric>::spec == QuantSpec{3, GranularityKind::per_tensor, 0, false});

Tensor<float> random_matrix(std::size_t n, std::size_t k, std::uint64_t seed, bool with_zeros = true) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> row_scale(0.01f, 3.0f);
    std::uniform_int_distribution<int> kind(0, 19);
    Tensor<float> w(Shape{n, k});
    for (std::size_t r = 0; r < n; ++r) {
        const float rs = row_scale(rng);
        const float offset = (r % 3 == 1) ? rs * 0.8f : 0.0f;  // some rows off-centre (asymmetric data)
        for (std::size_t c = 0; c < k; ++c) {
            const int t = kind(rng);
            float v = offset + rs * normal(rng);
            if (with_zeros && t == 0) v = 0.0f;              // exact zeros
            if (t == 1) v = rs * 4.0f * normal(rng);         // heavier tail
            w.row(r)[c] = v;
        }
    }
    return w;
}

struct SchemeStats {
    std::size_t checked = 0;
    std::size_t outside = 0;
};

// Checks every element of quantize_rtn<B, G, M>(w) against the documented formulas.
template <int B, class G, class M>
SchemeStats check_rtn(const Tensor<float>& w, ThreadPool& pool, const RtnOptions& opt) {
    const std::size_t n = w.dim(0), k = w.dim(1);
    const auto q = quantize_rtn<B, G, M>(w, pool, opt);
    constexpr int maxq = (1 << B) - 1;
    const std::string what = to_string(spec_of<B, G, M>()) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                             (opt.mse_clip ? " clip" : "");
    INFO(what);
    REQUIRE(q.rows() == n);
    REQUIRE(q.cols() == k);
    const std::size_t gs = G::kind == GranularityKind::per_group ? G::group_size : k;
    REQUIRE(q.group_size() == gs);
    REQUIRE(q.groups() == k / gs);
    REQUIRE(q.row_bytes() == Packing<B>::row_bytes(k));
    REQUIRE(q.packed().size() == n * q.row_bytes());
    REQUIRE(q.scales().size() == n * q.groups());
    REQUIRE(q.zeros().size() == (M::symmetric ? 0 : n * q.groups()));

    const auto ref = q.ref();
    CHECK(ref.bits == B);
    CHECK(ref.n == n);
    CHECK(ref.k == k);
    CHECK(ref.group_size == gs);
    CHECK(ref.row_bytes == q.row_bytes());
    CHECK(ref.packed == q.packed().data());
    CHECK(ref.scales == q.scales().data());
    CHECK((ref.zeros == nullptr) == M::symmetric);
    CHECK(reinterpret_cast<std::uintptr_t>(ref.packed) % kTensorAlignment == 0);

    const Tensor<float> deq = q.dequantize();
    std::vector<std::uint8_t> codes(k);
    std::vector<float> row(k);
    SchemeStats st;
    std::size_t bad_code = 0, bad_formula = 0, bad_error = 0, bad_zero = 0, bad_scale = 0;

    float tensor_lo = 0.0f, tensor_hi = 0.0f;
    for (std::size_t i = 0; i < n * k; ++i) {
        tensor_lo = std::min(tensor_lo, w.data()[i]);
        tensor_hi = std::max(tensor_hi, w.data()[i]);
    }
    for (std::size_t r = 0; r < n; ++r) {
        q.codes_row(r, codes);
        q.dequantize_row(r, row);
        for (std::size_t g = 0; g < q.groups(); ++g) {
            const float s = q.scale(r, g);
            const int z = q.zero(r, g);
            CHECK(ref.scale(r, g) == s);
            CHECK(ref.zero(r, g) == z);
            if (!(s > 0.0f) || !std::isfinite(s) || z < 0 || z > maxq) ++bad_scale;
            if (M::symmetric && z != (1 << (B - 1))) ++bad_scale;
            if constexpr (G::kind == GranularityKind::per_tensor) {
                if (s != q.scale(0, 0) || z != q.zero(0, 0)) ++bad_scale;
            }
            // independent recomputation of the scale convention (plain min/max only)
            if (!opt.mse_clip) {
                float lo = 0.0f, hi = 0.0f;
                if constexpr (G::kind == GranularityKind::per_tensor) {
                    lo = tensor_lo;
                    hi = tensor_hi;
                } else {
                    for (std::size_t c = g * gs; c < (g + 1) * gs; ++c) {
                        lo = std::min(lo, w.row(r)[c]);
                        hi = std::max(hi, w.row(r)[c]);
                    }
                }
                const double want = M::symmetric ? 2.0 * std::max(-lo, hi) / maxq : (static_cast<double>(hi) - lo) / maxq;
                if (want > 0 && std::fabs(s - want) > 1e-6 * want) ++bad_scale;
                if (!M::symmetric && want > 0 && z != static_cast<int>(std::nearbyint(-lo / s))) ++bad_scale;
            }
            // representable range plus half a step, with slack for float rounding: s and (u - z) * s are
            // rounded to float, an error of up to ~maxq * 2^-24 steps at the ends of the range
            const double tol = (maxq + 1) * 2.5e-7 * s;
            const double lo_rep = (0.0 - z) * s - 0.5 * s - tol, hi_rep = (maxq - z) * static_cast<double>(s) + 0.5 * s + tol;
            for (std::size_t c = g * gs; c < (g + 1) * gs; ++c) {
                const float x = w.row(r)[c];
                const std::uint8_t u = codes[c];
                if (u > maxq) ++bad_code;
                // the exact formula q = clamp(round(x/s) + z, 0, maxq)
                const float expect = std::clamp(std::nearbyint(x / s) + static_cast<float>(z), 0.0f, static_cast<float>(maxq));
                if (static_cast<float>(u) != expect) ++bad_formula;
                const float d = static_cast<float>(static_cast<int>(u) - z) * s;
                if (d != row[c] || d != deq.row(r)[c]) ++bad_formula;
                if (x == 0.0f && d != 0.0f) ++bad_zero;
                if (x >= lo_rep && x <= hi_rep) {
                    ++st.checked;
                    if (std::fabs(static_cast<double>(d) - x) > 0.5 * s + tol) ++bad_error;
                } else {
                    ++st.outside;
                }
            }
        }
    }
    CHECK(bad_code == 0);
    CHECK(bad_formula == 0);
    CHECK(bad_error == 0);
    CHECK(bad_zero == 0);
    CHECK(bad_scale == 0);
    if (!opt.mse_clip) CHECK(st.outside == 0);  // no clipping: every element is inside the range

    // run-time API gives identical bytes; single-threaded too
    const AnyQuantTensor any = quantize_rtn(w, spec_of<B, G, M>(), opt);
    CHECK(any.spec() == spec_of<B, G, M>());
    CHECK(std::ranges::equal(any.packed(), q.packed()));
    CHECK(std::ranges::equal(any.scales(), q.scales()));
    CHECK(std::ranges::equal(any.zeros(), q.zeros()));
    return st;
}

template <int B, class M>
void check_all_granularities(ThreadPool& pool, std::uint64_t seed) {
    const std::array<std::size_t, 3> ns{1, 7, 33};
    for (std::size_t n : ns) {
        const auto w = random_matrix(n, 384, seed + n);
        for (bool clip : {false, true}) {
            RtnOptions opt;
            opt.mse_clip = clip;
            check_rtn<B, PerTensor, M>(w, pool, opt);
            check_rtn<B, PerChannel, M>(w, pool, opt);
            check_rtn<B, PerGroup<32>, M>(w, pool, opt);
            check_rtn<B, PerGroup<64>, M>(w, pool, opt);
            check_rtn<B, PerGroup<128>, M>(w, pool, opt);
        }
    }
}

double group_err(std::span<const float> w, std::span<const float> d, double norm) {
    double e = 0;
    for (std::size_t i = 0; i < w.size(); ++i) e += std::pow(std::fabs(static_cast<double>(w[i]) - d[i]), norm);
    return e;
}

}  // namespace

TEST_CASE("QuantSpec: to_string / parse round trip and validation") {
    const std::vector<std::pair<QuantSpec, std::string>> cases = {
        {spec_of<4, PerGroup<128>, Symmetric>(), "w4-g128-sym"},
        {spec_of<4, PerGroup<32>, Asymmetric>(), "w4-g32-asym"},
        {spec_of<3, PerGroup<64>, Symmetric>(), "w3-g64-sym"},
        {spec_of<3, PerGroup<32>, Asymmetric>(), "w3-g32-asym"},
        {spec_of<2, PerGroup<32>, Symmetric>(), "w2-g32-sym"},
        {spec_of<2, PerChannel, Asymmetric>(), "w2-channel-asym"},
        {spec_of<8, PerChannel, Symmetric>(), "w8-channel-sym"},
        {spec_of<8, PerTensor, Asymmetric>(), "w8-tensor-asym"},
    };
    for (const auto& [spec, text] : cases) {
        CHECK(to_string(spec) == text);
        CHECK(parse_quant_spec(text) == spec);
        CHECK(spec.valid());
    }
    for (const char* bad : {"", "w4", "w4-g128", "w5-g128-sym", "w4-g48-sym", "w3-g16-sym", "w2-g48-sym", "w4-g0-sym", "w4-g-sym",
                            "w4-g128-signed", "x4-g128-sym", "w4-channel-sym-x", "w4-block-sym", "W4-g128-sym",
                            "w-g128-sym", "w4-g128x-sym", "w99999999999999999999-channel-sym"}) {
        INFO(bad);
        CHECK_THROWS_AS(parse_quant_spec(bad), qlm::invalid_argument);
    }
    CHECK_THROWS_AS((QuantSpec{5, GranularityKind::per_channel, 0, true}.validate()), qlm::invalid_argument);
    CHECK_THROWS_AS((QuantSpec{4, GranularityKind::per_channel, 128, true}.validate()), qlm::invalid_argument);
    CHECK_THROWS_AS((QuantSpec{2, GranularityKind::per_group, 16, true}.validate()), qlm::invalid_argument);
    CHECK_THROWS_AS((QuantSpec{3, GranularityKind::per_group, 80, true}.validate()), qlm::invalid_argument);
    for (int bits : {2, 3, 4, 8}) CHECK_NOTHROW((QuantSpec{bits, GranularityKind::per_group, 32, true}.validate()));
    CHECK_NOTHROW((QuantSpec{3, GranularityKind::per_group, 96, false}.validate()));
    CHECK_NOTHROW((QuantSpec{8, GranularityKind::per_group, 96, false}.validate()));
    CHECK(QuantSpec{4, GranularityKind::per_group, 128, true}.nominal_bits_per_weight(768) == doctest::Approx(4.25));
}

TEST_CASE("packing: documented byte layout on hand-built blocks") {
    std::array<std::uint8_t, 64> codes{};
    SUBCASE("8 bits: one code a byte") {
        for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>(i);
        std::array<std::uint8_t, 64> out{};
        Packing<8>::pack_row(codes, out);
        for (int i = 0; i < 64; ++i) CHECK(out[i] == i);
    }
    SUBCASE("4 bits: byte j = code j | code j+32 << 4") {
        // codes 0..31 count up 0..15 twice, codes 32..63 count down 15..0 twice
        for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>(i < 32 ? (i & 15) : 15 - (i & 15));
        const std::array<std::uint8_t, 32> expected = {
            0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B, 0x3C, 0x2D, 0x1E, 0x0F,
            0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B, 0x3C, 0x2D, 0x1E, 0x0F};
        std::array<std::uint8_t, 32> out{};
        Packing<4>::pack_row(codes, out);
        CHECK(out == expected);
    }
    SUBCASE("2 bits: byte j = codes j, j+16, j+32, j+48 in bits 0-1 .. 6-7") {
        for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>(i / 16);  // field q holds q
        std::array<std::uint8_t, 16> out{};
        Packing<2>::pack_row(codes, out);
        for (auto b : out) CHECK(b == 0xE4);  // 0b11'10'01'00
        for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>(i & 3);  // all four fields equal j & 3
        Packing<2>::pack_row(codes, out);
        const std::array<std::uint8_t, 4> pattern{0x00, 0x55, 0xAA, 0xFF};
        for (int j = 0; j < 16; ++j) CHECK(out[j] == pattern[j & 3]);
    }
    SUBCASE("3 bits: 16 bytes of low bit pairs, then a little-endian 64-bit mask of bit 2") {
        for (int i = 0; i < 64; ++i) codes[i] = static_cast<std::uint8_t>(i % 8);
        std::array<std::uint8_t, 24> out{};
        Packing<3>::pack_row(codes, out);
        const std::array<std::uint8_t, 4> pattern{0x00, 0x55, 0xAA, 0xFF};
        for (int j = 0; j < 16; ++j) CHECK(out[j] == pattern[j & 3]);
        for (int j = 16; j < 24; ++j) CHECK(out[j] == 0xF0);  // codes 4..7 of every 8 have bit 2 set
        codes.fill(0);
        codes[0] = 4;   // only bit 2: mask bit 0 -> byte 16 = 0x01
        codes[63] = 7;  // low bits 3 in byte 15 bits 6-7, mask bit 63 -> byte 23 = 0x80
        codes[17] = 2;  // byte 1 bits 2-3
        Packing<3>::pack_row(codes, out);
        std::array<std::uint8_t, 24> expected{};
        expected[15] = 0xC0;
        expected[1] = 0x08;
        expected[16] = 0x01;
        expected[23] = 0x80;
        CHECK(out == expected);
    }
}

TEST_CASE("packing: random round trip for 2/3/4/8 bits") {
    std::mt19937 rng(7);
    auto round_trip = [&](auto bits_c) {
        constexpr int B = decltype(bits_c)::value;
        for (std::size_t k : {64u, 128u, 768u, 3072u}) {
            std::vector<std::uint8_t> codes(k), back(k, 0xAB);
            std::uniform_int_distribution<int> d(0, (1 << B) - 1);
            for (auto& c : codes) c = static_cast<std::uint8_t>(d(rng));
            std::vector<std::uint8_t> packed(Packing<B>::row_bytes(k));
            CHECK(packed.size() * 8 == k * B);
            Packing<B>::pack_row(codes, packed);
            Packing<B>::unpack_row(packed, back);
            CHECK(back == codes);
        }
        if constexpr (B != 8) {
            std::vector<std::uint8_t> codes(96), packed(Packing<B>::row_bytes(128));
            CHECK_THROWS_AS(Packing<B>::pack_row(codes, packed), qlm::shape_error);
        }
    };
    round_trip(std::integral_constant<int, 2>{});
    round_trip(std::integral_constant<int, 3>{});
    round_trip(std::integral_constant<int, 4>{});
    round_trip(std::integral_constant<int, 8>{});
}

TEST_CASE("RTN: every scheme, formula, codes in range, error <= s/2, exact zero") {
    ThreadPool pool(2);
    check_all_granularities<2, Symmetric>(pool, 100);
    check_all_granularities<2, Asymmetric>(pool, 200);
    check_all_granularities<3, Symmetric>(pool, 300);
    check_all_granularities<3, Asymmetric>(pool, 400);
    check_all_granularities<4, Symmetric>(pool, 500);
    check_all_granularities<4, Asymmetric>(pool, 600);
    check_all_granularities<8, Symmetric>(pool, 700);
    check_all_granularities<8, Asymmetric>(pool, 800);
}

TEST_CASE("RTN: 8-bit with K not a multiple of 64") {
    ThreadPool pool(2);
    const auto w = random_matrix(13, 197, 11);
    check_rtn<8, PerChannel, Symmetric>(w, pool, {});
    check_rtn<8, PerChannel, Asymmetric>(w, pool, {});
    check_rtn<8, PerTensor, Asymmetric>(w, pool, {});
    CHECK_THROWS_AS((quantize_rtn<8, PerGroup<32>>(w)), qlm::shape_error);
    CHECK_THROWS_AS((quantize_rtn<4, PerChannel>(w)), qlm::shape_error);
}

TEST_CASE("RTN: symmetric uses the full code range; asymmetric min and max hit the end codes") {
    Tensor<float> w(Shape{2, 64});
    for (std::size_t c = 0; c < 64; ++c) {
        w.row(0)[c] = -1.0f + 2.0f * static_cast<float>(c) / 63.0f;  // [-1, 1]
        w.row(1)[c] = 0.5f + static_cast<float>(c) / 63.0f;          // [0.5, 1.5], range widened to 0
    }
    const auto q = quantize_rtn<4, PerChannel, Symmetric>(w);
    CHECK(q.scale(0, 0) == doctest::Approx(2.0 / 15.0));
    CHECK(q.scale(1, 0) == doctest::Approx(3.0 / 15.0));
    std::vector<std::uint8_t> codes(64);
    q.codes_row(0, codes);
    // -1 / s and +1 / s are +-7.5 up to float rounding of s: -8 or -7 (code 0 or 1), and 8 -> clamped 15 or 7 + 8
    CHECK((codes[0] == 0 || codes[0] == 1));
    CHECK(codes[63] == 15);
    const auto a = quantize_rtn<4, PerChannel, Asymmetric>(w);
    CHECK(a.scale(0, 0) == doctest::Approx(2.0 / 15.0));
    CHECK(a.zero(0, 0) == static_cast<int>(std::nearbyint(1.0f / a.scale(0, 0))));
    CHECK((a.zero(0, 0) == 7 || a.zero(0, 0) == 8));
    CHECK(a.scale(1, 0) == doctest::Approx(1.5 / 15.0));
    CHECK(a.zero(1, 0) == 0);
    a.codes_row(1, codes);
    CHECK(codes[63] == 15);
    CHECK(codes[0] == 5);
}

TEST_CASE("RTN: zero-range and constant groups do not divide by zero") {
    Tensor<float> w(Shape{3, 128});
    for (std::size_t c = 0; c < 128; ++c) {
        w.row(1)[c] = 0.25f;            // constant
        w.row(2)[c] = c < 64 ? 0.0f : -3.0f;  // one all-zero group, one constant group
    }
    auto check = [&](const AnyQuantTensor& q) {
        INFO(to_string(q.spec()));
        for (float s : q.scales()) CHECK((std::isfinite(s) && s > 0.0f));
        const auto d = q.dequantize();
        for (std::size_t r = 0; r < 3; ++r)
            for (std::size_t c = 0; c < 128; ++c) {
                const float x = w.row(r)[c];
                const float s = q.scale(r, c / q.group_size());
                CHECK(std::isfinite(d.row(r)[c]));
                CHECK(std::fabs(d.row(r)[c] - x) <= 0.5f * s * 1.0001f);
                if (x == 0.0f) CHECK(d.row(r)[c] == 0.0f);
            }
    };
    for (bool sym : {true, false})
        for (int bits : {2, 3, 4, 8}) {
            check(quantize_rtn(w, QuantSpec{bits, GranularityKind::per_group, 64, sym}));
            check(quantize_rtn(w, QuantSpec{bits, GranularityKind::per_channel, 0, sym}));
            RtnOptions clip;
            clip.mse_clip = true;
            check(quantize_rtn(w, QuantSpec{bits, GranularityKind::per_group, 64, sym}, clip));
        }
    Tensor<float> zeros(Shape{4, 64});
    const auto qz = quantize_rtn<4, PerTensor, Asymmetric>(zeros);
    const auto dz = qz.dequantize();
    for (float v : dz.span()) CHECK(v == 0.0f);
}

TEST_CASE("RTN: NaN / Inf weights and bad shapes are rejected") {
    auto w = random_matrix(4, 128, 3);
    w.row(2)[77] = std::nanf("");
    CHECK_THROWS_AS((quantize_rtn<4, PerGroup<128>>(w)), qlm::invalid_argument);
    CHECK_THROWS_AS((quantize_rtn<4, PerTensor>(w)), qlm::invalid_argument);
    w.row(2)[77] = INFINITY;
    CHECK_THROWS_AS((quantize_rtn<8, PerChannel>(w)), qlm::invalid_argument);
    Tensor<float> v(Shape{128});
    CHECK_THROWS_AS((quantize_rtn<8, PerChannel>(v)), qlm::shape_error);
    Tensor<float> odd(Shape{2, 192});
    CHECK_THROWS_AS((quantize_rtn<4, PerGroup<128>>(odd)), qlm::shape_error);
    CHECK_THROWS_AS(quantize_rtn(odd, QuantSpec{5, GranularityKind::per_channel, 0, true}), qlm::invalid_argument);
}

TEST_CASE("RTN: threaded and single-threaded results are identical") {
    ThreadPool pool(2);
    const auto w = random_matrix(37, 256, 21);
    RtnOptions opt;
    opt.mse_clip = true;
    const auto a = quantize_rtn<3, PerGroup<64>, Asymmetric>(w, pool, opt);
    const auto b = quantize_rtn<3, PerGroup<64>, Asymmetric>(w, opt);
    CHECK(std::ranges::equal(a.packed(), b.packed()));
    CHECK(std::ranges::equal(a.scales(), b.scales()));
    CHECK(std::ranges::equal(a.zeros(), b.zeros()));
    const auto c = quantize_rtn<4, PerTensor, Symmetric>(w, pool, opt);
    const auto d = quantize_rtn<4, PerTensor, Symmetric>(w, opt);
    CHECK(std::ranges::equal(c.packed(), d.packed()));
    CHECK(c.scale(0, 0) == d.scale(0, 0));
}

TEST_CASE("RTN: MSE clipping is never worse than plain min/max") {
    ThreadPool pool(2);
    const auto w = random_matrix(24, 512, 99, false);
    double plain_total = 0, clip_total = 0;
    auto per_group = [&](const AnyQuantTensor& plain, const AnyQuantTensor& clipped, double norm) {
        INFO(to_string(plain.spec()) << " norm " << norm);
        const auto dp = plain.dequantize(), dc = clipped.dequantize();
        const std::size_t gs = plain.group_size();
        std::size_t worse = 0;
        double tensor_plain = 0, tensor_clip = 0;
        for (std::size_t r = 0; r < w.dim(0); ++r)
            for (std::size_t g = 0; g < plain.groups(); ++g) {
                const std::span<const float> x{w.row(r) + g * gs, gs};
                const double ep = group_err(x, {dp.row(r) + g * gs, gs}, norm);
                const double ec = group_err(x, {dc.row(r) + g * gs, gs}, norm);
                // per-tensor searches one range for the whole matrix: compare totals, not rows
                if (plain.granularity() != GranularityKind::per_tensor && ec > ep * (1 + 1e-9)) ++worse;
                tensor_plain += ep;
                tensor_clip += ec;
                if (norm == 2.0) {
                    plain_total += ep;
                    clip_total += ec;
                }
            }
        CHECK(worse == 0);
        CHECK(tensor_clip <= tensor_plain * (1 + 1e-9));
    };
    for (bool sym : {true, false})
        for (int bits : {2, 3, 4, 8})
            for (auto [gran, gs] : {std::pair{GranularityKind::per_group, std::size_t{128}},
                                    std::pair{GranularityKind::per_channel, std::size_t{0}},
                                    std::pair{GranularityKind::per_tensor, std::size_t{0}}}) {
                const QuantSpec spec{bits, gran, gs, sym};
                const auto plain = quantize_rtn(w, spec, pool);
                RtnOptions o2;
                o2.mse_clip = true;
                o2.clip.norm = 2.0f;
                per_group(plain, quantize_rtn(w, spec, pool, o2), 2.0);
                RtnOptions o24;  // GPTQ default: norm 2.4
                o24.mse_clip = true;
                per_group(plain, quantize_rtn(w, spec, pool, o24), 2.4);
            }
    // and on Gaussian-like data it actually helps
    CHECK(clip_total < 0.95 * plain_total);
}

TEST_CASE("QuantTensor: storage size and bits per weight") {
    const auto w = random_matrix(64, 768, 5);
    const auto q4 = quantize_rtn<4, PerGroup<128>, Symmetric>(w);
    CHECK(q4.storage_bytes() == 64 * 768 / 2 + 64 * 6 * 4);
    const double bpw4 = static_cast<double>(q4.storage_bytes()) / (64.0 * 768.0);
    CHECK(bpw4 == doctest::Approx(0.5 + 4.0 / 128.0));
    CHECK(bpw4 <= 0.6);
    CHECK(q4.bits_per_weight() == doctest::Approx(4.25));
    const auto a4 = quantize_rtn<4, PerGroup<128>, Asymmetric>(w);
    CHECK(a4.bits_per_weight() == doctest::Approx(4.0 + 40.0 / 128.0));
    const auto q8 = quantize_rtn<8, PerChannel, Symmetric>(w);
    CHECK(static_cast<double>(q8.storage_bytes()) / (64.0 * 768.0) == doctest::Approx(1.0 + 4.0 / 768.0));
    const auto q3 = quantize_rtn<3, PerGroup<128>, Symmetric>(w);
    CHECK(q3.bits_per_weight() == doctest::Approx(3.25));
    const auto q2 = quantize_rtn<2, PerGroup<64>, Symmetric>(w);
    CHECK(q2.bits_per_weight() == doctest::Approx(2.5));
    CHECK(q4.bits_per_weight() == doctest::Approx(q4.spec.nominal_bits_per_weight(768)));
}

TEST_CASE("QuantTensor: raw parts round trip and validation") {
    const auto w = random_matrix(5, 256, 8);
    const auto q = quantize_rtn<4, PerGroup<64>, Asymmetric>(w);
    using QT = QuantTensor<4, PerGroup<64>, Asymmetric>;
    const auto copy = QT::from_parts(5, 256, q.packed(), q.scales(), q.zeros(), "h.0.attn.c_attn");
    CHECK(std::ranges::equal(copy.dequantize().span(), q.dequantize().span()));

    // owning overload: moves buffers in
    Tensor<std::uint8_t> p(Shape{q.packed().size()});
    std::ranges::copy(q.packed(), p.data());
    Tensor<float> s(Shape{q.scales().size()});
    std::ranges::copy(q.scales(), s.data());
    Tensor<std::uint8_t> z(Shape{q.zeros().size()});
    std::ranges::copy(q.zeros(), z.data());
    const std::uint8_t* p_addr = p.data();
    const auto moved = QT::from_parts(5, 256, std::move(p), std::move(s), std::move(z));
    CHECK(moved.packed().data() == p_addr);
    CHECK(std::ranges::equal(moved.dequantize().span(), q.dequantize().span()));

    std::vector<std::uint8_t> packed(q.packed().begin(), q.packed().end());
    std::vector<float> scales(q.scales().begin(), q.scales().end());
    std::vector<std::uint8_t> zeros(q.zeros().begin(), q.zeros().end());
    // sizes -> shape_error
    CHECK_THROWS_AS(QT::from_parts(5, 256, std::span(packed).first(packed.size() - 1), scales, zeros), qlm::shape_error);
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, std::span(scales).first(3), zeros), qlm::shape_error);
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, scales, {}), qlm::shape_error);
    CHECK_THROWS_AS(QT::from_parts(5, 250, packed, scales, zeros), qlm::shape_error);
    CHECK_THROWS_AS(QT::from_parts(0, 256, packed, scales, zeros), qlm::shape_error);
    CHECK_THROWS_AS((QuantTensor<4, PerGroup<64>, Symmetric>::from_parts(5, 256, packed, scales, zeros)), qlm::shape_error);
    CHECK_THROWS_AS((QuantTensor<4, PerGroup<128>, Symmetric>::from_parts(5, 320, packed, scales)), qlm::shape_error);
    // values -> format_error
    auto bad_scales = scales;
    bad_scales[7] = std::nanf("");
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, bad_scales, zeros), qlm::format_error);
    bad_scales[7] = 3e38f;  // finite, but its weights overflow
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, bad_scales, zeros), qlm::format_error);
    bad_scales[7] = std::nextafter(AnyQuantTensor::kMaxDequantized / 15.0f, 1e30f);
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, bad_scales, zeros), qlm::format_error);
    auto edge_scales = scales;
    edge_scales[7] = AnyQuantTensor::kMaxDequantized / 15.0f;  // the largest accepted at 4 bits
    edge_scales[8] = 0.0f;                                     // an all-zero group
    CHECK_NOTHROW(QT::from_parts(5, 256, packed, edge_scales, zeros));
    bad_scales[7] = -1.0f;  // the name check below uses bad_scales
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, bad_scales, zeros), qlm::format_error);
    auto bad_zeros = zeros;
    bad_zeros[3] = 16;
    CHECK_THROWS_AS(QT::from_parts(5, 256, packed, scales, bad_zeros), qlm::format_error);
    const auto pt = quantize_rtn<8, PerTensor, Asymmetric>(w);
    std::vector<float> pt_scales(pt.scales().begin(), pt.scales().end());
    pt_scales[2] *= 1.5f;
    CHECK_THROWS_AS((QuantTensor<8, PerTensor, Asymmetric>::from_parts(5, 256, pt.packed(), pt_scales, pt.zeros())),
                    qlm::format_error);
    CHECK_THROWS_AS(AnyQuantTensor::from_parts(QuantSpec{4, GranularityKind::per_group, 48, false}, 5, 256, packed, scales, zeros),
                    qlm::format_error);
    try {
        (void)QT::from_parts(5, 256, packed, bad_scales, zeros, "h.3.mlp.c_fc");
        FAIL("expected format_error");
    } catch (const qlm::format_error& e) {
        CHECK(std::string(e.what()).find("h.3.mlp.c_fc") != std::string::npos);
    }
}

TEST_CASE("AnyQuantTensor: type erasure round trip and set_row") {
    const auto w = random_matrix(9, 128, 12);
    auto q = quantize_rtn<3, PerGroup<64>, Symmetric>(w);
    const auto before = q.dequantize();
    AnyQuantTensor any = std::move(q);
    CHECK(any.holds<3, PerGroup<64>, Symmetric>());
    CHECK(!any.holds<3, PerGroup<64>, Asymmetric>());
    CHECK(any.bits() == 3);
    CHECK(std::ranges::equal(any.dequantize().span(), before.span()));
    CHECK_THROWS_AS((QuantTensor<4, PerGroup<64>, Symmetric>::from_any(any)), qlm::invalid_argument);
    const auto back = QuantTensor<3, PerGroup<64>, Symmetric>::from_any(std::move(any));
    CHECK(std::ranges::equal(back.dequantize().span(), before.span()));

    // set_row builds a tensor by hand (the path GPTQ / AWQ use)
    AnyQuantTensor t(QuantSpec{2, GranularityKind::per_group, 64, false}, 2, 128);
    std::vector<std::uint8_t> codes(128);
    for (std::size_t c = 0; c < 128; ++c) codes[c] = static_cast<std::uint8_t>(c % 4);
    const std::vector<float> sc{0.5f, 2.0f};
    const std::vector<std::uint8_t> zp{1, 3};
    t.set_row(1, codes, sc, zp);
    std::vector<float> row(128);
    t.dequantize_row(1, row);
    for (std::size_t c = 0; c < 128; ++c)
        CHECK(row[c] == static_cast<float>(static_cast<int>(c % 4) - (c < 64 ? 1 : 3)) * (c < 64 ? 0.5f : 2.0f));
    codes[5] = 4;
    CHECK_THROWS_AS(t.set_row(1, codes, sc, zp), qlm::invalid_argument);
    CHECK_THROWS_AS(t.set_row(2, codes, sc, zp), qlm::shape_error);
    CHECK_THROWS_AS(t.set_row(0, codes, sc, {}), qlm::shape_error);
}
