// Tests for core/half.hpp against references that do not share its code: values decoded with
// std::ldexp, and rounding decided by comparing against exact midpoints between neighbours in a
// sorted table of every fp16 value (or, for bf16, the two bf16 values around the input).
#include <doctest/doctest.h>
#include <qlm/core/half.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <ios>
#include <limits>
#include <random>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

using u16 = std::uint16_t;
using u32 = std::uint32_t;

bool fp16_is_nan(u16 h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool bf16_is_nan(u16 b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

// fp16 value from the IEEE definition, computed in double.
double fp16_reference_value(u16 h) {
    const int e = (h >> 10) & 0x1f;
    const int m = h & 0x3ff;
    const double sign = (h & 0x8000u) ? -1.0 : 1.0;
    if (e == 0) return sign * std::ldexp(m, -24);
    if (e == 31) return m == 0 ? sign * std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
    return sign * std::ldexp(1024 + m, e - 25);
}

// All non-negative finite fp16 values (bits 0x0000..0x7bff) in increasing order, plus a virtual
// next value 2^16 standing for infinity (its "bits" 0x7c00 are even, which is what ties need).
struct Fp16Table {
    std::vector<double> values;
    Fp16Table() {
        for (u32 h = 0; h <= 0x7c00u; ++h) values.push_back(h == 0x7c00u ? 65536.0 : fp16_reference_value(static_cast<u16>(h)));
    }
    // Round |x| to nearest, ties to even bits; returns the bits (0x7c00 for overflow).
    u16 round(double ax) const {
        if (ax >= 65536.0) return 0x7c00u;
        const auto it = std::upper_bound(values.begin(), values.end(), ax);  // first value > ax
        const auto hi = static_cast<u16>(it - values.begin());
        const auto lo = static_cast<u16>(hi - 1);
        if (values[lo] == ax) return lo;
        const double mid = (values[lo] + values[hi]) / 2;  // exact: one more bit than fp16 needs
        if (ax < mid) return lo;
        if (ax > mid) return hi;
        return (lo & 1u) ? hi : lo;
    }
};

const Fp16Table& table() {
    static const Fp16Table t;
    return t;
}

u16 fp16_reference_round(float f) {
    const u16 sign = std::signbit(f) ? 0x8000u : 0u;
    if (std::isinf(f)) return sign | 0x7c00u;
    return static_cast<u16>(sign | table().round(std::fabs(static_cast<double>(f))));
}

u16 bf16_reference_round(float f) {
    const u32 x = std::bit_cast<u32>(f);
    const u32 sign = x & 0x80000000u;
    const u32 abs = x & 0x7fffffffu;
    const u32 lo = abs & 0xffff0000u;  // truncation toward zero
    if (lo == abs) return static_cast<u16>((sign | abs) >> 16);
    const u32 hi = lo + 0x10000u;
    const double lo_value = std::bit_cast<float>(lo);
    const double hi_value = hi == 0x7f800000u ? std::ldexp(1.0, 128) : static_cast<double>(std::bit_cast<float>(hi));
    const double mid = (lo_value + hi_value) / 2;
    const double ax = std::bit_cast<float>(abs);
    const u32 pick = ax < mid ? lo : ax > mid ? hi : ((lo >> 16) & 1u) ? hi : lo;
    return static_cast<u16>((sign | pick) >> 16);
}

// Random floats whose magnitude lies in [2^lo_exp, 2^hi_exp), any sign, random mantissa.
float random_float_in(std::mt19937_64& rng, int lo_exp, int hi_exp) {
    std::uniform_int_distribution<int> e(lo_exp, hi_exp - 1);
    std::uniform_int_distribution<u32> m(0, (1u << 23) - 1);
    const float base = std::ldexp(1.0f, e(rng));
    const float v = base * (1.0f + static_cast<float>(m(rng)) * 0x1p-23f);
    return (rng() & 1) ? -v : v;
}

}  // namespace

TEST_CASE("fp16_to_float matches the IEEE definition for all 65536 bit patterns") {
    for (u32 h = 0; h < 65536; ++h) {
        const float f = qlm::fp16_to_float(static_cast<u16>(h));
        const double ref = fp16_reference_value(static_cast<u16>(h));
        if (fp16_is_nan(static_cast<u16>(h))) {
            REQUIRE(std::isnan(f));
            REQUIRE(std::signbit(f) == ((h & 0x8000u) != 0));
            REQUIRE((std::bit_cast<u32>(f) & 0x400000u) != 0);                    // quiet
            REQUIRE(((std::bit_cast<u32>(f) >> 13) & 0x1ffu) == (h & 0x1ffu));  // payload kept
        } else {
            INFO("bits 0x" << std::hex << h);
            REQUIRE(static_cast<double>(f) == ref);
            REQUIRE(std::signbit(f) == ((h & 0x8000u) != 0));  // -0 stays -0
        }
    }
}

TEST_CASE("fp16 -> float -> fp16 is the identity on all 65536 bit patterns (NaNs stay NaN)") {
    int nans = 0;
    for (u32 h = 0; h < 65536; ++h) {
        const auto bits = static_cast<u16>(h);
        const u16 back = qlm::float_to_fp16(qlm::fp16_to_float(bits));
        INFO("bits 0x" << std::hex << h << " -> 0x" << back);
        if (fp16_is_nan(bits)) {
            ++nans;
            REQUIRE(fp16_is_nan(back));
            REQUIRE((back & 0x8000u) == (bits & 0x8000u));
            REQUIRE(back == (bits | 0x200u));  // quiet NaNs unchanged, signalling ones quieted
        } else {
            REQUIRE(back == bits);
        }
    }
    CHECK(nans == 2 * 1023);
}

TEST_CASE("float_to_fp16 rounds to nearest even like the reference") {
    SUBCASE("special and boundary values") {
        CHECK(qlm::float_to_fp16(0.0f) == 0x0000u);
        CHECK(qlm::float_to_fp16(-0.0f) == 0x8000u);
        CHECK(qlm::float_to_fp16(1.0f) == 0x3c00u);
        CHECK(qlm::float_to_fp16(65504.0f) == 0x7bffu);
        CHECK(qlm::float_to_fp16(65519.996f) == 0x7bffu);
        CHECK(qlm::float_to_fp16(65520.0f) == 0x7c00u);   // tie between 65504 (odd) and 2^16: overflow
        CHECK(qlm::float_to_fp16(-1e10f) == 0xfc00u);
        CHECK(qlm::float_to_fp16(std::numeric_limits<float>::infinity()) == 0x7c00u);
        CHECK(qlm::float_to_fp16(0x1p-24f) == 0x0001u);    // smallest subnormal
        CHECK(qlm::float_to_fp16(0x1p-25f) == 0x0000u);    // tie with 0: even
        CHECK(qlm::float_to_fp16(0x1.000002p-25f) == 0x0001u);
        CHECK(qlm::float_to_fp16(0x3p-25f) == 0x0002u);    // 1.5 * 2^-24: tie, rounds to even 2
        CHECK(qlm::float_to_fp16(0x1.ffcp-15f) == 0x0400u); // largest subnormal + half ulp: carries to normal
        CHECK(qlm::float_to_fp16(std::numeric_limits<float>::denorm_min()) == 0x0000u);
        CHECK(qlm::float_to_fp16(-std::numeric_limits<float>::denorm_min()) == 0x8000u);
        CHECK(fp16_is_nan(qlm::float_to_fp16(std::numeric_limits<float>::quiet_NaN())));
        CHECK(fp16_is_nan(qlm::float_to_fp16(std::bit_cast<float>(0x7f800001u))));  // payload only in low bits
        CHECK(fp16_is_nan(qlm::float_to_fp16(std::bit_cast<float>(0xff800001u))));
        CHECK((qlm::float_to_fp16(std::bit_cast<float>(0xff800001u)) & 0x8000u) == 0x8000u);
    }
    SUBCASE("every midpoint between neighbouring fp16 values, and the floats just around it") {
        const auto& v = table().values;
        for (std::size_t i = 0; i + 1 < v.size(); ++i) {
            const auto mid = static_cast<float>((v[i] + v[i + 1]) / 2);  // exact in float
            REQUIRE(static_cast<double>(mid) == (v[i] + v[i + 1]) / 2);
            for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f), static_cast<float>(v[i])}) {
                for (float s : {f, -f}) {
                    INFO("f = " << s);
                    REQUIRE(qlm::float_to_fp16(s) == fp16_reference_round(s));
                }
            }
        }
    }
    SUBCASE("random floats: any bit pattern, the fp16 range, the subnormal range") {
        std::mt19937_64 rng(12345);
        for (int i = 0; i < 400000; ++i) {
            float f = 0;
            switch (i % 4) {
                case 0: f = std::bit_cast<float>(static_cast<u32>(rng())); break;
                case 1: f = random_float_in(rng, -14, 17); break;   // normal fp16 range and overflow
                case 2: f = random_float_in(rng, -26, -14); break;  // subnormal fp16 range and below
                case 3: f = random_float_in(rng, -149, 128); break; // all float exponents
            }
            if (std::isnan(f)) {
                REQUIRE(fp16_is_nan(qlm::float_to_fp16(f)));
                continue;
            }
            INFO("f = " << f << " bits 0x" << std::hex << std::bit_cast<u32>(f));
            REQUIRE(qlm::float_to_fp16(f) == fp16_reference_round(f));
        }
    }
}

