#pragma once
// Weight-only quantized GEMM / GEMV (float activations): y = x · dequant(w)ᵀ + bias, for the packed
// 8/4/3/2-bit layout of quant/packing.hpp (QuantMatrixRef: value = (u - z) * s per (row, group)).
//
// GEMV (m == 1): codes are decoded in registers and never written out. For each group g the kernel
//   accumulates D_g = Σ u·x in float vectors, folds s_g·D_g into the row accumulator, and subtracts
//   Σ_g s_g·z_g·X_g at the end (X_g = Σ x over the group, computed once per call).
// GEMM (m > 1): a block of nb rows x kc columns is dequantized ((u - z) * s, exact same formula
//   on every path) into a small per-thread buffer and fed to the fp32 tile kernel, so each weight
//   is decoded once per x-row block instead of once per x row.
// Fast paths need group_size % 32 == 0 for 4/3/2 bits (any group size for 8 bits); other group
// sizes run the scalar kernel.
#include <qlm/backend/cpu/cpu_features.hpp>
#include <qlm/core/detail/intrinsics_diagnostics.hpp>
#include <qlm/backend/cpu/gemm_f32.hpp>
#include <qlm/core/error.hpp>
#include <qlm/core/thread_pool.hpp>
#include <qlm/quant/packing.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
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
    if (w.bits != 8 && w.k % 64 != 0)
        throw shape_error("qlm::cpu: " + std::to_string(w.bits) + "-bit weights need k to be a multiple of 64, found " +
                          std::to_string(w.k));
    const std::size_t need = w.bits == 8 ? w.k : w.k / 64 * (64 * static_cast<std::size_t>(w.bits) / 8);
    if (w.row_bytes < need)
        throw shape_error("qlm::cpu: row_bytes " + std::to_string(w.row_bytes) + " is less than the " + std::to_string(need) +
                          " bytes a packed row needs");
    if (!w.packed || !w.scales) throw invalid_argument("qlm::cpu: quantized weights without codes or scales");
}

// Code `col` of packed row `row` (scalar; used by the reference and tails).
inline int code_at(const QuantMatrixRef& w, std::size_t row, std::size_t col) noexcept {
    const std::uint8_t* p = w.packed + row * w.row_bytes;
    if (w.bits == 8) return p[col];
    const std::size_t b = col / 64, i = col % 64;
    if (w.bits == 4) {
        const std::uint8_t* blk = p + 32 * b;
        return i < 32 ? (blk[i] & 0xF) : (blk[i - 32] >> 4);
    }
    const std::uint8_t* blk = p + (w.bits == 3 ? 24 : 16) * b;
    int c = (blk[i % 16] >> (2 * (i / 16))) & 3;
    if (w.bits == 3) c |= ((blk[16 + i / 8] >> (i % 8)) & 1) << 2;
    return c;
}

// Dequantized value, the one formula every path uses: float(u - z) * s.
inline float dequant_at(const QuantMatrixRef& w, std::size_t row, std::size_t col) noexcept {
    const std::size_t g = col / w.group_size;
    return static_cast<float>(code_at(w, row, col) - w.zero(row, g)) * w.scale(row, g);
}

}  // namespace detail

namespace reference {

// Scalar reference: y = x · dequant(w)ᵀ + bias with double accumulation.
inline void gemm_quant(const float* x, std::size_t m, const QuantMatrixRef& w, const float* bias, float* y) {
    detail::check_quant_matrix(w);
    std::vector<float> row(w.k);
    for (std::size_t j = 0; j < w.n; ++j) {
        for (std::size_t p = 0; p < w.k; ++p) row[p] = detail::dequant_at(w, j, p);
        for (std::size_t i = 0; i < m; ++i) {
            double acc = bias ? bias[j] : 0.0;
            for (std::size_t p = 0; p < w.k; ++p) acc += static_cast<double>(x[i * w.k + p]) * row[p];
            y[i * w.n + j] = static_cast<float>(acc);
        }
    }
}

}  // namespace reference

