#pragma once
// The CPU GEMM front door: include this to get every kernel, plus `linear`, one name overloaded on
// the weight kind (y[m, n] = x[m, k] · wᵀ + bias; see docs/kernels.md).
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/backend/cpu/gemm_quant.hpp>
#include <qlm/backend/cpu/gemm_w8a8.hpp>

#include <cstdint>
#include <vector>

namespace qlm::cpu {

// fp32 weights [n, k].
inline void linear(ThreadPool& pool, const float* x, std::size_t m, std::size_t k, const float* w, std::size_t n,
                   const float* bias, float* y, Isa isa = Isa::automatic) {
    gemm_f32(pool, x, m, k, w, n, bias, y, isa);
}

// Weight-only quantized weights (float activations; the GPTQ/AWQ/RTN semantics).
inline void linear(ThreadPool& pool, const float* x, std::size_t m, const QuantMatrixRef& w, const float* bias, float* y,
                   Isa isa = Isa::automatic) {
    gemm_quant(pool, x, m, w, bias, y, isa);
}

// W8A8 from float activations: quantizes x per token (dynamic, or with a static per-tensor scale
// when static_scale > 0), then runs the integer kernel. w.bits must be 8.
inline void linear_w8a8(ThreadPool& pool, const float* x, std::size_t m, const QuantMatrixRef& w, const float* bias,
                        float* y, float static_scale = 0.0f, Isa isa = Isa::automatic) {
    std::vector<std::int8_t> xq(m * w.k);
    std::vector<float> scales(m);
    quantize_activations_s8(x, m, w.k, xq.data(), scales.data(), static_scale);
    gemm_w8a8(pool, xq.data(), scales.data(), nullptr, m, w, bias, y, isa);
}

}  // namespace qlm::cpu
