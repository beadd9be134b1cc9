#pragma once
// IEEE fp16 and bfloat16 conversions (storage types; arithmetic happens in fp32).
#include <bit>
#include <cstdint>
#include <cstring>

namespace qlm {

struct fp16_t {
    std::uint16_t bits;
};
struct bf16_t {
    std::uint16_t bits;
};

constexpr float fp16_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    std::uint32_t bits = 0;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exponent = 127 - 15 + 1;
            while ((mantissa & 0x400u) == 0) {
                mantissa <<= 1;
                --exponent;
            }
            mantissa &= 0x3ffu;
            bits = sign | (exponent << 23) | (mantissa << 13);
        }
    } else if (exponent == 0x1f) {  // inf, or NaN: quieted, payload kept (as F16C's vcvtph2ps)
        bits = sign | 0x7f800000u | (mantissa == 0 ? 0u : 0x400000u | (mantissa << 13));
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    return std::bit_cast<float>(bits);
}

// Round to nearest even; overflow gives infinity, NaN stays NaN (so fp16 -> float -> fp16 is
// the identity on every bit pattern except signalling NaNs, which come back quiet).
constexpr std::uint16_t float_to_fp16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // inf, or NaN: quieted, top 10 payload bits kept (as F16C's vcvtps2ph)
        return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
    }
    if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow
        return static_cast<std::uint16_t>(sign | 0x7c00u);
    }
    if (abs < 0x38800000u) {  // below the smallest normal fp16: subnormal or zero
        if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);
        // value = round(f / 2^-24): shift the 24-bit mantissa right by (126 - exponent) in [14, 24]
        const std::uint32_t exponent = abs >> 23;
        const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
        const std::uint32_t shift = 126 - exponent;
        std::uint32_t value = mantissa >> shift;
        const std::uint32_t half = 1u << (shift - 1);
        const std::uint32_t remainder = mantissa & ((1u << shift) - 1);
        if (remainder > half || (remainder == half && (value & 1u))) ++value;
        return static_cast<std::uint16_t>(sign | value);
    }
    std::uint32_t value = ((abs >> 13) - ((127 - 15) << 10));
    const std::uint32_t remainder = abs & 0x1fffu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (value & 1u))) ++value;
    return static_cast<std::uint16_t>(sign | value);
}

constexpr float bf16_to_float(std::uint16_t b) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

constexpr std::uint16_t float_to_bf16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
    const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return static_cast<std::uint16_t>((x + rounding) >> 16);
}

}  // namespace qlm
