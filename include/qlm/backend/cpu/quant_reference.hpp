#pragma once
// The scalar references the quantized kernels (gemm_panel.hpp) are tested against. They read the
// canonical packed matrix (QuantMatrixRef, core/packed_matrix.hpp), not the repacked panels, so a
// repacking mistake cannot hide in both sides of a comparison.
#include <qlm/core/error.hpp>
#include <qlm/core/packed_matrix.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qlm::cpu {

namespace detail {

inline void check_quant_matrix(const QuantMatrixRef& w) {
    if (!(w.bits == 2 || w.bits == 3 || w.bits == 4 || w.bits == 8))
        throw invalid_argument("qlm::cpu: quantized weights must have 2, 3, 4 or 8 bits, found " + std::to_string(w.bits));
    if (w.n == 0 || w.k == 0) return;
    if (w.group_size == 0 || w.k % w.group_size != 0)
        throw shape_error("qlm::cpu: group size " + std::to_string(w.group_size) + " does not divide k = " + std::to_string(w.k));
    if (!w.packed || !w.scales) throw invalid_argument("qlm::cpu: quantized weights without codes or scales");
}

}  // namespace detail

namespace reference {

// y = x · dequant(w)ᵀ + bias, dequant = (u - z) * s, double accumulation.
inline void gemm_quant(const float* x, std::size_t m, const QuantMatrixRef& w, const float* bias, float* y) {
    detail::check_quant_matrix(w);
    std::vector<std::uint8_t> codes(w.k);
    std::vector<float> row(w.k);
    for (std::size_t j = 0; j < w.n; ++j) {
        w.codes_row(j, codes);
        for (std::size_t p = 0; p < w.k; ++p) {
            const std::size_t g = p / w.group_size;
            row[p] = static_cast<float>(static_cast<int>(codes[p]) - w.zero(j, g)) * w.scale(j, g);
        }
        for (std::size_t i = 0; i < m; ++i) {
            double acc = bias ? bias[j] : 0.0;
            for (std::size_t p = 0; p < w.k; ++p) acc += static_cast<double>(x[i * w.k + p]) * row[p];
            y[i * w.n + j] = static_cast<float>(acc);
        }
    }
}

// Per-token int8 quantization, the formula every path uses: s = max|x| / 127 (static_scale > 0:
// that scale), q = round-to-nearest-even(clamp(x · (1/s), ±127)).
inline void quantize_activations(const float* x, std::size_t m, std::size_t k, float static_scale, std::int8_t* xq, float* scales) {
    for (std::size_t i = 0; i < m; ++i) {
        float scale = static_scale;
        if (!(scale > 0.0f)) {
            float amax = 0.0f;
            for (std::size_t p = 0; p < k; ++p) amax = std::max(amax, std::fabs(x[i * k + p]));
            scale = amax / 127.0f;
        }
        scales[i] = scale;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (std::size_t p = 0; p < k; ++p)
            xq[i * k + p] = static_cast<std::int8_t>(std::nearbyint(std::clamp(x[i * k + p] * inv, -127.0f, 127.0f)));
    }
}

// y = x_scales ⊙ Σ_g s (Σ u·a − z·Σa) + bias: exact integer dot products, the epilogue in double.
inline void gemm_a8(const std::int8_t* xq, const float* x_scales, std::size_t m, const QuantMatrixRef& w, const float* bias, float* y) {
    detail::check_quant_matrix(w);
    const std::size_t groups = w.groups(), gs = w.group_size;
    std::vector<std::uint8_t> codes(w.k);
    for (std::size_t j = 0; j < w.n; ++j) {
        w.codes_row(j, codes);
        for (std::size_t i = 0; i < m; ++i) {
            double t = 0.0;
            for (std::size_t g = 0; g < groups; ++g) {
                std::int64_t dot = 0, sum = 0;
                for (std::size_t p = g * gs; p < (g + 1) * gs; ++p) {
                    dot += static_cast<std::int64_t>(codes[p]) * xq[i * w.k + p];
                    sum += xq[i * w.k + p];
                }
                t += static_cast<double>(w.scale(j, g)) * static_cast<double>(dot - w.zero(j, g) * sum);
            }
            y[i * w.n + j] = static_cast<float>(t * x_scales[i] + (bias ? bias[j] : 0.0));
        }
    }
}

}  // namespace reference

}  // namespace qlm::cpu
