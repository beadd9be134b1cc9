#pragma once
// W8A8: int8 activations (symmetric, per token or per tensor) x 8-bit weight codes (per channel or
// per group, symmetric or asymmetric), integer dot products, float epilogue.
//
//   y[i, j] = xs[i] * Σ_g s[j, g] * (Σ_{p∈g} u[j, p]·a[i, p] − z[j, g]·A[i, g]) + bias[j]
//
// where A[i, g] = Σ_{p∈g} a[i, p]. The weight codes u (0..255) are the unsigned operand of
// AVX-512 VNNI vpdpbusd and the activations the signed one; the AVX2 path widens both to int16 and
// uses vpmaddwd (vpmaddubsw would saturate at 255·127·2). The integer sums are exact on every path
// and the float epilogue is one shared function, so every path gives bitwise the reference result.
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/backend/cpu/gemm_quant.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/quant/packing.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace qlm::cpu {

// Symmetric int8 activations: a = clamp(round(x / scale), -127, 127). static_scale <= 0: dynamic per
// row (scale = max|x_row| / 127; an all-zero row gets scale 0); static_scale > 0: that per-tensor
// scale for every row. scales[i] receives the row's scale.
inline void quantize_activations_s8(const float* x, std::size_t m, std::size_t k, std::int8_t* xq, float* scales,
                                    float static_scale = 0.0f) {
    for (std::size_t i = 0; i < m; ++i) {
        const float* xr = x + i * k;
        float scale = static_scale;
        if (!(static_scale > 0.0f)) {
            float amax = 0.0f;
            for (std::size_t p = 0; p < k; ++p) amax = std::max(amax, std::fabs(xr[p]));
            scale = amax / 127.0f;
        }
        scales[i] = scale;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (std::size_t p = 0; p < k; ++p) {
            const float q = std::nearbyint(xr[p] * inv);
            xq[i * k + p] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
        }
    }
}

// sums[i * (k / group_size) + g] = Σ xq over group g of row i (group_size == k: one sum per row).
inline void activation_group_sums(const std::int8_t* xq, std::size_t m, std::size_t k, std::size_t group_size,
                                  std::int32_t* sums) {
    const std::size_t groups = k / group_size;
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t g = 0; g < groups; ++g) {
            std::int32_t s = 0;
            for (std::size_t p = g * group_size; p < (g + 1) * group_size; ++p) s += xq[i * k + p];
            sums[i * groups + g] = s;
        }
}

