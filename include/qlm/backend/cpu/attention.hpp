#pragma once
// Attention of one query head over a sequence's cached positions, the inner loop of every
// attention layer (prefill, chunked prefill and decode alike):
//   s_p = scale · q·k_p,  w = softmax(s),  out = Σ_p w_p v_p,   p in [0, n)
// The keys and values are given as one row pointer per position (each row holds every head;
// `offset` selects this head's head_dim floats), so a contiguous cache and a paged block table
// (one pointer per position, blocks anywhere) are the same call.
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/detail/isa_kernels.hpp>
#include <qlm/backend/cpu/elementwise.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace qlm::cpu {

namespace reference {

// Double-precision reference.
inline void attend(const float* q, const float* const* keys, const float* const* values, std::size_t n, std::size_t offset,
                   std::size_t head_dim, float scale, float* out) {
    std::vector<double> s(n);
    double max_s = -1e300;
    for (std::size_t p = 0; p < n; ++p) {
        double dot = 0;
        for (std::size_t d = 0; d < head_dim; ++d) dot += static_cast<double>(q[d]) * keys[p][offset + d];
        s[p] = dot * scale;
        max_s = std::max(max_s, s[p]);
    }
    double total = 0;
    for (auto& v : s) total += (v = std::exp(v - max_s));
    for (std::size_t d = 0; d < head_dim; ++d) {
        double acc = 0;
        for (std::size_t p = 0; p < n; ++p) acc += s[p] * values[p][offset + d];
        out[d] = static_cast<float>(acc / total);
    }
}

}  // namespace reference

namespace detail {


inline void attend_portable(const float* q, const float* const* keys, const float* const* values, std::size_t n, std::size_t offset,
                            std::size_t head_dim, float scale, float* scores, float* out) {
    for (std::size_t p = 0; p < n; ++p) scores[p] = dot(q, keys[p] + offset, head_dim) * scale;
    softmax_row(scores, n);
    std::fill_n(out, head_dim, 0.0f);
    for (std::size_t p = 0; p < n; ++p) axpy(scores[p], values[p] + offset, out, head_dim);
}

}  // namespace detail

// out[head_dim] = attention of q over positions [0, n) (n >= 1); scores: n floats of scratch.
inline void attend(const float* q, const float* const* keys, const float* const* values, std::size_t n, std::size_t offset,
                   std::size_t head_dim, float scale, float* scores, float* out, Isa isa = Isa::automatic) {
    isa = resolve_isa(isa);
#if QLM_CPU_X86
    if (isa == Isa::avx512 && head_dim % 16 == 0 && head_dim <= 256)
        return detail::avx512::attend(q, keys, values, n, offset, head_dim, scale, scores, out);
    if (isa != Isa::scalar && head_dim % 8 == 0 && head_dim <= 128)
        return detail::avx2::attend(q, keys, values, n, offset, head_dim, scale, scores, out);
#endif
    detail::attend_portable(q, keys, values, n, offset, head_dim, scale, scores, out);
}

}  // namespace qlm::cpu