namespace detail {

// Dequantizes rows [j0, j1), columns [k0, k0 + len) into out (row stride len). Scalar.
inline void dequant_block_scalar(const QuantMatrixRef& w, std::size_t j0, std::size_t j1, std::size_t k0, std::size_t len,
                                 float* out) {
    for (std::size_t j = j0; j < j1; ++j)
        for (std::size_t p = 0; p < len; ++p) out[(j - j0) * len + p] = dequant_at(w, j, k0 + p);
}

// Σ x over each group of each row: xs[i * groups + g].
inline void group_sums(const float* x, std::size_t m, std::size_t k, std::size_t gs, std::vector<float>& out) {
    const std::size_t groups = k / gs;
    out.assign(m * groups, 0.0f);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t g = 0; g < groups; ++g) {
            float s = 0.0f;
            for (std::size_t p = g * gs; p < (g + 1) * gs; ++p) s += x[i * k + p];
            out[i * groups + g] = s;
        }
}

#if QLM_CPU_X86

// ---- AVX2 ------------------------------------------------------------------------------------

QLM_TARGET_AVX2 inline __m256i avx2_load8_u8(const std::uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Codes 32h .. 32h+31 of one 64-code block as four vectors of 8 int32, in order.
template <int Bits>
QLM_TARGET_AVX2 inline void avx2_half_codes(const std::uint8_t* blk, int h, __m256i (&c)[4]) {
    if constexpr (Bits == 4) {
        for (int cc = 0; cc < 4; ++cc) {
            const __m256i v = avx2_load8_u8(blk + 8 * cc);
            c[cc] = h ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15));
        }
    } else {
        // codes 16q + 8cc .. +7 sit in bytes 8cc .. 8cc+7 at bits 2q; half h holds q = 2h, 2h+1.
        const __m256i v0 = avx2_load8_u8(blk), v1 = avx2_load8_u8(blk + 8);
        const __m256i three = _mm256_set1_epi32(3);
        for (int qq = 0; qq < 2; ++qq) {
            const int q = 2 * h + qq;
            const __m128i sh = _mm_cvtsi32_si128(2 * q);
            c[2 * qq] = _mm256_and_si256(_mm256_srl_epi32(v0, sh), three);
            c[2 * qq + 1] = _mm256_and_si256(_mm256_srl_epi32(v1, sh), three);
        }
        if constexpr (Bits == 3) {
            std::uint32_t hi;
            std::memcpy(&hi, blk + 16 + 4 * h, 4);  // bit i = bit 2 of code 32h + i
            const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            for (int cc = 0; cc < 4; ++cc) {
                const __m256i bits = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>((hi >> (8 * cc)) & 0xFF)), idx);
                c[cc] = _mm256_or_si256(c[cc], _mm256_slli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(1)), 2));
            }
        }
    }
}