namespace detail {

// The float epilogue. Written with explicit fused multiply-adds so that the compiler's
// floating-point contraction choices cannot make paths differ; the fast paths instantiate it inside
// their target("fma") functions (so std::fma is one instruction there).
//   t[r][c] = fma(s[c], float(dot[r][c] - z[c] * a[r]), t[r][c])       (once per group, in order)
//   y[r][c] = fma(t[r][c], xs[r], bias[c])                              (at the end)
#define QLM_W8A8_EPILOGUE_BODY                                                                               \
    for (std::size_t r = 0; r < mr; ++r)                                                                     \
        for (std::size_t c = 0; c < nr; ++c)                                                                 \
            t[r * nr + c] = std::fma(s[c], static_cast<float>(dot[r * nr + c] - z[c] * a[r]), t[r * nr + c]);
#define QLM_W8A8_FINISH_BODY                                                                                 \
    for (std::size_t r = 0; r < rows; ++r)                                                                   \
        for (std::size_t c = 0; c < cols; ++c)                                                               \
            y[r * ldy + c] = std::fma(t[r * nr + c], xs[r], bias ? bias[c] : 0.0f);

using W8A8StepFn = void (*)(float* t, const float* s, const std::int32_t* dot, const std::int32_t* z, const std::int32_t* a,
                            std::size_t mr, std::size_t nr);
using W8A8FinishFn = void (*)(const float* t, std::size_t nr, const float* xs, const float* bias, float* y, std::size_t ldy,
                              std::size_t rows, std::size_t cols);

inline void w8a8_step_scalar(float* t, const float* s, const std::int32_t* dot, const std::int32_t* z, const std::int32_t* a,
                             std::size_t mr, std::size_t nr) {
    QLM_W8A8_EPILOGUE_BODY
}
inline void w8a8_finish_scalar(const float* t, std::size_t nr, const float* xs, const float* bias, float* y, std::size_t ldy,
                               std::size_t rows, std::size_t cols) {
    QLM_W8A8_FINISH_BODY
}
#if QLM_CPU_X86
QLM_TARGET_AVX2 inline void w8a8_step_fma(float* t, const float* s, const std::int32_t* dot, const std::int32_t* z,
                                          const std::int32_t* a, std::size_t mr, std::size_t nr) {
    QLM_W8A8_EPILOGUE_BODY
}
QLM_TARGET_AVX2 inline void w8a8_finish_fma(const float* t, std::size_t nr, const float* xs, const float* bias, float* y,
                                            std::size_t ldy, std::size_t rows, std::size_t cols) {
    QLM_W8A8_FINISH_BODY
}
#endif
#undef QLM_W8A8_EPILOGUE_BODY
#undef QLM_W8A8_FINISH_BODY

inline void check_w8a8(const QuantMatrixRef& w) {
    check_quant_matrix(w);
    if (w.bits != 8) throw invalid_argument("qlm::cpu::gemm_w8a8: weights must be 8-bit, found " + std::to_string(w.bits));
}

// out[r * NR + c] = Σ_{p < len} u[c][p] * a[r][p], exact int32.
using TileI8Fn = void (*)(const std::int8_t* const* xr, const std::uint8_t* const* wr, std::size_t len, std::int32_t* out);

inline void tile_i8_scalar(const std::int8_t* const* xr, const std::uint8_t* const* wr, std::size_t len, std::int32_t* out,
                           std::size_t mr, std::size_t nr) {
    for (std::size_t r = 0; r < mr; ++r)
        for (std::size_t c = 0; c < nr; ++c) {
            std::int32_t s = 0;
            for (std::size_t p = 0; p < len; ++p) s += static_cast<std::int32_t>(wr[c][p]) * xr[r][p];
            out[r * nr + c] = s;
        }
}

template <std::size_t MR, std::size_t NR>
void tile_i8_generic(const std::int8_t* const* xr, const std::uint8_t* const* wr, std::size_t len, std::int32_t* out) {
    tile_i8_scalar(xr, wr, len, out, MR, NR);
}

#if QLM_CPU_X86

QLM_TARGET_AVX2 inline __m128i avx2_reduce4_i32(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

template <std::size_t MR, std::size_t NR>
QLM_TARGET_AVX2 void tile_i8_avx2(const std::int8_t* const* xr, const std::uint8_t* const* wr, std::size_t len,
                                  std::int32_t* out) {
    static_assert(NR % 4 == 0);
    __m256i acc[MR][NR];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_si256();
    auto step = [&](const std::int8_t* const* xp, const std::uint8_t* const* wp, std::size_t off) QLM_TARGET_AVX2 {
        __m256i xv[MR];
        for (std::size_t r = 0; r < MR; ++r)
            xv[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xp[r] + off)));
        for (std::size_t c = 0; c < NR; ++c) {
            const __m256i wv = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp[c] + off)));
            for (std::size_t r = 0; r < MR; ++r) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(wv, xv[r]));
        }
    };
    std::size_t p = 0;
    for (; p + 16 <= len; p += 16) step(xr, wr, p);
    if (p < len) {  // tail: zero-padded copies
        alignas(16) std::int8_t xt[MR][16] = {};
        alignas(16) std::uint8_t wt[NR][16] = {};
        const std::int8_t* xp[MR];
        const std::uint8_t* wp[NR];
        for (std::size_t r = 0; r < MR; ++r) std::memcpy(xt[r], xr[r] + p, len - p), xp[r] = xt[r];
        for (std::size_t c = 0; c < NR; ++c) std::memcpy(wt[c], wr[c] + p, len - p), wp[c] = wt[c];
        step(xp, wp, 0);
    }
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; c += 4)
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * NR + c),
                             avx2_reduce4_i32(acc[r][c], acc[r][c + 1], acc[r][c + 2], acc[r][c + 3]));
}

QLM_INTRINSICS_BEGIN

QLM_TARGET_AVX512 inline __m256i avx512_fold_i32(__m512i a) {
    return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}