#if defined(__F16C__)
TEST_CASE("float_to_fp16 and fp16_to_float agree bit for bit with the F16C instructions") {
    std::mt19937_64 rng(777);
    for (int i = 0; i < 200000; ++i) {
        const float f = std::bit_cast<float>(static_cast<u32>(rng()));
        const auto hw = static_cast<u16>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        INFO("bits 0x" << std::hex << std::bit_cast<u32>(f));
        REQUIRE(qlm::float_to_fp16(f) == hw);
    }
    for (u32 h = 0; h < 65536; ++h) {
        const float hw = _cvtsh_ss(static_cast<u16>(h));
        REQUIRE(std::bit_cast<u32>(qlm::fp16_to_float(static_cast<u16>(h))) == std::bit_cast<u32>(hw));
    }
}
#endif

TEST_CASE("bf16 -> float -> bf16 is the identity on all 65536 bit patterns (NaNs stay NaN)") {
    for (u32 b = 0; b < 65536; ++b) {
        const auto bits = static_cast<u16>(b);
        const float f = qlm::bf16_to_float(bits);
        REQUIRE(std::bit_cast<u32>(f) == b << 16);
        const u16 back = qlm::float_to_bf16(f);
        INFO("bits 0x" << std::hex << b << " -> 0x" << back);
        if (bf16_is_nan(bits)) {
            REQUIRE(bf16_is_nan(back));
            REQUIRE(back == (bits | 0x40u));
        } else {
            REQUIRE(back == bits);
        }
    }
}

