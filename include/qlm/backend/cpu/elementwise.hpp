#pragma once
// Row-wise float operations of the transformer (layer norm, GELU, softmax, residual add),
// written with xsimd for the architecture the translation unit is compiled for, each with a
// scalar reference in qlm::cpu::reference.
#include <qlm/core/detail/xsimd.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace qlm::cpu {

using float_batch = xsimd::batch<float>;
inline constexpr std::size_t kFloatLanes = float_batch::size;

namespace reference {

inline void layer_norm_row(const float* x, const float* gamma, const float* beta, std::size_t n, float eps, float* y) {
    double mean = 0.0;
    for (std::size_t i = 0; i < n; ++i) mean += x[i];
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (std::size_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= static_cast<double>(n);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>((x[i] - mean) * inv * gamma[i] + beta[i]);
}

inline float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x)));
}

inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)); }

}  // namespace reference

inline float dot(const float* a, const float* b, std::size_t n) noexcept {
    float_batch acc0(0.0f), acc1(0.0f);
    std::size_t i = 0;
    for (; i + 2 * kFloatLanes <= n; i += 2 * kFloatLanes) {
        acc0 = xsimd::fma(float_batch::load_unaligned(a + i), float_batch::load_unaligned(b + i), acc0);
        acc1 = xsimd::fma(float_batch::load_unaligned(a + i + kFloatLanes), float_batch::load_unaligned(b + i + kFloatLanes), acc1);
    }
    for (; i + kFloatLanes <= n; i += kFloatLanes)
        acc0 = xsimd::fma(float_batch::load_unaligned(a + i), float_batch::load_unaligned(b + i), acc0);
    float sum = xsimd::hadd(acc0 + acc1);
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

// y += alpha * x
inline void axpy(float alpha, const float* x, float* y, std::size_t n) noexcept {
    const float_batch a(alpha);
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes)
        xsimd::fma(a, float_batch::load_unaligned(x + i), float_batch::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += alpha * x[i];
}

// Layer norm of one row with a two-pass mean / variance (stable for large offsets).
inline void layer_norm_row(const float* x, const float* gamma, const float* beta, std::size_t n, float eps, float* y) noexcept {
    float_batch sum(0.0f);
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes) sum += float_batch::load_unaligned(x + i);
    float total = xsimd::hadd(sum);
    for (; i < n; ++i) total += x[i];
    const float mean = total / static_cast<float>(n);

    const float_batch vmean(mean);
    float_batch sq(0.0f);
    i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes) {
        const float_batch d = float_batch::load_unaligned(x + i) - vmean;
        sq = xsimd::fma(d, d, sq);
    }
    float var = xsimd::hadd(sq);
    for (; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(var + eps);

    const float_batch vinv(inv);
    i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes) {
        const float_batch d = (float_batch::load_unaligned(x + i) - vmean) * vinv;
        xsimd::fma(d, float_batch::load_unaligned(gamma + i), float_batch::load_unaligned(beta + i)).store_unaligned(y + i);
    }
    for (; i < n; ++i) y[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

// GELU, tanh form (GPT-2's "gelu_new"), in place.
inline void gelu_tanh(float* x, std::size_t n) noexcept {
    const float_batch half(0.5f), one(1.0f), c(0.7978845608028654f), k(0.044715f);
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes) {
        const float_batch v = float_batch::load_unaligned(x + i);
        const float_batch inner = c * xsimd::fma(k * v * v, v, v);
        (half * v * (one + xsimd::tanh(inner))).store_unaligned(x + i);
    }
    for (; i < n; ++i) x[i] = reference::gelu_tanh(x[i]);
}

// x[i] /= d[i]
inline void divide(float* x, const float* d, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes)
        (float_batch::load_unaligned(x + i) / float_batch::load_unaligned(d + i)).store_unaligned(x + i);
    for (; i < n; ++i) x[i] /= d[i];
}

inline void gelu_erf(float* x, std::size_t n) noexcept {
    for (std::size_t i = 0; i < n; ++i) x[i] = reference::gelu_erf(x[i]);
}

// In-place softmax of one row; returns nothing, the row sums to 1.
inline void softmax_row(float* x, std::size_t n) noexcept {
    float max_value = x[0];
    for (std::size_t i = 1; i < n; ++i) max_value = std::max(max_value, x[i]);
    const float_batch vmax(max_value);
    float_batch vsum(0.0f);
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes) {
        const float_batch e = xsimd::exp(float_batch::load_unaligned(x + i) - vmax);
        e.store_unaligned(x + i);
        vsum += e;
    }
    float sum = xsimd::hadd(vsum);
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - max_value);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (i = 0; i < n; ++i) x[i] *= inv;
}

// y += x
inline void add_inplace(float* y, const float* x, std::size_t n) noexcept {
    std::size_t i = 0;
    for (; i + kFloatLanes <= n; i += kFloatLanes)
        (float_batch::load_unaligned(y + i) + float_batch::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += x[i];
}

}  // namespace qlm::cpu