template <std::size_t MR, std::size_t NR>
QLM_TARGET_AVX512 void tile_i8_avx512(const std::int8_t* const* xr, const std::uint8_t* const* wr, std::size_t len,
                                      std::int32_t* out) {
    static_assert(NR % 4 == 0);
    __m512i acc[MR][NR];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; ++c) acc[r][c] = _mm512_setzero_si512();
    std::size_t p = 0;
    for (; p + 64 <= len; p += 64) {
        __m512i xv[MR];
        for (std::size_t r = 0; r < MR; ++r) xv[r] = _mm512_loadu_si512(xr[r] + p);
        for (std::size_t c = 0; c < NR; ++c) {
            const __m512i wv = _mm512_loadu_si512(wr[c] + p);
            for (std::size_t r = 0; r < MR; ++r) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], wv, xv[r]);
        }
    }
    if (p < len) {
        const __mmask64 mask = (len - p) >= 64 ? ~__mmask64{0} : ((__mmask64{1} << (len - p)) - 1);
        __m512i xv[MR];
        for (std::size_t r = 0; r < MR; ++r) xv[r] = _mm512_maskz_loadu_epi8(mask, xr[r] + p);
        for (std::size_t c = 0; c < NR; ++c) {
            const __m512i wv = _mm512_maskz_loadu_epi8(mask, wr[c] + p);
            for (std::size_t r = 0; r < MR; ++r) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], wv, xv[r]);
        }
    }
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t c = 0; c < NR; c += 4) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * NR + c),
                             avx2_reduce4_i32(avx512_fold_i32(acc[r][c]), avx512_fold_i32(acc[r][c + 1]),
                                              avx512_fold_i32(acc[r][c + 2]), avx512_fold_i32(acc[r][c + 3])));
        }
}

QLM_INTRINSICS_END
#endif  // QLM_CPU_X86

// Work items: (block of nb weight rows) x (block of x rows); per (MR x NR) tile, per group: one
// integer tile dot then the shared epilogue in group order.
template <std::size_t MR, std::size_t NR>
void w8a8_driver(ThreadPool& pool, TileI8Fn tile, W8A8StepFn step, W8A8FinishFn finish, const std::int8_t* xq, const float* xs, const std::int32_t* asum,
                 std::size_t m, const QuantMatrixRef& w, const float* bias, float* y) {
    const std::size_t n = w.n, k = w.k, gs = w.group_size, groups = w.groups();
    constexpr std::size_t nb = 64;
    const std::size_t n_blocks = (n + nb - 1) / nb;
    std::size_t mb = m;
    if (n_blocks < 2 * pool.size() && m > 4 * MR) {
        const std::size_t parts = std::min<std::size_t>(2 * pool.size(), (m + MR - 1) / MR);
        mb = ((m + parts - 1) / parts + MR - 1) / MR * MR;
    }
    const std::size_t m_blocks = (m + mb - 1) / mb;
    auto body = [&](std::size_t it0, std::size_t it1) {
        for (std::size_t it = it0; it < it1; ++it) {
            const std::size_t jb = (it / m_blocks) * nb, je = std::min(n, jb + nb);
            const std::size_t ib = (it % m_blocks) * mb, ie = std::min(m, ib + mb);
            for (std::size_t i0 = ib; i0 < ie; i0 += MR) {
                std::size_t rows_i[MR];
                for (std::size_t r = 0; r < MR; ++r) rows_i[r] = std::min(i0 + r, ie - 1);
                for (std::size_t j0 = jb; j0 < je; j0 += NR) {
                    std::size_t rows_j[NR];
                    for (std::size_t c = 0; c < NR; ++c) rows_j[c] = std::min(j0 + c, je - 1);
                    float t[MR * NR] = {};
                    std::int32_t a[MR], z[NR];
                    float s[NR];
                    for (std::size_t g = 0; g < groups; ++g) {
                        const std::int8_t* xr[MR];
                        const std::uint8_t* wr[NR];
                        for (std::size_t r = 0; r < MR; ++r) xr[r] = xq + rows_i[r] * k + g * gs;
                        for (std::size_t c = 0; c < NR; ++c) wr[c] = w.packed + rows_j[c] * w.row_bytes + g * gs;
                        alignas(64) std::int32_t out[MR * NR];
                        tile(xr, wr, gs, out);
                        for (std::size_t r = 0; r < MR; ++r) a[r] = asum[rows_i[r] * groups + g];
                        for (std::size_t c = 0; c < NR; ++c) {
                            z[c] = w.zero(rows_j[c], g);
                            s[c] = w.scales[rows_j[c] * groups + g];
                        }
                        step(t, s, out, z, a, MR, NR);
                    }
                    finish(t, NR, xs + i0, bias ? bias + j0 : nullptr, y + i0 * n + j0, n, std::min(MR, ie - i0),
                           std::min(NR, je - j0));
                }
            }
        }
    };
    const std::size_t items = n_blocks * m_blocks;
    if (m * n * k < kParallelMinMacs) body(0, items);
    else pool.parallel_for(items, 1, body);
}

}  // namespace detail