// GEMV over rows [j0, j1) for packed 4/3/2 bits (group_size % 32 == 0). Two rows at a time.
template <int Bits>
QLM_TARGET_AVX2 void gemv_packed_avx2(const QuantMatrixRef& w, const float* x, const float* xg, const float* bias,
                                      float* y, std::size_t j0, std::size_t j1) {
    const std::size_t k = w.k, gs = w.group_size, groups = w.groups();
    constexpr std::size_t bb = Packing<Bits>::block_bytes;
    for (std::size_t j = j0; j < j1; j += 2) {
        const std::size_t rows[2] = {j, std::min(j + 1, j1 - 1)};
        const std::uint8_t* p[2] = {w.packed + rows[0] * w.row_bytes, w.packed + rows[1] * w.row_bytes};
        __m256 facc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        __m256 acc[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
        for (std::size_t b = 0; b < k / 64; ++b)
            for (int h = 0; h < 2; ++h) {
                const float* xp = x + 64 * b + 32 * h;
                const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8), x2 = _mm256_loadu_ps(xp + 16),
                             x3 = _mm256_loadu_ps(xp + 24);
                for (int r = 0; r < 2; ++r) {
                    __m256i c[4];
                    avx2_half_codes<Bits>(p[r] + bb * b, h, c);
                    acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[0]), x0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[1]), x1, acc[r][1]);
                    acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[2]), x2, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[3]), x3, acc[r][1]);
                }
                const std::size_t end = 64 * b + 32 * h + 32;
                if (end % gs == 0) {
                    const std::size_t g = end / gs - 1;
                    for (int r = 0; r < 2; ++r) {
                        facc[r] = _mm256_fmadd_ps(_mm256_add_ps(acc[r][0], acc[r][1]),
                                                  _mm256_set1_ps(w.scales[rows[r] * groups + g]), facc[r]);
                        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
                    }
                }
            }
        const __m128 s = avx2_reduce4(facc[0], facc[1], facc[0], facc[1]);
        float sums[4];
        _mm_storeu_ps(sums, s);
        for (int r = 0; r < 2 && j + r < j1; ++r) y[j + r] = (sums[r] - w.zero_point_term(rows[r], xg)) + (bias ? bias[j + r] : 0.0f);
    }
}

// GEMV for 8-bit codes, any k and group size (masked tail per group).
QLM_TARGET_AVX2 inline void gemv_u8_avx2(const QuantMatrixRef& w, const float* x, const float* xg, const float* bias,
                                         float* y, std::size_t j0, std::size_t j1) {
    const std::size_t gs = w.group_size, groups = w.groups();
    for (std::size_t j = j0; j < j1; ++j) {
        const std::uint8_t* p = w.packed + j * w.row_bytes;
        __m256 facc = _mm256_setzero_ps();
        for (std::size_t g = 0; g < groups; ++g) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            std::size_t q = g * gs;
            const std::size_t e = q + gs;
            for (; q + 16 <= e; q += 16) {
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(avx2_load8_u8(p + q)), _mm256_loadu_ps(x + q), a0);
                a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(avx2_load8_u8(p + q + 8)), _mm256_loadu_ps(x + q + 8), a1);
            }
            for (; q < e; q += 8) {
                const std::size_t r = std::min<std::size_t>(8, e - q);
                std::uint8_t tmp[8] = {};
                std::memcpy(tmp, p + q, r);
                a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(avx2_load8_u8(tmp)), _mm256_maskload_ps(x + q, avx2_tail_mask(r)), a0);
            }
            facc = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(w.scales[j * groups + g]), facc);
        }
        float sums[4];
        _mm_storeu_ps(sums, avx2_reduce4(facc, facc, facc, facc));
        y[j] = (sums[0] - w.zero_point_term(j, xg)) + (bias ? bias[j] : 0.0f);
    }
}

// Dequantizes rows [j0, j1), columns [k0, k0+len) into out (row stride len); k0, len multiples of
// 64 for packed bits (the GEMM's kc is), any for 8 bits.
template <int Bits>
QLM_TARGET_AVX2 void dequant_block_avx2(const QuantMatrixRef& w, std::size_t j0, std::size_t j1, std::size_t k0,
                                        std::size_t len, float* out) {
    const std::size_t gs = w.group_size, groups = w.groups();
    for (std::size_t j = j0; j < j1; ++j) {
        const std::uint8_t* p = w.packed + j * w.row_bytes;
        float* o = out + (j - j0) * len;
        if constexpr (Bits == 8) {
            std::size_t q = 0;
            for (; q + 8 <= len; q += 8) {
                const std::size_t col = k0 + q, g = col / gs;
                if ((col + 7) / gs != g) break;  // a group boundary inside the chunk: finish scalar
                const __m256i z = _mm256_set1_epi32(w.zero(j, g));
                _mm256_storeu_ps(o + q, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(avx2_load8_u8(p + col), z)),
                                                      _mm256_set1_ps(w.scales[j * groups + g])));
            }
            for (; q < len; ++q) o[q] = dequant_at(w, j, k0 + q);
        } else {
            constexpr std::size_t bb = Packing<Bits>::block_bytes;
            for (std::size_t q = 0; q < len; q += 32) {
                const std::size_t col = k0 + q, g = col / gs;
                __m256i c[4];
                avx2_half_codes<Bits>(p + bb * (col / 64), static_cast<int>((col / 32) & 1), c);
                const __m256i z = _mm256_set1_epi32(w.zero(j, g));
                const __m256 s = _mm256_set1_ps(w.scales[j * groups + g]);
                for (int cc = 0; cc < 4; ++cc)
                    _mm256_storeu_ps(o + q + 8 * cc, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[cc], z)), s));
            }
        }
    }
}