TEST_CASE("float_to_bf16 rounds to nearest even like the reference") {
    CHECK(qlm::float_to_bf16(1.0f) == 0x3f80u);
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80u);  // tie, even stays
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82u);  // tie, odd rounds up
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x3f808001u)) == 0x3f81u);
    CHECK(qlm::float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80u);  // overflow to inf
    CHECK(qlm::float_to_bf16(-std::numeric_limits<float>::max()) == 0xff80u);
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x7f7f7fffu)) == 0x7f7fu);  // largest finite stays
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x00008000u)) == 0x0000u);  // subnormal tie to even 0
    CHECK(qlm::float_to_bf16(std::bit_cast<float>(0x00018000u)) == 0x0002u);
    CHECK(bf16_is_nan(qlm::float_to_bf16(std::bit_cast<float>(0x7f800001u))));  // payload only in low bits
    CHECK(bf16_is_nan(qlm::float_to_bf16(std::bit_cast<float>(0xffc00000u))));

    std::mt19937_64 rng(4242);
    for (int i = 0; i < 400000; ++i) {
        float f = std::bit_cast<float>(static_cast<u32>(rng()));
        if (i % 3 == 1) f = std::bit_cast<float>((std::bit_cast<u32>(f) & 0xffff0000u) | 0x8000u);  // exact ties
        if (i % 3 == 2) f = random_float_in(rng, 120, 128);  // near overflow
        INFO("bits 0x" << std::hex << std::bit_cast<u32>(f));
        if (std::isnan(f)) {
            REQUIRE(bf16_is_nan(qlm::float_to_bf16(f)));
            REQUIRE((qlm::float_to_bf16(f) & 0x8000u) == (std::bit_cast<u32>(f) >> 16 & 0x8000u));
        } else {
            REQUIRE(qlm::float_to_bf16(f) == bf16_reference_round(f));
        }
    }
}

TEST_CASE("conversions are usable in constant expressions") {
    static_assert(qlm::float_to_fp16(1.0f) == 0x3c00u);
    static_assert(qlm::fp16_to_float(0x3c00u) == 1.0f);
    static_assert(qlm::float_to_bf16(1.0f) == 0x3f80u);
    static_assert(qlm::bf16_to_float(0x3f80u) == 1.0f);
    CHECK(qlm::fp16_to_float(0xc000u) == -2.0f);
}