namespace reference {

// Integer scalar reference. x_sums may be null (computed here).
inline void gemm_w8a8(const std::int8_t* xq, const float* x_scales, const std::int32_t* x_sums, std::size_t m,
                      const QuantMatrixRef& w, const float* bias, float* y) {
    detail::check_w8a8(w);
    const std::size_t groups = w.groups(), gs = w.group_size;
    std::vector<std::int32_t> own;
    if (!x_sums) {
        own.resize(m * groups);
        activation_group_sums(xq, m, w.k, gs, own.data());
        x_sums = own.data();
    }
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < w.n; ++j) {
            float t = 0.0f;
            for (std::size_t g = 0; g < groups; ++g) {
                std::int32_t dot = 0;
                for (std::size_t p = g * gs; p < (g + 1) * gs; ++p)
                    dot += static_cast<std::int32_t>(w.packed[j * w.row_bytes + p]) * xq[i * w.k + p];
                const float s = w.scale(j, g);
                const std::int32_t z = w.zero(j, g), a = x_sums[i * groups + g];
                detail::w8a8_step_scalar(&t, &s, &dot, &z, &a, 1, 1);
            }
            detail::w8a8_finish_scalar(&t, 1, x_scales + i, bias ? bias + j : nullptr, y + i * w.n + j, w.n, 1, 1);
        }
}

}  // namespace reference

// y[m, w.n] = dequant(xq) · dequant(w)ᵀ + bias with int8 activations xq [m, w.k] (row scales
// x_scales[m]) and 8-bit weights. x_sums: Σ xq per (row, weight group), m * w.groups() values as
// activation_group_sums() makes them (for per-channel weights: one per row); null = computed here.
inline void gemm_w8a8(ThreadPool& pool, const std::int8_t* xq, const float* x_scales, const std::int32_t* x_sums,
                      std::size_t m, const QuantMatrixRef& w, const float* bias, float* y, Isa isa = Isa::automatic) {
    detail::check_w8a8(w);
    detail::check_gemm_args(xq, m, w.k, w.packed, w.n, y);
    if (m == 0 || w.n == 0) return;
    if (!x_scales) throw invalid_argument("qlm::cpu::gemm_w8a8: null x_scales");
    isa = resolve_isa(isa);
    std::vector<std::int32_t> own;
    if (!x_sums) {
        own.resize(m * w.groups());
        activation_group_sums(xq, m, w.k, w.group_size, own.data());
        x_sums = own.data();
    }
    switch (isa) {
#if QLM_CPU_X86
        case Isa::avx2:
            if (m == 1) detail::w8a8_driver<1, 4>(pool, &detail::tile_i8_avx2<1, 4>, &detail::w8a8_step_fma, &detail::w8a8_finish_fma, xq, x_scales, x_sums, m, w, bias, y);
            else detail::w8a8_driver<3, 4>(pool, &detail::tile_i8_avx2<3, 4>, &detail::w8a8_step_fma, &detail::w8a8_finish_fma, xq, x_scales, x_sums, m, w, bias, y);
            return;
        case Isa::avx512:
            if (m == 1) detail::w8a8_driver<1, 4>(pool, &detail::tile_i8_avx512<1, 4>, &detail::w8a8_step_fma, &detail::w8a8_finish_fma, xq, x_scales, x_sums, m, w, bias, y);
            else detail::w8a8_driver<4, 4>(pool, &detail::tile_i8_avx512<4, 4>, &detail::w8a8_step_fma, &detail::w8a8_finish_fma, xq, x_scales, x_sums, m, w, bias, y);
            return;
#endif
        default:
            detail::w8a8_driver<1, 4>(pool, &detail::tile_i8_generic<1, 4>, &detail::w8a8_step_scalar, &detail::w8a8_finish_scalar, xq, x_scales, x_sums, m, w, bias, y);
            return;
    }
}

}  // namespace qlm::cpu