// ---- AVX-512 ---------------------------------------------------------------------------------
QLM_INTRINSICS_BEGIN

QLM_TARGET_AVX512 inline __m512i avx512_load16_u8(const std::uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Codes 32h .. 32h+31 of one block as two vectors of 16 int32.
template <int Bits>
QLM_TARGET_AVX512 inline void avx512_half_codes(const std::uint8_t* blk, int h, __m512i (&c)[2]) {
    if constexpr (Bits == 4) {
        for (int cc = 0; cc < 2; ++cc) {
            const __m512i v = avx512_load16_u8(blk + 16 * cc);
            c[cc] = h ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(15));
        }
    } else {
        const __m512i v = avx512_load16_u8(blk);  // codes 16q .. 16q+15 at bits 2q
        for (int qq = 0; qq < 2; ++qq) {
            const int q = 2 * h + qq;
            c[qq] = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(2 * q)), _mm512_set1_epi32(3));
            if constexpr (Bits == 3) {
                std::uint16_t hi;
                std::memcpy(&hi, blk + 16 + 2 * q, 2);
                c[qq] = _mm512_mask_or_epi32(c[qq], static_cast<__mmask16>(hi), c[qq], _mm512_set1_epi32(4));
            }
        }
    }
}

template <int Bits>
QLM_TARGET_AVX512 void gemv_packed_avx512(const QuantMatrixRef& w, const float* x, const float* xg, const float* bias,
                                          float* y, std::size_t j0, std::size_t j1) {
    const std::size_t k = w.k, gs = w.group_size, groups = w.groups();
    constexpr std::size_t bb = Packing<Bits>::block_bytes;
    for (std::size_t j = j0; j < j1; j += 2) {
        const std::size_t rows[2] = {j, std::min(j + 1, j1 - 1)};
        const std::uint8_t* p[2] = {w.packed + rows[0] * w.row_bytes, w.packed + rows[1] * w.row_bytes};
        __m512 facc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        __m512 acc[2][2] = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}};
        for (std::size_t b = 0; b < k / 64; ++b)
            for (int h = 0; h < 2; ++h) {
                const float* xp = x + 64 * b + 32 * h;
                const __m512 x0 = _mm512_loadu_ps(xp), x1 = _mm512_loadu_ps(xp + 16);
                for (int r = 0; r < 2; ++r) {
                    __m512i c[2];
                    avx512_half_codes<Bits>(p[r] + bb * b, h, c);
                    acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[0]), x0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c[1]), x1, acc[r][1]);
                }
                const std::size_t end = 64 * b + 32 * h + 32;
                if (end % gs == 0) {
                    const std::size_t g = end / gs - 1;
                    for (int r = 0; r < 2; ++r) {
                        facc[r] = _mm512_fmadd_ps(_mm512_add_ps(acc[r][0], acc[r][1]),
                                                  _mm512_set1_ps(w.scales[rows[r] * groups + g]), facc[r]);
                        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
                    }
                }
            }
        float sums[4];
        _mm_storeu_ps(sums, avx512_reduce4(facc[0], facc[1], facc[0], facc[1]));
        for (int r = 0; r < 2 && j + r < j1; ++r) y[j + r] = (sums[r] - w.zero_point_term(rows[r], xg)) + (bias ? bias[j + r] : 0.0f);
    }
}

