#pragma once
// Attention of one query head over a sequence's cached positions, the inner loop of every
// attention layer (prefill, chunked prefill and decode alike):
//   s_p = scale · q·k_p,  w = softmax(s),  out = Σ_p w_p v_p,   p in [0, n)
// The keys and values are given as one row pointer per position (each row holds every head;
// `offset` selects this head's head_dim floats), so a contiguous cache and a paged block table
// (one pointer per position, blocks anywhere) are the same call.
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/backend/cpu/detail/simd_ops.hpp>
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

#if QLM_CPU_X86
QLM_INTRINSICS_BEGIN
// head_dim a multiple of the lanes and at most 16 vectors (256 floats on AVX-512, 128 on AVX2).
#define QLM_ATTEND_BODY(Ops)                                                                             \
    using vf = Ops::vf;                                                                                  \
    constexpr std::size_t L = Ops::lanes;                                                                \
    const std::size_t nv = head_dim / L;                                                                 \
    vf qv[16];                                                                                           \
    for (std::size_t j = 0; j < nv; ++j) qv[j] = Ops::loadu(q + j * L);                                  \
    std::size_t p = 0;                                                                                   \
    for (; p + 4 <= n; p += 4) { /* four positions at a time: independent chains, one reduction tree */ \
        const float *k0 = keys[p] + offset, *k1 = keys[p + 1] + offset, *k2 = keys[p + 2] + offset,      \
                    *k3 = keys[p + 3] + offset;                                                          \
        vf a0 = Ops::mul(Ops::loadu(k0), qv[0]), a1 = Ops::mul(Ops::loadu(k1), qv[0]);                   \
        vf a2 = Ops::mul(Ops::loadu(k2), qv[0]), a3 = Ops::mul(Ops::loadu(k3), qv[0]);                   \
        for (std::size_t j = 1; j < nv; ++j) {                                                           \
            a0 = Ops::fma(Ops::loadu(k0 + j * L), qv[j], a0);                                            \
            a1 = Ops::fma(Ops::loadu(k1 + j * L), qv[j], a1);                                            \
            a2 = Ops::fma(Ops::loadu(k2 + j * L), qv[j], a2);                                            \
            a3 = Ops::fma(Ops::loadu(k3 + j * L), qv[j], a3);                                            \
        }                                                                                                \
        Ops::reduce4(a0, a1, a2, a3, scores + p);                                                        \
        for (std::size_t i = 0; i < 4; ++i) scores[p + i] *= scale;                                      \
    }                                                                                                    \
    for (; p < n; ++p) {                                                                                 \
        const float* k = keys[p] + offset;                                                               \
        vf acc = Ops::mul(Ops::loadu(k), qv[0]);                                                         \
        for (std::size_t j = 1; j < nv; ++j) acc = Ops::fma(Ops::loadu(k + j * L), qv[j], acc);          \
        scores[p] = Ops::reduce_add(acc) * scale;                                                        \
    }                                                                                                    \
    softmax_row(scores, n);                                                                              \
    vf acc[16];                                                                                          \
    for (std::size_t j = 0; j < nv; ++j) acc[j] = Ops::zero_f();                                         \
    for (p = 0; p < n; ++p) {                                                                            \
        const float* v = values[p] + offset;                                                             \
        const vf w = Ops::set1(scores[p]);                                                               \
        for (std::size_t j = 0; j < nv; ++j) acc[j] = Ops::fma(w, Ops::loadu(v + j * L), acc[j]);        \
    }                                                                                                    \
    for (std::size_t j = 0; j < nv; ++j) Ops::storeu(out + j * L, acc[j]);

QLM_TARGET_AVX512 inline void attend_avx512(const float* q, const float* const* keys, const float* const* values, std::size_t n,
                                            std::size_t offset, std::size_t head_dim, float scale, float* scores, float* out) {
    QLM_ATTEND_BODY(Avx512Ops)
}
QLM_TARGET_AVX2 inline void attend_avx2(const float* q, const float* const* keys, const float* const* values, std::size_t n,
                                        std::size_t offset, std::size_t head_dim, float scale, float* scores, float* out) {
    QLM_ATTEND_BODY(Avx2Ops)
}
#undef QLM_ATTEND_BODY
QLM_INTRINSICS_END
#endif

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
        return detail::attend_avx512(q, keys, values, n, offset, head_dim, scale, scores, out);
    if (isa != Isa::scalar && head_dim % 8 == 0 && head_dim <= 128)
        return detail::attend_avx2(q, keys, values, n, offset, head_dim, scale, scores, out);
#endif
    detail::attend_portable(q, keys, values, n, offset, head_dim, scale, scores, out);
}

}  // namespace qlm::cpu