QLM_TARGET_AVX512 inline void gemv_u8_avx512(const QuantMatrixRef& w, const float* x, const float* xg, const float* bias,
                                             float* y, std::size_t j0, std::size_t j1) {
    const std::size_t gs = w.group_size, groups = w.groups();
    for (std::size_t j = j0; j < j1; ++j) {
        const std::uint8_t* p = w.packed + j * w.row_bytes;
        __m512 facc = _mm512_setzero_ps();
        for (std::size_t g = 0; g < groups; ++g) {
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            std::size_t q = g * gs;
            const std::size_t e = q + gs;
            for (; q + 32 <= e; q += 32) {
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(avx512_load16_u8(p + q)), _mm512_loadu_ps(x + q), a0);
                a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(avx512_load16_u8(p + q + 16)), _mm512_loadu_ps(x + q + 16), a1);
            }
            for (; q < e; q += 16) {
                const std::size_t r = std::min<std::size_t>(16, e - q);
                const __mmask16 mk = static_cast<__mmask16>((1u << r) - 1u);
                const __m512i c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, p + q));
                a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_maskz_loadu_ps(mk, x + q), a0);
            }
            facc = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), _mm512_set1_ps(w.scales[j * groups + g]), facc);
        }
        float sums[4];
        _mm_storeu_ps(sums, avx512_reduce4(facc, facc, facc, facc));
        y[j] = (sums[0] - w.zero_point_term(j, xg)) + (bias ? bias[j] : 0.0f);
    }
}

template <int Bits>
QLM_TARGET_AVX512 void dequant_block_avx512(const QuantMatrixRef& w, std::size_t j0, std::size_t j1, std::size_t k0,
                                            std::size_t len, float* out) {
    const std::size_t gs = w.group_size, groups = w.groups();
    for (std::size_t j = j0; j < j1; ++j) {
        const std::uint8_t* p = w.packed + j * w.row_bytes;
        float* o = out + (j - j0) * len;
        if constexpr (Bits == 8) {
            std::size_t q = 0;
            for (; q + 16 <= len; q += 16) {
                const std::size_t col = k0 + q, g = col / gs;
                if ((col + 15) / gs != g) break;
                const __m512i z = _mm512_set1_epi32(w.zero(j, g));
                _mm512_storeu_ps(o + q, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(avx512_load16_u8(p + col), z)),
                                                      _mm512_set1_ps(w.scales[j * groups + g])));
            }
            for (; q < len; ++q) o[q] = dequant_at(w, j, k0 + q);
        } else {
            constexpr std::size_t bb = Packing<Bits>::block_bytes;
            for (std::size_t q = 0; q < len; q += 32) {
                const std::size_t col = k0 + q, g = col / gs;
                __m512i c[2];
                avx512_half_codes<Bits>(p + bb * (col / 64), static_cast<int>((col / 32) & 1), c);
                const __m512i z = _mm512_set1_epi32(w.zero(j, g));
                const __m512 s = _mm512_set1_ps(w.scales[j * groups + g]);
                for (int cc = 0; cc < 2; ++cc)
                    _mm512_storeu_ps(o + q + 16 * cc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c[cc], z)), s));
            }
        }
    }
}

QLM_INTRINSICS_END
#endif  // QLM_CPU_X86

using GemvQuantFn = void (*)(const QuantMatrixRef&, const float*, const float*, const float*, float*, std::size_t,
                             std::size_t);
using DequantFn = void (*)(const QuantMatrixRef&, std::size_t, std::size_t, std::size_t, std::size_t, float*);

struct QuantKernels {
    GemvQuantFn gemv = nullptr;
    DequantFn dequant = nullptr;
};

inline QuantKernels quant_kernels(Isa isa, int bits, std::size_t group_size) {
    QuantKernels q;
#if QLM_CPU_X86
    const bool ok = bits == 8 || group_size % 32 == 0;
    if (!ok) return q;
    if (isa == Isa::avx2) {
        switch (bits) {
            case 8: return {&gemv_u8_avx2, &dequant_block_avx2<8>};
            case 4: return {&gemv_packed_avx2<4>, &dequant_block_avx2<4>};
            case 3: return {&gemv_packed_avx2<3>, &dequant_block_avx2<3>};
            case 2: return {&gemv_packed_avx2<2>, &dequant_block_avx2<2>};
        }
    } else if (isa == Isa::avx512) {
        switch (bits) {
            case 8: return {&gemv_u8_avx512, &dequant_block_avx512<8>};
            case 4: return {&gemv_packed_avx512<4>, &dequant_block_avx512<4>};
            case 3: return {&gemv_packed_avx512<3>, &dequant_block_avx512<3>};
            case 2: return {&gemv_packed_avx512<2>, &dequant_block_avx512<2>};
        }
    }
#else
    (void)isa, (void)bits, (void)group_size;
#endif
    return q;
}

}  // namespace detail

// y[m, w.n] = x[m, w.k] · dequant(w)ᵀ + bias (weight-only quantization, float activations).
inline void gemm_quant(ThreadPool& pool, const float* x, std::size_t m, const QuantMatrixRef& w, const float* bias,
                       float* y, Isa isa = Isa::automatic) {
    detail::check_quant_matrix(w);
    detail::check_gemm_args(x, m, w.k, w.packed, w.n, y);
    if (m == 0 || w.n == 0) return;
    isa = resolve_isa(isa);
    const detail::QuantKernels kern = detail::quant_kernels(isa, w.bits, w.group_size);
    if (!kern.gemv) {  // scalar path: dequantize one row at a time, double accumulation
        pool.parallel_for(w.n, 8, [&](std::size_t j0, std::size_t j1) {
            std::vector<float> row(w.k);
            for (std::size_t j = j0; j < j1; ++j) {
                for (std::size_t p = 0; p < w.k; ++p) row[p] = detail::dequant_at(w, j, p);
                for (std::size_t i = 0; i < m; ++i) {
                    double acc = bias ? bias[j] : 0.0;
                    for (std::size_t p = 0; p < w.k; ++p) acc += static_cast<double>(x[i * w.k + p]) * row[p];
                    y[i * w.n + j] = static_cast<float>(acc);
                }
            }
        });
        return;
    }
    if (m == 1) {
        std::vector<float> xg;
        detail::group_sums(x, 1, w.k, w.group_size, xg);
        auto body = [&](std::size_t j0, std::size_t j1) { kern.gemv(w, x, xg.data(), bias, y, j0, j1); };
        if (w.n * w.k < kParallelMinMacs) body(0, w.n);
        else pool.parallel_for(w.n, 16, body);
        return;
    }
    constexpr std::size_t kc = 512, nb = 32;  // a 64 KiB dequantized block per thread
    auto quant_block = [&](std::size_t j0, std::size_t j1, std::size_t k0, std::size_t len, std::vector<float>& scratch) {
        scratch.resize(nb * kc);
        kern.dequant(w, j0, j1, k0, len, scratch.data());
        return detail::WBlock{scratch.data(), len};
    };
#if QLM_CPU_X86
    if (isa == Isa::avx512)
        detail::gemm_blocked<4, 4>(pool, &detail::tile_f32_avx512<4, 4>, x, m, w.k, w.n, bias, y, kc, nb, quant_block);
    else
        detail::gemm_blocked<3, 4>(pool, &detail::tile_f32_avx2<3, 4>, x, m, w.k, w.n, bias, y, kc, nb, quant_block);
#endif
}

}  // namespace qlm::cpu
